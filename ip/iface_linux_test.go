//go:build linux

package ip

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flanneld/flanneld/network/nstest"
)

// newTestNetns returns a netlink handle into a throwaway namespace.
func newTestNetns(t *testing.T) *netlink.Handle { return nstest.New(t).Handle(t) }

// testNet builds links, addresses and routes through a handle.
type testNet struct {
	t *testing.T
	h *netlink.Handle
}

// addVeth creates the veth pair name/"p-"+name, brings both ends up, sets
// name's MTU and adds the addresses (IPv6 ones without DAD) to it.
func (n testNet) addVeth(name string, mtu int, addrs ...string) netlink.Link {
	n.t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: "p-" + name}
	if err := n.h.LinkAdd(veth); err != nil {
		n.t.Fatalf("adding veth %s: %v", name, err)
	}
	link, err := n.h.LinkByName(name)
	if err != nil {
		n.t.Fatalf("looking up %s: %v", name, err)
	}
	peer, err := n.h.LinkByName("p-" + name)
	if err != nil {
		n.t.Fatalf("looking up p-%s: %v", name, err)
	}
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := n.h.AddrAdd(link, addr); err != nil {
			n.t.Fatalf("adding %s to %s: %v", a, name, err)
		}
	}
	for _, l := range []netlink.Link{link, peer} {
		if err := n.h.LinkSetUp(l); err != nil {
			n.t.Fatalf("bringing %s up: %v", l.Attrs().Name, err)
		}
	}
	return link
}

// addRoute adds a route to dst ("" for the default route) via gw on link.
func (n testNet) addRoute(link netlink.Link, dst, gw string) {
	n.t.Helper()
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.ParseIP(gw)}
	if dst != "" {
		r.Dst = IPNetFromPrefix(netip.MustParsePrefix(dst))
	}
	if err := n.h.RouteAdd(r); err != nil {
		n.t.Fatalf("adding route %q via %s: %v", dst, gw, err)
	}
}

