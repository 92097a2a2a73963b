package cni

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/subnet"
)

// The plugin reads back every subnet.env flanneld writes.
func TestParseSubnetEnvReadsWhatFlanneldWrites(t *testing.T) {
	e := testEnv()
	e.IPv6Network = netip.MustParsePrefix("fd00:10:244::/56")
	e.IPv6Subnet = netip.MustParsePrefix("fd00:10:244:1::1/64")
	got := pluginEnv(t, e)
	want := SubnetEnv{
		Networks:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Subnet:       netip.MustParsePrefix("10.244.1.0/24"),
		IPv6Networks: []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")},
		IPv6Subnet:   netip.MustParsePrefix("fd00:10:244:1::/64"),
		MTU:          1450,
		IPMasq:       true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	v6only := subnet.Env{IPv6Network: e.IPv6Network, IPv6Subnet: e.IPv6Subnet, MTU: 1400}
	if got := pluginEnv(t, v6only); got.Subnet.IsValid() || len(got.Networks) != 0 || got.IPMasq {
		t.Fatalf("IPv6-only: %+v", got)
	}
}

func TestParseSubnetEnvLenient(t *testing.T) {
	got, err := ParseSubnetEnv(strings.NewReader("# written by flanneld\n\n  FLANNEL_NETWORK = \"10.1.2.3/16, 192.168.0.0/16\"\n" +
		"FLANNEL_SUBNET='10.1.17.1/24'\nOTHER=x\nFLANNEL_MTU=1400\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("192.168.0.0/16")}
	if !reflect.DeepEqual(got.Networks, want) || got.MTU != 1472 || got.IPMasq {
		t.Fatalf("got %+v", got)
	}
}

// Every error is one line, naming the key at fault. A line without "=" is
// an error here; upstream's plugin panics on one that names a FLANNEL_ key.
func TestParseSubnetEnvErrors(t *testing.T) {
	const ok4 = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
	const tail = "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	tests := []struct{ text, want string }{
		{"FLANNEL_MTU\n" + ok4 + tail, `line 1: expected KEY=VALUE, got "FLANNEL_MTU"`},
		{"", "missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"},
		{ok4 + "FLANNEL_MTU=1472\n", "missing FLANNEL_IPMASQ"},
		{"FLANNEL_NETWORK=10.1.0.0/16\n" + tail, "missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET"},
		{"FLANNEL_NETWORK=10.1.0.0/16,\n", `line 1: FLANNEL_NETWORK "10.1.0.0/16," has an empty entry`},
		{"FLANNEL_NETWORK=10.1.0.0/16,bogus\n", `line 1: FLANNEL_NETWORK "bogus" is not a CIDR`},
		{ok4 + "FLANNEL_MTU=big\n", `line 3: FLANNEL_MTU "big" is not a number`},
		{ok4 + "FLANNEL_IPMASQ=maybe\n", `line 3: FLANNEL_IPMASQ "maybe" is not true or false`},
		{ok4 + "FLANNEL_MTU=0\nFLANNEL_IPMASQ=true\n", "FLANNEL_MTU 0 is not between 1 and 65535"},
		{"FLANNEL_NETWORK=10.2.0.0/16,10.3.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n" + tail,
			"FLANNEL_SUBNET 10.1.17.0/24 is outside FLANNEL_NETWORK 10.2.0.0/16,10.3.0.0/16"},
		{"FLANNEL_NETWORK=10.1.0.0/16,fc00::/48\nFLANNEL_SUBNET=10.1.17.1/24\n" + tail,
			"FLANNEL_NETWORK 10.1.0.0/16,fc00::/48 is not a list of IPv4 networks"},
		{"FLANNEL_NETWORK=fc00::/48\nFLANNEL_SUBNET=fc00::1/64\n" + tail, "FLANNEL_SUBNET fc00::/64 is not an IPv4 subnet"},
		{ok4 + "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_MTU=0\nFLANNEL_IPMASQ=true\n",
			"FLANNEL_IPV6_NETWORK is set but FLANNEL_IPV6_SUBNET is not; FLANNEL_MTU 0 is not between 1 and 65535"},
	}
	for _, tt := range tests {
		_, err := ParseSubnetEnv(strings.NewReader(tt.text))
		if err == nil || err.Error() != tt.want {
			t.Errorf("%q:\n got %v\nwant %s", tt.text, err, tt.want)
		}
	}
}
