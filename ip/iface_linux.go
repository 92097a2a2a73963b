//go:build linux

package ip

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// LookupExternalInterface selects the external interface as upstream flannel
// does. Each --iface is tried in order (a name, or an IP address owned by
// the interface), then each --iface-regex (matched against the interfaces'
// addresses, then their names), then --iface-can-reach (the interface of the
// route to that address). The first candidate that has an address of every
// enabled family wins. With none of these options, the interface of the IPv4
// default route is used (of the IPv6 default route when IPv6-only; in dual
// stack both default routes must use the same interface).
//
// The interface address is the one that selected it (--iface IP, regex
// match, route source) or else the interface's first global unicast address
// (for IPv4, a link-local one if it has nothing else). All kernel access goes
// through h, so the lookup can run in any network namespace. An error that
// means "nothing fits" wraps ErrNoInterface.
func LookupExternalInterface(h *netlink.Handle, opts InterfaceOptions) (*ExternalInterface, error) {
	if h == nil {
		return nil, errors.New("looking up the external interface: nil netlink handle")
	}
	if err := ValidateInterfaceOptions(opts); err != nil {
		return nil, err
	}
	l := lookup{h: h, opts: opts}
	if !opts.hasSelectors() {
		ext, err := l.byDefaultRoute()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoInterface, err)
		}
		return ext, nil
	}

	var attempts attemptsError
	try := func(what string, find func() (*ExternalInterface, error)) *ExternalInterface {
		ext, err := find()
		if err != nil {
			klog.V(2).InfoS("Interface selector did not match", "selector", what, "err", err)
			attempts = append(attempts, fmt.Errorf("%s: %w", what, err))
			return nil
		}
		return ext
	}
	for _, name := range opts.Ifaces {
		if ext := try("--iface "+name, func() (*ExternalInterface, error) { return l.byIfaceFlag(name) }); ext != nil {
			return ext, nil
		}
	}
	for _, expr := range opts.IfaceRegex {
		if ext := try("--iface-regex "+expr, func() (*ExternalInterface, error) { return l.byRegex(expr) }); ext != nil {
			return ext, nil
		}
	}
	if opts.CanReach != "" {
		if ext := try("--iface-can-reach "+opts.CanReach, l.byCanReach); ext != nil {
			return ext, nil
		}
	}
	return nil, fmt.Errorf("%w: %w", ErrNoInterface, attempts)
}

// lookup carries the handle and options through one interface selection.
type lookup struct {
	h    *netlink.Handle
	opts InterfaceOptions
}

// candidate is an interface that a selector matched, with the address that
// made it match (if any) already chosen for its family.
type candidate struct {
	link   netlink.Link
	v4, v6 netip.Addr
}

// withAddr returns c with a set as its address of a's family.
func (c candidate) withAddr(a netip.Addr) candidate {
	a = a.Unmap()
	switch {
	case a.Is4():
		c.v4 = a
	case a.Is6():
		c.v6 = a
	}
	return c
}

// resolve turns a candidate into an ExternalInterface, filling the addresses
// of the enabled families that the selector did not choose.
func (l *lookup) resolve(c candidate) (*ExternalInterface, error) {
	attrs := c.link.Attrs()
	if attrs.MTU <= 0 {
		return nil, fmt.Errorf("cannot determine the MTU of interface %s", attrs.Name)
	}
	ext := &ExternalInterface{Name: attrs.Name, Index: attrs.Index, MTU: attrs.MTU}
	if l.opts.EnableIPv4 {
		if !c.v4.IsValid() {
			a, err := l.firstUsableAddr(c.link, netlink.FAMILY_V4)
			if err != nil {
				return nil, err
			}
			c.v4 = a
		}
		ext.IfaceAddr, ext.ExtAddr = c.v4, c.v4
		if l.opts.PublicIP.IsValid() {
			ext.ExtAddr = l.opts.PublicIP.Unmap()
		}
	}
	if l.opts.EnableIPv6 {
		if !c.v6.IsValid() {
			a, err := l.firstUsableAddr(c.link, netlink.FAMILY_V6)
			if err != nil {
				return nil, err
			}
			c.v6 = a
		}
		ext.IfaceV6Addr, ext.ExtV6Addr = c.v6, c.v6
		if l.opts.PublicIPv6.IsValid() {
			ext.ExtV6Addr = l.opts.PublicIPv6
		}
	}
	return ext, nil
}

