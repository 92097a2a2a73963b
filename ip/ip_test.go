package ip

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// pfx parses a prefix, or returns the zero Prefix for "".
func pfx(t *testing.T, s string) netip.Prefix {
	t.Helper()
	if s == "" {
		return netip.Prefix{}
	}
	return netip.MustParsePrefix(s)
}

func TestFirstAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.244.1.0/24", "10.244.1.1/24"},
		{"10.244.1.77/24", "10.244.1.1/24"}, // masked first
		{"10.244.0.0/16", "10.244.0.1/16"},
		{"192.168.0.4/30", "192.168.0.5/30"},
		{"10.0.0.7/32", "10.0.0.8/32"},
		{"fd00:0:0:1::/64", "fd00:0:0:1::1/64"},
		{"255.255.255.255/32", ""}, // nothing after it
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := FirstAddr(pfx(t, tt.in)); got != pfx(t, tt.want) {
			t.Errorf("FirstAddr(%q) = %v, want %q", tt.in, got, tt.want)
		}
	}
}

func TestLastAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.244.0.0/16", "10.244.255.255"},
		{"10.244.1.9/24", "10.244.1.255"},
		{"10.0.0.1/32", "10.0.0.1"},
		{"0.0.0.0/0", "255.255.255.255"},
		{"fd00::/120", "fd00::ff"},
		{"fd00::/63", "fd00:0:0:1:ffff:ffff:ffff:ffff"},
	}
	for _, tt := range tests {
		if got := LastAddr(pfx(t, tt.in)); got != netip.MustParseAddr(tt.want) {
			t.Errorf("LastAddr(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
	if got := LastAddr(netip.Prefix{}); got.IsValid() {
		t.Errorf("LastAddr(invalid) = %v, want invalid", got)
	}
}

func TestContainsPrefix(t *testing.T) {
	tests := []struct {
		outer, inner string
		want         bool
	}{
		{"10.244.0.0/16", "10.244.1.0/24", true},
		{"10.244.0.0/16", "10.244.0.0/16", true},
		{"10.244.0.0/16", "10.244.255.252/30", true},
		{"10.244.0.0/16", "10.245.1.0/24", false},
		{"10.244.0.0/16", "10.0.0.0/8", false}, // inner is bigger
		{"10.244.0.0/16", "10.244.0.0/15", false},
		{"0.0.0.0/0", "192.0.2.0/24", true},
		{"fd00::/48", "fd00:0:0:1::/64", true},
		{"fd00::/48", "fd00:1::/64", false},
		{"::/0", "10.0.0.0/8", false},               // different family
		{"0.0.0.0/0", "::ffff:10.0.0.0/104", false}, // mapped counts as IPv6
		{"10.244.0.0/16", "", false},
		{"", "10.244.1.0/24", false},
	}
	for _, tt := range tests {
		if got := ContainsPrefix(pfx(t, tt.outer), pfx(t, tt.inner)); got != tt.want {
			t.Errorf("ContainsPrefix(%q, %q) = %v, want %v", tt.outer, tt.inner, got, tt.want)
		}
	}
}

func TestOverlaps(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"10.244.0.0/16", "10.244.1.0/24", true},
		{"10.244.1.0/24", "10.244.0.0/16", true},
		{"10.244.1.0/24", "10.244.2.0/24", false},
		{"10.0.0.0/8", "fd00::/8", false},
		{"", "10.0.0.0/8", false},
		{"10.0.0.0/8", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if got := Overlaps(pfx(t, tt.a), pfx(t, tt.b)); got != tt.want {
			t.Errorf("Overlaps(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestNextPrefix(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"10.244.1.0/24", "10.244.2.0/24", true},
		{"10.244.1.5/24", "10.244.2.0/24", true}, // masked first
		{"10.244.255.0/24", "10.245.0.0/24", true},
		{"10.255.255.0/24", "11.0.0.0/24", true},
		{"10.0.0.0/8", "11.0.0.0/8", true},
		{"10.0.0.0/7", "12.0.0.0/7", true},
		{"10.0.0.255/32", "10.0.1.0/32", true},
		{"128.0.0.0/1", "", false},
		{"255.255.255.0/24", "", false},
		{"255.255.255.255/32", "", false},
		{"0.0.0.0/0", "", false},
		{"fd00:0:0:1::/64", "fd00:0:0:2::/64", true},
		{"fd00:0:0:ffff::/64", "fd00:0:1::/64", true},
		{"ffff:ffff:ffff:ffff::/64", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := NextPrefix(pfx(t, tt.in))
		if got != pfx(t, tt.want) || ok != tt.ok {
			t.Errorf("NextPrefix(%q) = %v, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestIsAligned(t *testing.T) {
	tests := []struct {
		addr string
		bits int
		want bool
	}{
		{"10.244.1.0", 24, true},
		{"10.244.1.0", 23, false},
		{"10.244.2.0", 23, true},
		{"10.244.1.1", 24, false},
		{"10.244.1.1", 32, true},
		{"10.244.1.0", 33, false},
		{"10.244.1.0", -1, false},
		{"fd00:0:0:1::", 64, true},
		{"fd00:0:0:1::", 63, false},
	}
	for _, tt := range tests {
		if got := IsAligned(netip.MustParseAddr(tt.addr), tt.bits); got != tt.want {
			t.Errorf("IsAligned(%s, %d) = %v, want %v", tt.addr, tt.bits, got, tt.want)
		}
	}
	if IsAligned(netip.Addr{}, 0) {
		t.Error("IsAligned(invalid, 0) = true")
	}
}

func TestIPNetConversions(t *testing.T) {
	for _, s := range []string{"10.244.1.0/24", "0.0.0.0/0", "10.0.0.1/32", "fd00::/64", "::/0"} {
		p := netip.MustParsePrefix(s)
		n := IPNetFromPrefix(p)
		if n.String() != s {
			t.Errorf("IPNetFromPrefix(%s) = %v", s, n)
		}
		if got := PrefixFromIPNet(n); got != p {
			t.Errorf("PrefixFromIPNet(%v) = %v, want %v", n, got, p)
		}
	}
	if IPNetFromPrefix(netip.Prefix{}) != nil {
		t.Error("IPNetFromPrefix(invalid) != nil")
	}
	if got := IPNetFromPrefix(netip.MustParsePrefix("10.244.1.7/24")); got.String() != "10.244.1.0/24" {
		t.Errorf("IPNetFromPrefix does not mask: %v", got)
	}

	// net.ParseCIDR-style values: IPv4 stored in 16 bytes with a 4-byte or
	// 16-byte mask.
	sixteen := &net.IPNet{IP: net.ParseIP("10.244.1.0"), Mask: net.CIDRMask(120, 128)}
	if got := PrefixFromIPNet(sixteen); got != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("PrefixFromIPNet(16-byte IPv4) = %v", got)
	}
	four := &net.IPNet{IP: net.ParseIP("10.244.1.0"), Mask: net.CIDRMask(24, 32)}
	if got := PrefixFromIPNet(four); got != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("PrefixFromIPNet(IPv4, 4-byte mask) = %v", got)
	}
	bad := []*net.IPNet{
		nil,
		{IP: net.IP{1, 2, 3}, Mask: net.CIDRMask(24, 32)},
		{IP: net.ParseIP("10.0.0.0"), Mask: net.IPMask{255, 0, 255, 0}}, // non-canonical
		{IP: net.ParseIP("fd00::"), Mask: net.CIDRMask(24, 32)},         // family mismatch
		{IP: net.ParseIP("10.0.0.0"), Mask: net.CIDRMask(8, 128)},       // < 96 bits
	}
	for _, n := range bad {
		if got := PrefixFromIPNet(n); got.IsValid() {
			t.Errorf("PrefixFromIPNet(%v) = %v, want invalid", n, got)
		}
	}
}

func TestAddrFromIP(t *testing.T) {
	if a, ok := AddrFromIP(net.ParseIP("10.0.0.1")); !ok || !a.Is4() || a.String() != "10.0.0.1" {
		t.Errorf("AddrFromIP(16-byte IPv4) = %v, %v", a, ok)
	}
	if a, ok := AddrFromIP(net.ParseIP("fd00::1")); !ok || a.String() != "fd00::1" {
		t.Errorf("AddrFromIP(IPv6) = %v, %v", a, ok)
	}
	if _, ok := AddrFromIP(nil); ok {
		t.Error("AddrFromIP(nil) ok")
	}
}

func TestValidateInterfaceOptions(t *testing.T) {
	v4 := InterfaceOptions{EnableIPv4: true}
	tests := []struct {
		name    string
		mod     func(o *InterfaceOptions)
		wantErr string
	}{
		{"defaults", func(o *InterfaceOptions) {}, ""},
		{"everything valid", func(o *InterfaceOptions) {
			o.EnableIPv6 = true
			o.Ifaces = []string{"eth0", "10.0.0.1"}
			o.IfaceRegex = []string{`^ens\d+$`, `^10\.`}
			o.CanReach = "fd00::1"
			o.PublicIP = netip.MustParseAddr("203.0.113.1")
			o.PublicIPv6 = netip.MustParseAddr("2001:db8::1")
		}, ""},
		{"no family", func(o *InterfaceOptions) { o.EnableIPv4 = false }, "neither IPv4 nor IPv6"},
		{"empty iface", func(o *InterfaceOptions) { o.Ifaces = []string{" "} }, "--iface must not be empty"},
		{"bad regex", func(o *InterfaceOptions) { o.IfaceRegex = []string{"eth[0"} }, `invalid --iface-regex "eth[0"`},
		{"bad can-reach", func(o *InterfaceOptions) { o.CanReach = "example.com" }, `--iface-can-reach "example.com" is not an IP address`},
		{"v6 public-ip", func(o *InterfaceOptions) { o.PublicIP = netip.MustParseAddr("2001:db8::1") }, "--public-ip 2001:db8::1 is not an IPv4"},
		{"v4 public-ipv6", func(o *InterfaceOptions) { o.PublicIPv6 = netip.MustParseAddr("192.0.2.1") }, "--public-ipv6 192.0.2.1 is not an IPv6"},
		{"mapped public-ip", func(o *InterfaceOptions) { o.PublicIP = netip.MustParseAddr("::ffff:192.0.2.1") }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := v4
			tt.mod(&o)
			err := ValidateInterfaceOptions(o)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