func addr(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

func TestLookupExternalInterface(t *testing.T) {
	h := newTestNetns(t)
	n := testNet{t, h}
	ext0 := n.addVeth("ext0", 1500, "10.0.0.2/24", "10.0.0.3/24", "fd00:a::2/64")
	n.addRoute(ext0, "", "10.0.0.1")
	n.addRoute(ext0, "", "fd00:a::1")
	ext1 := n.addVeth("ext1", 9000, "172.16.0.2/24", "fd00:b::2/64")
	n.addRoute(ext1, "198.51.100.0/24", "172.16.0.1")
	n.addRoute(ext1, "2001:db8:1::/48", "fd00:b::1")
	n.addVeth("ens5", 1500, "192.168.50.2/24")
	n.addVeth("noaddr", 1500)
	n.addVeth("ll0", 1500, "169.254.1.2/16")
	unreachable := &netlink.Route{Dst: IPNetFromPrefix(netip.MustParsePrefix("192.0.2.0/24")), Type: unix.RTN_UNREACHABLE}
	if err := h.RouteAdd(unreachable); err != nil {
		t.Fatalf("adding an unreachable route: %v", err)
	}

	type want struct {
		name                 string
		mtu                  int
		v4, v6, extV4, extV6 string
	}
	tests := []struct {
		name string
		opts InterfaceOptions
		want want
	}{
		{"default route", InterfaceOptions{EnableIPv4: true},
			want{name: "ext0", mtu: 1500, v4: "10.0.0.2", extV4: "10.0.0.2"}},
		{"default route dual stack", InterfaceOptions{EnableIPv4: true, EnableIPv6: true},
			want{name: "ext0", mtu: 1500, v4: "10.0.0.2", v6: "fd00:a::2", extV4: "10.0.0.2", extV6: "fd00:a::2"}},
		{"default route IPv6 only", InterfaceOptions{EnableIPv6: true},
			want{name: "ext0", mtu: 1500, v6: "fd00:a::2", extV6: "fd00:a::2"}},
		{"iface by name", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"ext1"}},
			want{name: "ext1", mtu: 9000, v4: "172.16.0.2", extV4: "172.16.0.2"}},
		{"iface by IP", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"172.16.0.2"}},
			want{name: "ext1", mtu: 9000, v4: "172.16.0.2", extV4: "172.16.0.2"}},
		{"iface by secondary IP", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"10.0.0.3"}},
			want{name: "ext0", mtu: 1500, v4: "10.0.0.3", extV4: "10.0.0.3"}},
		{"iface by IPv6 in dual stack", InterfaceOptions{EnableIPv4: true, EnableIPv6: true, Ifaces: []string{"fd00:b::2"}},
			want{name: "ext1", mtu: 9000, v4: "172.16.0.2", v6: "fd00:b::2", extV4: "172.16.0.2", extV6: "fd00:b::2"}},
		{"first existing iface wins", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"missing0", "10.9.9.9", "ext1", "ext0"}},
			want{name: "ext1", mtu: 9000, v4: "172.16.0.2", extV4: "172.16.0.2"}},
		{"iface without address is skipped", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"noaddr", "ens5"}},
			want{name: "ens5", mtu: 1500, v4: "192.168.50.2", extV4: "192.168.50.2"}},
		{"iface-regex on IP", InterfaceOptions{EnableIPv4: true, IfaceRegex: []string{`^192\.168\.50\.`}},
			want{name: "ens5", mtu: 1500, v4: "192.168.50.2", extV4: "192.168.50.2"}},
		{"iface-regex on IP picks the matching address", InterfaceOptions{EnableIPv4: true, IfaceRegex: []string{`\.3$`}},
			want{name: "ext0", mtu: 1500, v4: "10.0.0.3", extV4: "10.0.0.3"}},
		{"iface-regex on name", InterfaceOptions{EnableIPv4: true, IfaceRegex: []string{`^ens`}},
			want{name: "ens5", mtu: 1500, v4: "192.168.50.2", extV4: "192.168.50.2"}},
		{"iface-regex after unmatched iface", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"missing0"}, IfaceRegex: []string{`^nomatch`, `^ext1$`}},
			want{name: "ext1", mtu: 9000, v4: "172.16.0.2", extV4: "172.16.0.2"}},
		{"iface-can-reach", InterfaceOptions{EnableIPv4: true, CanReach: "198.51.100.7"},
			want{name: "ext1", mtu: 9000, v4: "172.16.0.2", extV4: "172.16.0.2"}},
		{"iface-can-reach IPv6", InterfaceOptions{EnableIPv6: true, CanReach: "2001:db8:1::5"},
			want{name: "ext1", mtu: 9000, v6: "fd00:b::2", extV6: "fd00:b::2"}},
		{"public-ip overrides", InterfaceOptions{EnableIPv4: true, EnableIPv6: true,
			PublicIP: addr("203.0.113.9"), PublicIPv6: addr("2001:db8::9")},
			want{name: "ext0", mtu: 1500, v4: "10.0.0.2", v6: "fd00:a::2", extV4: "203.0.113.9", extV6: "2001:db8::9"}},
		{"IPv4 link-local fallback", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"ll0"}},
			want{name: "ll0", mtu: 1500, v4: "169.254.1.2", extV4: "169.254.1.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LookupExternalInterface(h, tt.opts)
			if err != nil {
				t.Fatalf("LookupExternalInterface: %v", err)
			}
			w := tt.want
			link, err := h.LinkByName(w.name)
			if err != nil {
				t.Fatal(err)
			}
			exp := ExternalInterface{
				Name: w.name, Index: link.Attrs().Index, MTU: w.mtu,
				IfaceAddr: addr(w.v4), IfaceV6Addr: addr(w.v6), ExtAddr: addr(w.extV4), ExtV6Addr: addr(w.extV6),
			}
			if *got != exp {
				t.Errorf("got  %+v\nwant %+v", *got, exp)
			}
		})
	}

	errTests := []struct {
		name    string
		opts    InterfaceOptions
		wantErr []string
	}{
		{"missing iface", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"nope0"}},
			[]string{`--iface nope0: no interface named "nope0"`}},
		{"unknown IP", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"10.9.9.9"}},
			[]string{"--iface 10.9.9.9: no interface has address 10.9.9.9"}},
		{"all attempts are named", InterfaceOptions{EnableIPv4: true, Ifaces: []string{"nope0", "noaddr"}, IfaceRegex: []string{`^zz`}, CanReach: "192.0.2.1"},
			[]string{`--iface nope0: no interface named "nope0"`,
				"--iface noaddr: interface noaddr has no global unicast IPv4 address",
				"--iface-regex ^zz: no interface address or name matches (interfaces: lo, ",
				"--iface-can-reach 192.0.2.1: no route to 192.0.2.1",
			}},
		{"no IPv6 on chosen iface", InterfaceOptions{EnableIPv6: true, Ifaces: []string{"ens5"}},
			[]string{"interface ens5 has no global unicast IPv6 address"}},
		{"invalid options", InterfaceOptions{EnableIPv4: true, IfaceRegex: []string{"("}},
			[]string{`invalid --iface-regex "("`}},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LookupExternalInterface(h, tt.opts)
			if err == nil {
				t.Fatalf("got %+v, want an error", *got)
			}
			t.Logf("error: %v", err)
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
	t.Run("ErrNoInterface", func(t *testing.T) {
		_, err := LookupExternalInterface(h, InterfaceOptions{EnableIPv4: true, Ifaces: []string{"nope0"}})
		if !errors.Is(err, ErrNoInterface) {
			t.Errorf("error %v does not wrap ErrNoInterface", err)
		}
	})
}