// byIfaceFlag resolves one --iface value: an IP address owned by an
// interface, or an interface name.
func (l *lookup) byIfaceFlag(nameOrIP string) (*ExternalInterface, error) {
	if a, err := netip.ParseAddr(nameOrIP); err == nil {
		link, err := l.linkWithAddr(a.Unmap())
		if err != nil {
			return nil, err
		}
		return l.resolve(candidate{link: link}.withAddr(a))
	}
	link, err := l.h.LinkByName(nameOrIP)
	if err != nil {
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil, fmt.Errorf("no interface named %q", nameOrIP)
		}
		return nil, fmt.Errorf("looking up interface %q: %w", nameOrIP, err)
	}
	return l.resolve(candidate{link: link})
}

// byRegex resolves one --iface-regex: interfaces with a matching usable
// address come first (in interface index order), then interfaces with a
// matching name; the first that resolves wins.
func (l *lookup) byRegex(expr string) (*ExternalInterface, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("invalid --iface-regex %q: %w", expr, err)
	}
	links, err := l.links()
	if err != nil {
		return nil, err
	}
	var cands []candidate
	for _, link := range links {
		for _, family := range l.families() {
			addrs, err := l.usableAddrs(link, family)
			if err != nil {
				return nil, err
			}
			for _, a := range addrs {
				if re.MatchString(a.String()) {
					cands = append(cands, candidate{link: link}.withAddr(a))
				}
			}
		}
	}
	for _, link := range links {
		if re.MatchString(link.Attrs().Name) {
			cands = append(cands, candidate{link: link})
		}
	}
	if len(cands) == 0 {
		names := make([]string, len(links))
		for i, link := range links {
			names[i] = link.Attrs().Name
		}
		return nil, fmt.Errorf("no interface address or name matches (interfaces: %s)", strings.Join(names, ", "))
	}
	var errs attemptsError
	for _, c := range cands {
		ext, err := l.resolve(c)
		if err == nil {
			return ext, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("matching interfaces are unusable: %w", errs)
}

// byCanReach resolves --iface-can-reach: the interface (and source address)
// of the kernel's route to that address.
func (l *lookup) byCanReach() (*ExternalInterface, error) {
	target, err := netip.ParseAddr(l.opts.CanReach)
	if err != nil {
		return nil, fmt.Errorf("not an IP address: %w", err)
	}
	routes, err := l.h.RouteGet(target.Unmap().AsSlice())
	if err != nil {
		return nil, fmt.Errorf("no route to %s: %w", target, err)
	}
	for _, r := range routes {
		if r.LinkIndex <= 0 {
			continue
		}
		link, err := l.h.LinkByIndex(r.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("looking up interface %d of the route to %s: %w", r.LinkIndex, target, err)
		}
		c := candidate{link: link}
		if src, ok := AddrFromIP(r.Src); ok {
			c = c.withAddr(src)
		}
		return l.resolve(c)
	}
	return nil, fmt.Errorf("the route to %s has no outgoing interface", target)
}

// byDefaultRoute selects the interface of the default route(s).
func (l *lookup) byDefaultRoute() (*ExternalInterface, error) {
	idx := 0
	if l.opts.EnableIPv4 {
		i, err := l.defaultRouteLinkIndex(netlink.FAMILY_V4)
		if err != nil {
			return nil, err
		}
		idx = i
	}
	if l.opts.EnableIPv6 {
		i, err := l.defaultRouteLinkIndex(netlink.FAMILY_V6)
		if err != nil {
			return nil, err
		}
		if idx != 0 && idx != i {
			return nil, fmt.Errorf("the IPv4 default route uses interface %s but the IPv6 default route uses %s; choose one with --iface",
				l.linkName(idx), l.linkName(i))
		}
		idx = i
	}
	link, err := l.h.LinkByIndex(idx)
	if err != nil {
		return nil, fmt.Errorf("looking up interface %d of the default route: %w", idx, err)
	}
	return l.resolve(candidate{link: link})
}

// defaultRouteLinkIndex returns the outgoing interface of the family's
// default route in the main table with the lowest metric.
func (l *lookup) defaultRouteLinkIndex(family int) (int, error) {
	routes, err := Dump{l.h}.Routes(nil, family)
	if err != nil {
		return 0, fmt.Errorf("listing %s routes: %w", familyName(family), err)
	}
	best, bestPrio := 0, 0
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.Type != unix.RTN_UNICAST {
			continue // blackhole, unreachable, ...
		}
		idx := r.LinkIndex
		if idx <= 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		if idx <= 0 {
			continue
		}
		if best == 0 || r.Priority < bestPrio {
			best, bestPrio = idx, r.Priority
		}
	}
	if best == 0 {
		return 0, fmt.Errorf("there is no %s default route; choose an interface with --iface, --iface-regex or --iface-can-reach", familyName(family))
	}
	return best, nil
}

