package ip

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// ErrNoInterface is wrapped by every error of LookupExternalInterface that
// means no interface fits the options (as opposed to a kernel failure).
var ErrNoInterface = errors.New("no usable external interface")

// ExternalInterface is the underlay interface flanneld sends encapsulated
// traffic through, with the addresses it uses and advertises.
type ExternalInterface struct {
	Name  string
	Index int
	MTU   int
	// IfaceAddr is the IPv4 address of the interface (invalid if IPv4 is
	// disabled).
	IfaceAddr netip.Addr
	// IfaceV6Addr is the IPv6 global unicast address of the interface
	// (invalid if IPv6 is disabled).
	IfaceV6Addr netip.Addr
	// ExtAddr is the IPv4 address advertised to peers: --public-ip if set,
	// else IfaceAddr.
	ExtAddr netip.Addr
	// ExtV6Addr is the IPv6 address advertised to peers: --public-ipv6 if
	// set, else IfaceV6Addr.
	ExtV6Addr netip.Addr
}

// InterfaceOptions are the command-line choices that steer the selection of
// the external interface. With no Ifaces, IfaceRegex or CanReach the
// interface of the default route is used.
type InterfaceOptions struct {
	// Ifaces (--iface, repeatable) are interface names or IP addresses; the
	// first one that exists and has the needed addresses wins.
	Ifaces []string
	// IfaceRegex (--iface-regex, repeatable) are regular expressions matched
	// against every interface's addresses first, then against the names.
	// They are tried after Ifaces.
	IfaceRegex []string
	// CanReach (--iface-can-reach) is an IP address; the interface of the
	// route to it is used. It is tried after Ifaces and IfaceRegex.
	CanReach string
	// PublicIP (--public-ip) is advertised instead of the interface's IPv4
	// address, e.g. behind NAT.
	PublicIP netip.Addr
	// PublicIPv6 (--public-ipv6) is the IPv6 counterpart of PublicIP.
	PublicIPv6 netip.Addr
	// EnableIPv4 and EnableIPv6 say which address families the interface
	// must have addresses of.
	EnableIPv4 bool
	EnableIPv6 bool
}

// hasSelectors reports whether any of --iface, --iface-regex or
// --iface-can-reach was given.
func (o InterfaceOptions) hasSelectors() bool {
	return len(o.Ifaces) > 0 || len(o.IfaceRegex) > 0 || o.CanReach != ""
}

// ValidateInterfaceOptions checks opts without touching the kernel: at least
// one address family is enabled, no --iface is empty, every --iface-regex
// compiles, --iface-can-reach is an IP address and the public addresses are
// of the right family.
func ValidateInterfaceOptions(opts InterfaceOptions) error {
	var errs []error
	if !opts.EnableIPv4 && !opts.EnableIPv6 {
		errs = append(errs, errors.New("neither IPv4 nor IPv6 is enabled"))
	}
	for _, name := range opts.Ifaces {
		if strings.TrimSpace(name) == "" {
			errs = append(errs, errors.New("--iface must not be empty"))
		}
	}
	for _, expr := range opts.IfaceRegex {
		if _, err := regexp.Compile(expr); err != nil {
			errs = append(errs, fmt.Errorf("invalid --iface-regex %q: %w", expr, err))
		}
	}
	if opts.CanReach != "" {
		if _, err := netip.ParseAddr(opts.CanReach); err != nil {
			errs = append(errs, fmt.Errorf("--iface-can-reach %q is not an IP address: %w", opts.CanReach, err))
		}
	}
	if opts.PublicIP.IsValid() && !opts.PublicIP.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("--public-ip %s is not an IPv4 address", opts.PublicIP))
	}
	if opts.PublicIPv6.IsValid() && opts.PublicIPv6.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("--public-ipv6 %s is not an IPv6 address", opts.PublicIPv6))
	}
	return errors.Join(errs...)
}

// attemptsError collects why each tried selector failed; it prints on one
// line, unlike errors.Join.
type attemptsError []error

func (e attemptsError) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e attemptsError) Unwrap() []error { return e }
