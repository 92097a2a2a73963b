package etcd

import (
	"net/netip"
	"testing"
)

// FuzzLeaseFromKV checks that leaseFromKV never panics on what another
// host (or an operator) put in etcd, and that whatever it accepts is
// written back by keyName and marshalValue in a form it reads the same way.
func FuzzLeaseFromKV(f *testing.F) {
	for _, s := range []struct{ name, value string }{
		{"10.244.1.0-24", upstreamVXLAN},
		{"10.244.5.0-24", `{"PublicIP":"192.168.100.50"}`},
		{"10.244.1.0-24&fd00:0:0:1::-64", `{"PublicIP":"192.168.100.11","PublicIPv6":"fd00:100::11","BackendType":"vxlan","BackendData":{"VNI":1},"BackendV6Data":{"VNI":1}}`},
		{"10.244.2.0-24", `{"PublicIP":"192.168.100.12","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}`},
		{"10.244.1.1-24", `{}`},
		{"10.244.1.0-24&10.244.2.0-24", `{"PublicIP":"1.2.3.4"}`},
		{"fd00::-64", `{"PublicIPv6":"fd00::1"}`},
		{"10.244.3.0-24", `{"PublicIP":"fd00::1","BackendData":[1,{"a":"\u00e9"}]}`},
	} {
		f.Add(s.name, []byte(s.value))
	}
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		l, err := leaseFromKV(name, data, 1)
		if err != nil {
			return
		}
		if !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid() {
			t.Fatalf("accepted key %q without a subnet", name)
		}
		for _, p := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
			if p.IsValid() && p.Masked() != p {
				t.Fatalf("key %q: subnet %s is not a network address", name, p)
			}
		}
		if l.Subnet.IsValid() && !l.Subnet.Addr().Is4() {
			t.Fatalf("key %q: IPv4 subnet %s", name, l.Subnet)
		}
		if l.IPv6Subnet.IsValid() && l.IPv6Subnet.Addr().Is4() {
			t.Fatalf("key %q: IPv6 subnet %s", name, l.IPv6Subnet)
		}
		if a := l.Attrs.PublicIP; a.IsValid() && !a.Is4() {
			t.Fatalf("value %q: IPv4 public IP %s", data, a)
		}
		if a := l.Attrs.PublicIPv6; a.IsValid() && a.Is4() {
			t.Fatalf("value %q: IPv6 public IP %s", data, a)
		}

		// Written back, the lease reads the same, and a second write is
		// byte for byte the first.
		name2 := keyName(l.Subnet, l.IPv6Subnet)
		value, err := marshalValue(l.Attrs)
		if err != nil {
			t.Fatalf("marshalValue(%+v): %v", l.Attrs, err)
		}
		l2, err := leaseFromKV(name2, value, 1)
		if err != nil {
			t.Fatalf("written back as %q %s, the lease does not read: %v", name2, value, err)
		}
		if l2.Subnet != l.Subnet || l2.IPv6Subnet != l.IPv6Subnet || l2.Attrs.PublicIP != l.Attrs.PublicIP ||
			l2.Attrs.PublicIPv6 != l.Attrs.PublicIPv6 || l2.Attrs.BackendType != l.Attrs.BackendType {
			t.Fatalf("round trip changed the lease:\n%+v\n%+v", l, l2)
		}
		value2, err := marshalValue(l2.Attrs)
		if err != nil || string(value2) != string(value) {
			t.Fatalf("second write differs: %s vs %s (%v)", value, value2, err)
		}
	})
}
