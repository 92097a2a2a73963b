package daemon

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultOptionsValidate(t *testing.T) {
	o := DefaultOptions()
	if err := o.Validate(); err != nil {
		t.Errorf("DefaultOptions().Validate() = %v", err)
	}
	o.KubeSubnetMgr = true
	if err := o.Validate(); err != nil {
		t.Errorf("DefaultOptions() in kube mode: Validate() = %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		change  func(o *Options)
		wantErr []string // substrings; none for a valid value
	}{
		// --subnet-lease-renew-margin: 1..1439 minutes.
		{"renew margin 0", func(o *Options) { o.SubnetLeaseRenewMargin = 0 }, []string{"--subnet-lease-renew-margin", "got 0"}},
		{"renew margin negative", func(o *Options) { o.SubnetLeaseRenewMargin = -5 }, []string{"--subnet-lease-renew-margin", "got -5"}},
		{"renew margin 1440", func(o *Options) { o.SubnetLeaseRenewMargin = 1440 }, []string{"--subnet-lease-renew-margin", "1439"}},
		{"renew margin 1", func(o *Options) { o.SubnetLeaseRenewMargin = 1 }, nil},
		{"renew margin 1439", func(o *Options) { o.SubnetLeaseRenewMargin = 1439 }, nil},

		{"iptables resync 0", func(o *Options) { o.IPTablesResync = 0 }, []string{"--iptables-resync", "got 0"}},
		{"iptables resync negative", func(o *Options) { o.IPTablesResync = -1 }, []string{"--iptables-resync"}},
		{"iptables resync 1", func(o *Options) { o.IPTablesResync = 1 }, nil},

		{"peer probes off", func(o *Options) { o.PeerProbeInterval = 0 }, nil},
		{"peer probe interval negative", func(o *Options) { o.PeerProbeInterval = -time.Second }, []string{"--peer-probe-interval", "-1s"}},
		{"peer probe rate 0", func(o *Options) { o.PeerProbeMaxRate = 0 }, []string{"--peer-probe-max-rate", "got 0"}},
		{"peer probe rate 1000.5", func(o *Options) { o.PeerProbeMaxRate = 1000.5 }, []string{"--peer-probe-max-rate"}},

		{"healthz port negative", func(o *Options) { o.HealthzPort = -1 }, []string{"--healthz-port", "got -1"}},
		{"healthz port too large", func(o *Options) { o.HealthzPort = 65536 }, []string{"--healthz-port", "65535"}},
		{"healthz port 65535", func(o *Options) { o.HealthzPort = 65535 }, nil},
		{"healthz ip bad", func(o *Options) { o.HealthzPort, o.HealthzIP = 8471, "not an ip" }, []string{"--healthz-ip", "not an ip"}},
		{"healthz host name", func(o *Options) { o.HealthzPort, o.HealthzIP = 8471, "localhost" }, nil},
		{"healthz ip empty", func(o *Options) { o.HealthzPort, o.HealthzIP = 8471, "" }, []string{"--healthz-ip"}},
		{"healthz ip ignored while off", func(o *Options) { o.HealthzPort, o.HealthzIP = 0, "not-an-ip" }, nil},
		{"healthz ip v6", func(o *Options) { o.HealthzPort, o.HealthzIP = 8471, "::" }, nil},
		{"healthz ip loopback", func(o *Options) { o.HealthzPort, o.HealthzIP = 8471, "127.0.0.1" }, nil},

		{"public ip garbage", func(o *Options) { o.PublicIP = "bogus" }, []string{"--public-ip", "bogus", "IPv4"}},
		{"public ip is IPv6", func(o *Options) { o.PublicIP = "2001:db8::1" }, []string{"--public-ip", "2001:db8::1", "IPv4"}},
		{"public ip is 4in6", func(o *Options) { o.PublicIP = "::ffff:203.0.113.1" }, []string{"--public-ip"}},
		{"public ip with prefix", func(o *Options) { o.PublicIP = "203.0.113.1/24" }, []string{"--public-ip"}},
		{"public ip", func(o *Options) { o.PublicIP = "203.0.113.1" }, nil},
		{"public ipv6 is IPv4", func(o *Options) { o.PublicIPv6 = "203.0.113.1" }, []string{"--public-ipv6", "IPv6"}},
		{"public ipv6 garbage", func(o *Options) { o.PublicIPv6 = "x::y" }, []string{"--public-ipv6", "x::y"}},
		{"public ipv6", func(o *Options) { o.PublicIPv6 = "2001:db8::1" }, nil},

		{"iface regex bad", func(o *Options) { o.IfaceRegex = []string{"^eth", "(["} }, []string{"--iface-regex", `"(["`}},
		{"iface regexes", func(o *Options) { o.IfaceRegex = []string{`^10\.0\.`, "eth[0-9]+"} }, nil},
		{"iface can reach bad", func(o *Options) { o.IfaceCanReach = "example.com" }, []string{"--iface-can-reach", "example.com"}},
		{"iface can reach v4", func(o *Options) { o.IfaceCanReach = "8.8.8.8" }, nil},
		{"iface can reach v6", func(o *Options) { o.IfaceCanReach = "2001:4860:4860::8888" }, nil},

		{"net config path empty in kube mode", func(o *Options) { o.KubeSubnetMgr, o.NetConfigPath = true, "" }, []string{"--net-config-path"}},
		{"net config path empty in etcd mode", func(o *Options) { o.KubeSubnetMgr, o.NetConfigPath = false, "" }, nil},
		{"subnet file empty", func(o *Options) { o.SubnetFile = "" }, []string{"--subnet-file"}},
		{"resync 0", func(o *Options) { o.Resync = 0 }, []string{"resync"}},
		{"resync negative", func(o *Options) { o.Resync = -time.Second }, []string{"resync"}},
		{"resync 1ms", func(o *Options) { o.Resync = time.Millisecond }, nil},

		{"everything wrong at once", func(o *Options) {
			o.SubnetLeaseRenewMargin, o.IPTablesResync, o.HealthzPort = 0, 0, 99999
			o.PublicIP, o.IfaceRegex, o.SubnetFile = "x", []string{"("}, ""
		}, []string{"--subnet-lease-renew-margin", "--iptables-resync", "--healthz-port", "--public-ip", "--iface-regex", "--subnet-file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			tt.change(&o)
			err := o.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Errorf("Validate() = %v, want no error", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate() = nil, want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, does not mention %q", err, w)
				}
			}
		})
	}
}

func TestOptionsValidateOneLinePerProblem(t *testing.T) {
	o := DefaultOptions()
	o.SubnetLeaseRenewMargin, o.IPTablesResync = 0, 0
	err := o.Validate()
	if err == nil {
		t.Fatal("Validate() = nil")
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != 2 {
		t.Errorf("Validate() = %q, want one line per problem", err)
	}
}

func TestOptionsPublicIP(t *testing.T) {
	o := DefaultOptions()
	if a, err := o.publicIP("", true); err != nil || a.IsValid() {
		t.Errorf("publicIP(\"\") = %v, %v; want no address", a, err)
	}
	if a, err := o.publicIP("203.0.113.1", true); err != nil || a.String() != "203.0.113.1" {
		t.Errorf("publicIP(v4) = %v, %v", a, err)
	}
	if a, err := o.publicIP("2001:db8::1", false); err != nil || a.String() != "2001:db8::1" {
		t.Errorf("publicIP(v6) = %v, %v", a, err)
	}
}
