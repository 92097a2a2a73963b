package cni

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// The keys of subnet.env the plugin reads.
const (
	keyNetwork     = "FLANNEL_NETWORK"
	keySubnet      = "FLANNEL_SUBNET"
	keyIPv6Network = "FLANNEL_IPV6_NETWORK"
	keyIPv6Subnet  = "FLANNEL_IPV6_SUBNET"
	keyMTU         = "FLANNEL_MTU"
	keyIPMasq      = "FLANNEL_IPMASQ"
)

// maxMTU is the largest MTU an interface can have.
const maxMTU = 65535

// SubnetEnv is subnet.env as the plugin reads it. flanneld writes one
// network per family, but the file may list several, comma-separated (as
// upstream's flanneld does with several cluster CIDRs); each gets a route.
type SubnetEnv struct {
	// Networks are FLANNEL_NETWORK's prefixes, masked, in order, each once.
	Networks []netip.Prefix
	// Subnet is FLANNEL_SUBNET masked: the node's IPv4 pod subnet.
	Subnet netip.Prefix
	// IPv6Networks and IPv6Subnet are the IPv6 counterparts.
	IPv6Networks []netip.Prefix
	IPv6Subnet   netip.Prefix
	// MTU is FLANNEL_MTU, the MTU pods should use.
	MTU int
	// IPMasq is FLANNEL_IPMASQ: whether flanneld masquerades pod traffic
	// leaving the cluster network, so the bridge need not.
	IPMasq bool
}

// ReadSubnetEnv reads and parses the subnet.env at path, saying what it
// means when the file is missing.
func ReadSubnetEnv(path string) (SubnetEnv, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return SubnetEnv{}, fmt.Errorf("%s does not exist: flanneld is not running on this node, or has not finished starting (check the kube-flannel pod on this node)", path)
	}
	if err != nil {
		return SubnetEnv{}, fmt.Errorf("read subnet.env: %w", err)
	}
	defer f.Close()
	env, err := ParseSubnetEnv(f)
	if err != nil {
		return SubnetEnv{}, fmt.Errorf("%s: %w (it is written by flanneld: check the kube-flannel pod on this node)", path, err)
	}
	return env, nil
}

// ParseSubnetEnv parses subnet.env text: KEY=VALUE lines, where blank lines,
// # comments and unknown keys are ignored, a value may be quoted and a later
// line overrides an earlier one. A non-blank line without "=" is an error.
// Every problem is reported on one line.
func ParseSubnetEnv(r io.Reader) (SubnetEnv, error) {
	var e SubnetEnv
	seen := map[string]bool{}
	err := subnet.ScanEnv(r, func(key, value string) error {
		seen[key] = true
		return e.set(key, value)
	})
	if err != nil {
		return SubnetEnv{}, err
	}
	if m := e.missing(seen); len(m) > 0 {
		return SubnetEnv{}, fmt.Errorf("missing %s", strings.Join(m, ", "))
	}
	return e, e.validate()
}

// set stores one key's value; unknown keys are ignored.
func (e *SubnetEnv) set(key, value string) error {
	var err error
	switch key {
	case keyNetwork:
		e.Networks, err = parseNetworks(key, value)
	case keyIPv6Network:
		e.IPv6Networks, err = parseNetworks(key, value)
	case keySubnet:
		e.Subnet, err = parsePrefix(key, value)
	case keyIPv6Subnet:
		e.IPv6Subnet, err = parsePrefix(key, value)
	case keyMTU:
		if e.MTU, err = strconv.Atoi(value); err != nil {
			err = fmt.Errorf("%s %s is not a number", key, subnet.Quote(value))
		}
	case keyIPMasq:
		if e.IPMasq, err = strconv.ParseBool(value); err != nil {
			err = fmt.Errorf("%s %s is not true or false", key, subnet.Quote(value))
		}
	}
	return err
}

// missing lists the absent keys the way upstream's plugin does: both
// network keys when neither family has one, both subnet keys likewise.
func (e *SubnetEnv) missing(seen map[string]bool) []string {
	var m []string
	if len(e.Networks) == 0 && len(e.IPv6Networks) == 0 {
		m = append(m, keyNetwork, keyIPv6Network)
	}
	if !e.Subnet.IsValid() && !e.IPv6Subnet.IsValid() {
		m = append(m, keySubnet, keyIPv6Subnet)
	}
	for _, key := range []string{keyMTU, keyIPMasq} {
		if !seen[key] {
			m = append(m, key)
		}
	}
	return m
}

// validate checks that each family has networks and a subnet or neither,
// of the right family, the subnet inside one of the networks, and that the
// MTU is one an interface can have.
func (e *SubnetEnv) validate() error {
	var problems []string
	check := func(family, netKey, subKey string, networks []netip.Prefix, subnet netip.Prefix, want4 bool) {
		switch {
		case len(networks) == 0 && !subnet.IsValid():
		case len(networks) == 0:
			problems = append(problems, fmt.Sprintf("%s is set but %s is not", subKey, netKey))
		case !subnet.IsValid():
			problems = append(problems, fmt.Sprintf("%s is set but %s is not", netKey, subKey))
		case subnet.Addr().Is4() != want4:
			problems = append(problems, fmt.Sprintf("%s %s is not an %s subnet", subKey, subnet, family))
		case slices.ContainsFunc(networks, func(n netip.Prefix) bool { return n.Addr().Is4() != want4 }):
			problems = append(problems, fmt.Sprintf("%s %s is not a list of %s networks", netKey, joinPrefixes(networks), family))
		case !slices.ContainsFunc(networks, func(n netip.Prefix) bool { return ip.ContainsPrefix(n, subnet) }):
			problems = append(problems, fmt.Sprintf("%s %s is outside %s %s", subKey, subnet, netKey, joinPrefixes(networks)))
		}
	}
	check("IPv4", keyNetwork, keySubnet, e.Networks, e.Subnet, true)
	check("IPv6", keyIPv6Network, keyIPv6Subnet, e.IPv6Networks, e.IPv6Subnet, false)
	if e.MTU <= 0 || e.MTU > maxMTU {
		problems = append(problems, fmt.Sprintf("%s %d is not between 1 and %d", keyMTU, e.MTU, maxMTU))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// parseNetworks parses a comma-separated list of CIDRs, masking each and
// dropping repeats; an empty value means none.
func parseNetworks(key, value string) ([]netip.Prefix, error) {
	if value == "" {
		return nil, nil
	}
	var nets []netip.Prefix
	for _, s := range strings.Split(value, ",") {
		p, err := parsePrefix(key, strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		if !p.IsValid() {
			return nil, fmt.Errorf("%s %s has an empty entry", key, subnet.Quote(value))
		}
		if !slices.Contains(nets, p) {
			nets = append(nets, p)
		}
	}
	return nets, nil
}

// parsePrefix parses a CIDR and masks it; an empty value means unset.
func parsePrefix(key, value string) (netip.Prefix, error) {
	if value == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(value)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s %s is not a CIDR", key, subnet.Quote(value))
	}
	return p.Masked(), nil
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
