package subnet

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestPeerRules(t *testing.T) {
	cfg := &Config{EnableIPv4: true, EnableIPv6: true,
		Network: netip.MustParsePrefix("10.244.0.0/16"), IPv6Network: netip.MustParsePrefix("fd00:10:244::/56")}
	rules := PeerRules{
		Config: cfg,
		Own: Lease{Name: "self", Subnet: netip.MustParsePrefix("10.244.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:1::/64"),
			Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.100.11"), PublicIPv6: netip.MustParseAddr("fd00:100::11")}},
		Local: []netip.Addr{netip.MustParseAddr("192.168.100.11"), netip.MustParseAddr("fd00:100::11"), netip.MustParseAddr("203.0.113.7")},
		Segments: []netip.Prefix{netip.MustParsePrefix("192.168.100.11/24"), netip.MustParsePrefix("fd00:100::11/64"),
			netip.MustParsePrefix("172.16.0.1/31")},
	}
	good := func() Lease {
		return Lease{Name: "peer", Subnet: netip.MustParsePrefix("10.244.2.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:2::/64"),
			Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.100.12"), PublicIPv6: netip.MustParseAddr("fd00:100::12")}}
	}
	with := func(change func(*Lease)) Lease {
		l := good()
		change(&l)
		return l
	}
	subnet4 := func(s string) Lease { return with(func(l *Lease) { l.Subnet = netip.MustParsePrefix(s) }) }
	public4 := func(s string) Lease { return with(func(l *Lease) { l.Attrs.PublicIP = netip.MustParseAddr(s) }) }
	public6 := func(s string) Lease { return with(func(l *Lease) { l.Attrs.PublicIPv6 = netip.MustParseAddr(s) }) }

	for _, c := range []struct {
		name   string
		peer   Lease
		reason SkipReason // "" for accepted
		says   string
	}{
		{"good", good(), "", ""},
		{"public IP on another segment", public4("192.168.200.13"), "", ""},
		{"public IP on a /31 segment", public4("172.16.0.0"), "", ""},
		{"no IPv6 at all", with(func(l *Lease) { l.IPv6Subnet, l.Attrs.PublicIPv6 = netip.Prefix{}, netip.Addr{} }), "", ""},
		{"malformed at the source", with(func(l *Lease) { l.Err = &PeerError{SkipMalformed, errors.New("bad JSON")} }), SkipMalformed, "bad JSON"},

		{"underlay /24", subnet4("192.168.100.0/24"), SkipSubnet, "outside Network 10.244.0.0/16"},
		{"half of IPv4", subnet4("128.0.0.0/1"), SkipSubnet, "lies in the reserved range"},
		{"loopback", subnet4("127.0.0.0/8"), SkipSubnet, "reserved range 127.0.0.0/8"},
		{"multicast", subnet4("224.0.0.0/4"), SkipSubnet, "reserved range 224.0.0.0/4"},
		{"public range", subnet4("8.8.8.0/24"), SkipSubnet, "outside Network"},
		{"the Network itself", subnet4("10.244.0.0/16"), SkipSubnet, "overlaps this node's subnet"},
		{"this node's subnet", subnet4("10.244.1.0/24"), SkipSubnet, "overlaps this node's subnet"},
		{"inside this node's subnet", subnet4("10.244.1.128/25"), SkipSubnet, "overlaps this node's subnet"},
		{"IPv6 outside", with(func(l *Lease) { l.IPv6Subnet = netip.MustParsePrefix("fd00:100::/64") }), SkipSubnet, "outside IPv6Network"},
		{"IPv6 link-local", with(func(l *Lease) { l.IPv6Subnet = netip.MustParsePrefix("fe80::/64") }), SkipSubnet, "reserved range fe80::/10"},

		{"unspecified", public4("0.0.0.0"), SkipPublicIP, "unspecified"},
		{"loopback IP", public4("127.0.0.1"), SkipPublicIP, "loopback"},
		{"multicast IP", public4("224.0.0.1"), SkipPublicIP, "multicast"},
		{"limited broadcast", public4("255.255.255.255"), SkipPublicIP, "reserved range"},
		{"link-local IP", public4("169.254.1.1"), SkipPublicIP, "link-local"},
		{"this network", public4("0.1.2.3"), SkipPublicIP, "reserved range 0.0.0.0/8"},
		{"class E", public4("240.0.0.1"), SkipPublicIP, "reserved range 240.0.0.0/4"},
		{"this node's address", public4("192.168.100.11"), SkipPublicIP, "this node's own address"},
		{"this node's other address", public4("203.0.113.7"), SkipPublicIP, "this node's own address"},
		{"segment network address", public4("192.168.100.0"), SkipPublicIP, "network address of the segment 192.168.100.0/24"},
		{"segment broadcast", public4("192.168.100.255"), SkipPublicIP, "broadcast address of the segment 192.168.100.0/24"},
		{"inside the pod network", public4("10.244.3.1"), SkipPublicIP, "inside the pod network 10.244.0.0/16"},
		{"IPv6 loopback", public6("::1"), SkipPublicIP, "loopback"},
		{"IPv6 multicast", public6("ff02::1"), SkipPublicIP, "multicast"},
		{"IPv6 link-local", public6("fe80::1"), SkipPublicIP, "link-local"},
		{"IPv6 subnet-router anycast", public6("fd00:100::"), SkipPublicIP, "network address of the segment fd00:100::/64"},
		{"IPv6 own", public6("fd00:100::11"), SkipPublicIP, "this node's own address"},
		{"IPv4-mapped", public6("::ffff:192.168.100.12"), SkipPublicIP, "IPv4-mapped"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := rules.Check(c.peer)
			if c.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want refused (%s)", c.reason)
			}
			if got := ReasonOf(err, "none"); got != c.reason {
				t.Errorf("reason %q, want %q (%v)", got, c.reason, err)
			}
			if !strings.Contains(err.Error(), c.says) {
				t.Errorf("error %q does not say %q", err, c.says)
			}
		})
	}
}

// A family this node does not use is not checked: an IPv4-only node
// programs a dual-stack peer's IPv4 side whatever its IPv6 side says.
func TestPeerRulesIgnoreDisabledFamily(t *testing.T) {
	rules := PeerRules{Config: &Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16")}}
	peer := Lease{Name: "peer", Subnet: netip.MustParsePrefix("10.244.2.0/24"), IPv6Subnet: netip.MustParsePrefix("fe80::/64"),
		Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.100.12"), PublicIPv6: netip.MustParseAddr("::1")}}
	if err := rules.Check(peer); err != nil {
		t.Fatal(err)
	}
}

func TestQuote(t *testing.T) {
	if got := Quote("short"); got != `"short"` {
		t.Errorf("Quote(short) = %s", got)
	}
	long := strings.Repeat("x", 250000)
	got := Quote(long)
	if len(got) > MaxQuoteBytes+40 || !strings.HasSuffix(got, "...(250000 bytes)") {
		t.Errorf("Quote of 250 KB gave %d bytes ending %q", len(got), got[len(got)-30:])
	}
}
