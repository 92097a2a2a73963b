package lab

// The routed topology: a second underlay segment joined to the first by a
// router namespace, for tests where some peers are reachable only through a
// gateway (host-gw's limits, VXLAN DirectRouting).
//
//	underlay netns: br0 (Segment1, 192.168.100.0/24)   br1 (Segment2, 192.168.200.0/24)
//	                 |                                   |
//	router netns:   eth0 192.168.100.1 ---- forwarding ---- eth1 192.168.200.1
//
// The router has no default route, so traffic for anything outside the two
// segments is dropped there and never leaves the lab. In an IPv6 lab
// (WithIPv6) the segments are also fd00:100::/64 and fd00:200::/64, the
// router fd00:100::1 and fd00:200::1.

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

// Segment is one L2 segment of the underlay: a bridge in the underlay
// namespace and a /24.
type Segment int

const (
	// Segment1 is 192.168.100.0/24 on br0: the control plane and the
	// nodes of AddNode.
	Segment1 Segment = iota
	// Segment2 is 192.168.200.0/24 on br1. It exists once the router does
	// (AddRouter, or the first AddNodeOn(t, Segment2, ...)).
	Segment2
)

// segmentThirdOctet is the third octet of each segment's 192.168.x.0/24.
var segmentThirdOctet = [...]byte{Segment1: 100, Segment2: 200}

// Prefix is the segment's subnet, e.g. 192.168.100.0/24.
func (s Segment) Prefix() netip.Prefix {
	return netip.PrefixFrom(s.Host(0), 24)
}

// Gateway is the segment's .1: the router's address on it, and the
// default gateway of its nodes. On Segment1 it is UnderlayGateway, which
// nobody has until the router exists.
func (s Segment) Gateway() netip.Addr { return s.Host(1) }

// Host is the address with last octet host on the segment.
func (s Segment) Host(host int) netip.Addr {
	return netip.AddrFrom4([4]byte{192, 168, segmentThirdOctet[s], byte(host)})
}

// Prefix6 is the segment's IPv6 subnet in an IPv6 lab (WithIPv6): the
// third octet of its IPv4 subnet in fd00:<octet>::/64, e.g. fd00:100::/64.
func (s Segment) Prefix6() netip.Prefix {
	return netip.PrefixFrom(s.Host6(0), 64)
}

// Gateway6 is the IPv6 counterpart of Gateway (fd00:100::1).
func (s Segment) Gateway6() netip.Addr { return s.Host6(1) }

// Host6 is the IPv6 counterpart of Host, written with the same digits so
// that it reads alike: Host6(11) of Segment1 is fd00:100::11.
func (s Segment) Host6(host int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:%d::%d", segmentThirdOctet[s], host))
}

// Bridge is the name of the segment's bridge in the underlay namespace.
func (s Segment) Bridge() string { return fmt.Sprintf("br%d", int(s)) }

func (s Segment) String() string { return fmt.Sprintf("segment%d(%s)", int(s)+1, s.Prefix()) }

func (s Segment) valid() bool { return s >= 0 && int(s) < len(segmentThirdOctet) }

// topology is the lab's routed part; the zero value means "no router yet".
type topology struct {
	mu       sync.Mutex
	routerNS string
}

// RouterNetns is the router's namespace ("" until AddRouter).
func (l *Lab) RouterNetns() string {
	l.topo.mu.Lock()
	defer l.topo.mu.Unlock()
	return l.topo.routerNS
}

// AddRouter creates Segment2's bridge and the router namespace joining the
// two segments (IPv4 forwarding on, .1 on each; IPv6 too in an IPv6 lab),
// and routes the control plane's replies to Segment2 through it. Calling it again does nothing.
// Nodes on Segment1 already point their default route at the router's
// address, so they reach Segment2 (and its nodes reach the control plane)
// through it.
func (l *Lab) AddRouter(t testing.TB) {
	t.Helper()
	l.topo.mu.Lock()
	defer l.topo.mu.Unlock()
	if l.topo.routerNS != "" {
		return
	}
	if err := l.createRouter(); err != nil {
		t.Fatalf("creating the router: %v", err)
	}
}

