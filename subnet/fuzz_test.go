package subnet

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
)

// FuzzParseConfig checks that ParseConfig never panics, that whatever it
// accepts survives MarshalJSON and a second parse unchanged, and that the
// etcd defaults and the subnet check hold up on it.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}`,
		`{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "SubnetLen": 26}`,
		`{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/120", "IPv6SubnetMin": "fd00::10"}`,
		`{"network": "10.0.0.0/8", "backend": {"type": "HOST-GW", "x": [1, {"y": null}]}}`,
		`{"Network": "10.244.1.0/16"}`,
		`[]`,
		`{"Network": "10.244.0.0/16",}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		assertConfigRoundTrips(t, c)

		etcd := *c
		if etcd.ApplyEtcdDefaults() == nil {
			assertConfigRoundTrips(t, &etcd)
			again := etcd
			if err := again.ApplyEtcdDefaults(); err != nil || !reflect.DeepEqual(again, etcd) {
				t.Fatalf("ApplyEtcdDefaults is not idempotent: %+v, %v", again, err)
			}
			if etcd.EnableIPv4 {
				if err := etcd.CheckSubnet(netip.PrefixFrom(etcd.SubnetMin, etcd.SubnetLen)); err != nil {
					t.Fatalf("SubnetMin's subnet fails CheckSubnet: %v", err)
				}
			}
		}
		for _, sn := range []netip.Prefix{c.Network, c.IPv6Network, {}, netip.MustParsePrefix("0.0.0.0/0")} {
			_ = c.CheckSubnet(sn)
		}
	})
}

// assertConfigRoundTrips checks that c encodes to JSON that parses back to c.
func assertConfigRoundTrips(t *testing.T, c *Config) {
	t.Helper()
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatalf("Marshal(%+v): %v", c, err)
	}
	back, err := ParseConfig(out)
	if err != nil {
		t.Fatalf("re-parsing %s: %v", out, err)
	}
	want := *c
	want.Backend = canonicalJSON(t, want.Backend)
	back.Backend = canonicalJSON(t, back.Backend)
	if !reflect.DeepEqual(*back, want) {
		t.Fatalf("round trip through %s:\ngot  %+v\nwant %+v", out, *back, want)
	}
}

// canonicalJSON compacts raw and escapes HTML characters in it, as
// json.Marshal does to the output of a MarshalJSON method.
func canonicalJSON(t *testing.T, raw json.RawMessage) json.RawMessage {
	t.Helper()
	if len(raw) == 0 {
		return raw
	}
	var compact, escaped bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		t.Fatalf("Backend %q is not valid JSON: %v", raw, err)
	}
	json.HTMLEscape(&escaped, compact.Bytes())
	return escaped.Bytes()
}

// FuzzParseEnv checks that ParseEnv never panics and that whatever it
// accepts is written back by FormatEnv as text that parses to the same Env.
func FuzzParseEnv(f *testing.F) {
	for _, s := range []string{
		referenceEnvText,
		dualStackEnvText,
		ipv6OnlyEnvText,
		"# c\n\nFLANNEL_NETWORK = '10.244.0.0/16'\r\nFLANNEL_SUBNET=\"10.244.1.1/24\"\nFLANNEL_MTU=+9000\nFLANNEL_IPMASQ=T\n",
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET\n",
		"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseEnv(bytes.NewReader(data))
		if err != nil {
			return
		}
		text, err := FormatEnv(e)
		if err != nil {
			t.Fatalf("FormatEnv(%+v) of a parsed Env: %v", e, err)
		}
		back, err := ParseEnv(bytes.NewReader(text))
		if err != nil {
			t.Fatalf("re-parsing %q: %v", text, err)
		}
		if back != e {
			t.Fatalf("round trip through %q: got %+v, want %+v", text, back, e)
		}
	})
}
