package daemon

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/subnet"
)

func TestFirewallRules(t *testing.T) {
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
			rules := FirewallRules(&o, cfg, lease)
			if len(rules) != tt.want {
				t.Fatalf("%d rules, want %d:\n%s", len(rules), tt.want, network.Render(rules))
			}
			if got := strings.Contains(network.Render(rules), "--random-fully"); got != tt.wantRandom {
				t.Errorf("--random-fully present %v, want %v", got, tt.wantRandom)
			}
		})
	}

	o := DefaultOptions()
	o.Iface, o.PublicIP = []string{"eth0"}, "203.0.113.1"
	io := o.InterfaceOptions(cfg)
	if len(io.Ifaces) != 1 || io.PublicIP != netip.MustParseAddr("203.0.113.1") || !io.EnableIPv4 || io.EnableIPv6 {
		t.Errorf("InterfaceOptions = %+v", io)
	}
}