func TestLookupExternalInterfaceDefaultRouteErrors(t *testing.T) {
	h := newTestNetns(t)
	n := testNet{t, h}
	ext0 := n.addVeth("ext0", 1500, "10.0.0.2/24", "fd00:a::2/64")
	ext1 := n.addVeth("ext1", 1500, "172.16.0.2/24", "fd00:b::2/64")

	_, err := LookupExternalInterface(h, InterfaceOptions{EnableIPv4: true})
	if err == nil || !strings.Contains(err.Error(), "there is no IPv4 default route") || !errors.Is(err, ErrNoInterface) {
		t.Errorf("without a default route: error = %v", err)
	}

	n.addRoute(ext0, "", "10.0.0.1")
	n.addRoute(ext1, "", "fd00:b::1")
	_, err = LookupExternalInterface(h, InterfaceOptions{EnableIPv4: true, EnableIPv6: true})
	want := "the IPv4 default route uses interface ext0 but the IPv6 default route uses ext1"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("dual stack with different default interfaces: error = %v, want %q", err, want)
	}

	// Among several IPv4 default routes the one with the lowest metric wins.
	if err := h.RouteAdd(&netlink.Route{LinkIndex: ext1.Attrs().Index, Gw: net.ParseIP("172.16.0.1"), Priority: 5}); err != nil {
		t.Fatal(err)
	}
	got, err := LookupExternalInterface(h, InterfaceOptions{EnableIPv4: true})
	if err != nil || got.Name != "ext0" {
		t.Errorf("metric 0 on ext0, 5 on ext1: got %+v, %v; want ext0", got, err)
	}
	if err := h.RouteDel(&netlink.Route{LinkIndex: ext0.Attrs().Index, Gw: net.ParseIP("10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: ext0.Attrs().Index, Gw: net.ParseIP("10.0.0.1"), Priority: 10}); err != nil {
		t.Fatal(err)
	}
	got, err = LookupExternalInterface(h, InterfaceOptions{EnableIPv4: true})
	if err != nil || got.Name != "ext1" {
		t.Errorf("metric 10 on ext0, 5 on ext1: got %+v, %v; want ext1", got, err)
	}
	if _, err := LookupExternalInterface(nil, InterfaceOptions{EnableIPv4: true}); err == nil {
		t.Error("nil handle: no error")
	}
}
