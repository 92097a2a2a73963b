package daemon

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/subnet"
)

func TestFirewallRuleSets(t *testing.T) {
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"10.244.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	lease := subnet.Lease{Subnet: netip.MustParsePrefix("10.244.1.0/24")}
	for _, tt := range []struct {
		name                string
		masq, forward, rand bool
		want                int
		wantRandom          bool
	}{
		{name: "defaults", forward: true, want: 3},
		{name: "masq and forward", masq: true, forward: true, rand: true, want: 10, wantRandom: true},
		{name: "masq without random-fully", masq: true, want: 7},
		{name: "none"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			o.IPMasq, o.IPTablesForwardRules, o.IPMasqFullyRandomDisable = tt.masq, tt.forward, !tt.rand
			sets := FirewallRuleSets(&o, cfg, lease)
			if tt.want == 0 {
				if len(sets) != 0 {
					t.Fatalf("rule sets %+v, want none", sets)
				}
				return
			}
			if len(sets) != 1 || sets[0].IPv6() {
				t.Fatalf("rule sets %+v, want one IPv4 set", sets)
			}
			rules := sets[0].IPTablesRules()
			if len(rules) != tt.want {
				t.Fatalf("%d rules, want %d:\n%s", len(rules), tt.want, network.Render(rules))
			}
			if got := strings.Contains(network.Render(rules), "--random-fully"); got != tt.wantRandom {
				t.Errorf("--random-fully present %v, want %v", got, tt.wantRandom)
			}
			if got := strings.Contains(network.RenderNFT(sets[0].NFTTable()), "fully-random"); got != tt.wantRandom {
				t.Errorf("nftables fully-random present %v, want %v", got, tt.wantRandom)
			}
		})
	}
}

func TestFirewallRuleSetsDualStack(t *testing.T) {
	v4 := netip.MustParsePrefix("10.244.1.0/24")
	v6 := netip.MustParsePrefix("fd00:10:244:1::/64")
	o := DefaultOptions()
	o.IPMasq = true
	for _, tt := range []struct {
		name    string
		netConf string
		lease   subnet.Lease
		want    []string // networks of the sets, in order
	}{
		{"dual stack", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}`,
			subnet.Lease{Subnet: v4, IPv6Subnet: v6}, []string{"10.244.0.0/16", "fd00:10:244::/56"}},
		{"lease without an IPv6 subnet", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}`,
			subnet.Lease{Subnet: v4}, []string{"10.244.0.0/16"}},
		{"IPv6 only", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}`,
			subnet.Lease{IPv6Subnet: v6}, []string{"fd00:10:244::/56"}},
		{"IPv6 disabled", `{"Network":"10.244.0.0/16"}`,
			subnet.Lease{Subnet: v4, IPv6Subnet: v6}, []string{"10.244.0.0/16"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := subnet.ParseConfig([]byte(tt.netConf))
			if err != nil {
				t.Fatal(err)
			}
			sets := FirewallRuleSets(&o, cfg, tt.lease)
			var got []string
			for _, s := range sets {
				got = append(got, s.Network.String())
				if err := s.Validate(); err != nil {
					t.Errorf("set %s: %v", s.Network, err)
				}
				if !s.Masq || !s.Forward || !s.MasqFullyRandom {
					t.Errorf("set %s: %+v, want masquerade (fully random) and forward rules", s.Network, s)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("rule sets for %v, want %v", got, tt.want)
			}
			if len(sets) > 0 && sets[len(sets)-1].IPv6() {
				if s := sets[len(sets)-1]; s.Lease != v6 || s.NFTTable().Name != network.NFTTableIPv6 {
					t.Errorf("IPv6 set %+v", s)
				}
			}
		})
	}
}

func TestFirewallMode(t *testing.T) {
	for netConf, want := range map[string]string{
		`{"Network":"10.244.0.0/16"}`:                       "iptables",
		`{"Network":"10.244.0.0/16","EnableNFTables":true}`: "nftables",
	} {
		cfg, err := subnet.ParseConfig([]byte(netConf))
		if err != nil {
			t.Fatal(err)
		}
		if got := FirewallMode(cfg); got != want {
			t.Errorf("FirewallMode(%s) = %q, want %q", netConf, got, want)
		}
	}
}

func TestInterfaceOptions(t *testing.T) {
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"10.244.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.Iface, o.PublicIP = []string{"eth0"}, "203.0.113.1"
	io := o.InterfaceOptions(cfg)
	if len(io.Ifaces) != 1 || io.PublicIP != netip.MustParseAddr("203.0.113.1") || !io.EnableIPv4 || io.EnableIPv6 {
		t.Errorf("InterfaceOptions = %+v", io)
	}
}