func (l *Lab) createRouter() error {
	for _, args := range [][]string{
		{"-n", l.underlayNS, "link", "add", Segment2.Bridge(), "type", "bridge"},
		{"-n", l.underlayNS, "link", "set", Segment2.Bridge(), "up"},
	} {
		if _, err := runIP(args...); err != nil {
			return err
		}
	}
	ns := netnsName(l.runID, "rt")
	if err := l.attachToSegment(ns, "vr-1", Segment1, Segment1.Gateway()); err != nil {
		return err
	}
	// The router's second leg: eth1 on Segment2.
	steps := [][]string{
		{"-n", l.underlayNS, "link", "add", "vr-2", "type", "veth", "peer", "name", "eth1", "netns", ns},
		{"-n", l.underlayNS, "link", "set", "vr-2", "master", Segment2.Bridge(), "up"},
		{"-n", ns, "addr", "add", netip.PrefixFrom(Segment2.Gateway(), Segment2.Prefix().Bits()).String(), "dev", "eth1"},
	}
	if l.ipv6 {
		steps = append(steps, []string{"-n", ns, "addr", "add", netip.PrefixFrom(Segment2.Gateway6(), Segment2.Prefix6().Bits()).String(), "dev", "eth1", "nodad"})
	}
	steps = append(steps, []string{"-n", ns, "link", "set", "eth1", "up"})
	if l.cp != nil {
		steps = append(steps, []string{"-n", l.cp.netns, "route", "replace", Segment2.Prefix().String(), "via", Segment1.Gateway().String(), "dev", "eth0"})
		if l.ipv6 {
			steps = append(steps, []string{"-n", l.cp.netns, "-6", "route", "replace", Segment2.Prefix6().String(), "via", Segment1.Gateway6().String(), "dev", "eth0"})
		}
	}
	for _, args := range steps {
		if _, err := runIP(args...); err != nil {
			return err
		}
	}
	if err := l.enableForwarding(ns); err != nil {
		return err
	}
	l.topo.routerNS = ns
	return nil
}

// enableForwarding turns on IPv4 forwarding in ns, and IPv6 forwarding in
// an IPv6 lab.
func (l *Lab) enableForwarding(ns string) error {
	settings := []string{"net.ipv4.ip_forward=1"}
	if l.ipv6 {
		settings = append(settings, "net.ipv6.conf.all.forwarding=1")
	}
	_, err := Exec(ns, append([]string{"sysctl", "-q", "-w"}, settings...)...)
	return err
}

// attachToSegment creates namespace ns and wires it to the segment's
// bridge with a veth pair whose ns end is eth0 with address addr (and, in
// an IPv6 lab, the segment's IPv6 address with the same host part, without
// duplicate address detection so that it is usable at once).
func (l *Lab) attachToSegment(ns, bridgePort string, seg Segment, addr netip.Addr) error {
	if !seg.valid() {
		return fmt.Errorf("unknown underlay segment %d", int(seg))
	}
	if !seg.Prefix().Contains(addr) {
		return fmt.Errorf("address %s is not on %s", addr, seg)
	}
	if err := createNetns(ns); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", l.underlayNS, "link", "add", bridgePort, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", l.underlayNS, "link", "set", bridgePort, "master", seg.Bridge(), "up"},
		{"-n", ns, "addr", "add", netip.PrefixFrom(addr, seg.Prefix().Bits()).String(), "dev", "eth0"},
	}
	if l.ipv6 {
		addr6 := seg.Host6(int(addr.As4()[3]))
		steps = append(steps, []string{"-n", ns, "addr", "add", netip.PrefixFrom(addr6, seg.Prefix6().Bits()).String(), "dev", "eth0", "nodad"})
	}
	steps = append(steps, []string{"-n", ns, "link", "set", "eth0", "up"})
	for _, args := range steps {
		if _, err := runIP(args...); err != nil {
			return err
		}
	}
	return nil
}