// linkWithAddr returns the interface that has address a.
func (l *lookup) linkWithAddr(a netip.Addr) (netlink.Link, error) {
	family := netlink.FAMILY_V6
	if a.Is4() {
		family = netlink.FAMILY_V4
	}
	addrs, err := Dump{l.h}.Addrs(nil, family)
	if err != nil {
		return nil, fmt.Errorf("listing %s addresses: %w", familyName(family), err)
	}
	for _, na := range addrs {
		if got, ok := AddrFromIP(na.IP); ok && got == a {
			link, err := l.h.LinkByIndex(na.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("looking up interface %d that has %s: %w", na.LinkIndex, a, err)
			}
			return link, nil
		}
	}
	return nil, fmt.Errorf("no interface has address %s", a)
}

// firstUsableAddr returns the first usable address of the family on link.
func (l *lookup) firstUsableAddr(link netlink.Link, family int) (netip.Addr, error) {
	addrs, err := l.usableAddrs(link, family)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("interface %s has no global unicast %s address", link.Attrs().Name, familyName(family))
	}
	return addrs[0], nil
}

// usableAddrs returns link's global unicast addresses of the family, in
// kernel order; for IPv4, link-local addresses follow them as a fallback.
// Addresses whose duplicate address detection failed are left out.
func (l *lookup) usableAddrs(link netlink.Link, family int) ([]netip.Addr, error) {
	addrs, err := Dump{l.h}.Addrs(link, family)
	if err != nil {
		return nil, fmt.Errorf("listing %s addresses of %s: %w", familyName(family), link.Attrs().Name, err)
	}
	var global, linkLocal []netip.Addr
	for _, na := range addrs {
		a, ok := AddrFromIP(na.IP)
		if !ok || na.Flags&unix.IFA_F_DADFAILED != 0 {
			continue
		}
		switch {
		case a.IsGlobalUnicast():
			global = append(global, a)
		case a.Is4() && a.IsLinkLocalUnicast():
			linkLocal = append(linkLocal, a)
		}
	}
	return append(global, linkLocal...), nil
}

// links returns all interfaces ordered by index.
func (l *lookup) links() ([]netlink.Link, error) {
	links, err := Dump{l.h}.Links()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	slices.SortFunc(links, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
	return links, nil
}

// families returns the netlink families that are enabled, IPv4 first.
func (l *lookup) families() []int {
	var fs []int
	if l.opts.EnableIPv4 {
		fs = append(fs, netlink.FAMILY_V4)
	}
	if l.opts.EnableIPv6 {
		fs = append(fs, netlink.FAMILY_V6)
	}
	return fs
}

// linkName returns the name of interface idx for messages, or its number.
func (l *lookup) linkName(idx int) string {
	if link, err := l.h.LinkByIndex(idx); err == nil {
		return link.Attrs().Name
	}
	return fmt.Sprintf("#%d", idx)
}

func familyName(family int) string {
	if family == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}
