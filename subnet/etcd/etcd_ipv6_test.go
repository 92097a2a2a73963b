package etcd

// Dual-stack and IPv6-only leases against a real etcd (etcdserver_test.go).

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// dualAttrs are the attributes a dual-stack vxlan host advertises.
func dualAttrs(a, a6 netip.Addr) subnet.LeaseAttrs {
	attrs := vxlanAttrs(a)
	attrs.PublicIPv6 = a6
	attrs.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:fd:00:00:0b"}`)
	return attrs
}

// TestSourceDualStack: a dual-stack host writes one key naming both
// subnets, with upstream's value; it takes the key back after a restart;
// its IPv4-only key from before IPv6 was enabled is replaced (keeping its
// IPv4 subnet) in the same transaction.
func TestSourceDualStack(t *testing.T) {
	e := startEtcd(t)
	ctx := testContext(t)
	e.put(t, configKey, defaultConf)
	old := join(t, ctx, newSource(t, e.adminProxy.addr(), Config{}), ourIP)

	e.put(t, configKey, dualConf)
	s := newSource(t, e.adminProxy.addr(), Config{})
	s.SetPublicIP(ourIP)
	s.SetPublicIPv6(ourIPv6)
	c, err := s.NetworkConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.AcquireLease(ctx, dualAttrs(ourIP, ourIPv6))
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != old.Subnet || !fits6(c, l.IPv6Subnet) || l.Name != keyName(l.Subnet, l.IPv6Subnet) || !strings.Contains(l.Name, "&fd00:") {
		t.Fatalf("lease %+v: want IPv4 subnet %s kept and a /64 of fd00::/56, named after both", l, old.Subnet)
	}
	keys := e.list(t, leaseKeys)
	if len(keys) != 1 || keys[0].Key != leaseKeys+l.Name {
		t.Fatalf("keys %+v, want only %s (the IPv4-only %s deleted)", keys, leaseKeys+l.Name, old.Name)
	}
	want := `{"PublicIP":"192.168.100.11","PublicIPv6":"fd00:100::11","BackendType":"vxlan",` +
		`"BackendData":{"VNI":1,"VtepMAC":"0a:58:c0:a8:64:0b"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:fd:00:00:0b"}}`
	if keys[0].Value != want || keys[0].Lease == 0 {
		t.Errorf("key %s = %s (etcd lease %x)\nwant %s bound to an etcd lease", keys[0].Key, keys[0].Value, keys[0].Lease, want)
	}
	if prev, err := s.PreviousAttrs(ctx); err != nil || prev == nil || string(prev.BackendV6Data) != `{"VNI":1,"VtepMAC":"0a:58:fd:00:00:0b"}` {
		t.Errorf("PreviousAttrs = %+v, %v", prev, err)
	}

	// Restart: the same key is taken back.
	l2 := join(t, ctx, newSource(t, e.adminProxy.addr(), Config{}), ourIP)
	if l2.Name != l.Name {
		t.Errorf("after restart: key %s, want %s", l2.Name, l.Name)
	}

	// Another host with a previous subnet.env takes back both its subnets.
	envFile := filepath.Join(t.TempDir(), "subnet.env")
	prev4, prev6 := netip.MustParsePrefix("10.244.200.0/24"), netip.MustParsePrefix("fd00:0:0:c8::/64")
	env := subnet.Env{Network: c.Network, Subnet: ip.FirstAddr(prev4), IPv6Network: c.IPv6Network, IPv6Subnet: ip.FirstAddr(prev6), MTU: 1450}
	if err := subnet.WriteEnvFile(envFile, env); err != nil {
		t.Fatal(err)
	}
	s3 := newSource(t, e.adminProxy.addr(), Config{SubnetFile: envFile})
	s3.SetPublicIP(otherIP)
	if _, err := s3.NetworkConfig(ctx); err != nil {
		t.Fatal(err)
	}
	l3, err := s3.AcquireLease(ctx, dualAttrs(otherIP, otherIPv6))
	if err != nil {
		t.Fatal(err)
	}
	if l3.Name != "10.244.200.0-24&fd00:0:0:c8::-64" {
		t.Errorf("host with subnet.env of %s and %s got key %s", prev4, prev6, l3.Name)
	}
}

// TestSourceIPv6Only: an IPv6-only host writes an IPv6-only key and finds it
// again by its public IPv6 address.
func TestSourceIPv6Only(t *testing.T) {
	e := startEtcd(t)
	ctx := testContext(t)
	e.put(t, configKey, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}`)
	var names []string
	for i := range 2 {
		s := newSource(t, e.adminProxy.addr(), Config{})
		s.SetPublicIPv6(ourIPv6)
		if _, err := s.NetworkConfig(ctx); err != nil {
			t.Fatal(err)
		}
		attrs := subnet.LeaseAttrs{PublicIPv6: ourIPv6, BackendType: "vxlan", BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:fd:00:00:0b"}`)}
		if i == 1 {
			prev, err := s.PreviousAttrs(ctx)
			if err != nil || prev == nil || prev.PublicIPv6 != ourIPv6 {
				t.Errorf("PreviousAttrs after restart = %+v, %v", prev, err)
			}
		}
		l, err := s.AcquireLease(ctx, attrs)
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet.IsValid() || !strings.HasPrefix(l.Name, "fd00:0:0:") || !strings.HasSuffix(l.Name, "::-64") {
			t.Fatalf("lease %+v: want an IPv6-only key", l)
		}
		names = append(names, l.Name)
	}
	keys := e.list(t, leaseKeys)
	want := `{"PublicIP":null,"PublicIPv6":"fd00:100::11","BackendType":"vxlan","BackendData":null,"BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:fd:00:00:0b"}}`
	if names[0] != names[1] || len(keys) != 1 || keys[0].Value != want {
		t.Errorf("keys %v after a restart: %+v\nwant one key with value %s", names, keys, want)
	}
}
