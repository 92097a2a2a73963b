package etcd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/flanneld/flanneld/subnet"
)

// etcdConfig parses net-conf JSON and applies the etcd-mode defaults.
func etcdConfig(t testing.TB, conf string) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyEtcdDefaults(); err != nil {
		t.Fatal(err)
	}
	return c
}

const defaultConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

var (
	ourIP   = netip.MustParseAddr("192.168.100.11")
	otherIP = netip.MustParseAddr("192.168.100.12")
)

// leased is a key bound to an etcd lease; reservation one without.
func leased(sn string, publicIP netip.Addr) existing {
	p := netip.MustParsePrefix(sn)
	return existing{lease: subnet.Lease{Name: keyName(p, netip.Prefix{}), Subnet: p,
		Attrs: subnet.LeaseAttrs{PublicIP: publicIP, BackendType: "vxlan"}}, leaseID: 0x1234}
}

func reservation(sn string, publicIP netip.Addr) existing {
	p := netip.MustParsePrefix(sn)
	return existing{lease: subnet.Lease{Name: keyName(p, netip.Prefix{}), Subnet: p,
		Attrs: subnet.LeaseAttrs{PublicIP: publicIP}}, reserved: true}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

func TestChooseSubnetTakesBackOwnLease(t *testing.T) {
	c := etcdConfig(t, defaultConf)
	all := []existing{
		leased("10.244.3.0/24", otherIP),
		leased("10.244.7.0/24", ourIP),
	}
	// The lease with our public IP wins over a free previous subnet.
	ch, err := chooseSubnet(c, all, ourIP, netip.MustParsePrefix("10.244.9.0/24"), newRand(1))
	if err != nil {
		t.Fatal(err)
	}
	if ch.subnet != netip.MustParsePrefix("10.244.7.0/24") || ch.reuse == nil || ch.reuse.lease.Name != "10.244.7.0-24" {
		t.Errorf("choice = %v (reuse %+v), want 10.244.7.0/24 reusing key 10.244.7.0-24", ch.subnet, ch.reuse)
	}
}

func TestChooseSubnetTakesOwnReservation(t *testing.T) {
	c := etcdConfig(t, defaultConf)
	all := []existing{reservation("10.244.5.0/24", ourIP), leased("10.244.6.0/24", otherIP)}
	ch, err := chooseSubnet(c, all, ourIP, netip.Prefix{}, newRand(1))
	if err != nil {
		t.Fatal(err)
	}
	if ch.subnet != netip.MustParsePrefix("10.244.5.0/24") || ch.reuse == nil || !ch.reuse.reserved {
		t.Errorf("choice = %v (reuse %+v), want the reservation 10.244.5.0/24", ch.subnet, ch.reuse)
	}
}

func TestChooseSubnetPrevious(t *testing.T) {
	c := etcdConfig(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.100.0"}`)
	all := []existing{
		leased("10.244.20.0/24", otherIP),
		reservation("10.244.21.0/24", netip.MustParseAddr("192.168.100.50")),
		reservation("10.244.32.0/22", netip.MustParseAddr("192.168.100.51")), // 10.244.32-35
	}
	for _, tc := range []struct {
		previous string
		reused   bool
		why      string
	}{
		{"10.244.50.0/24", true, "free and in range"},
		{"10.244.50.1/24", true, "subnet.env holds the first address, not the network address"},
		{"10.244.20.0/24", false, "leased by another host"},
		{"10.244.21.0/24", false, "reserved"},
		{"10.244.33.0/24", false, "inside a /22 reservation"},
		{"10.244.9.0/24", false, "below SubnetMin"},
		{"10.244.101.0/24", false, "above SubnetMax"},
		{"10.245.50.0/24", false, "outside Network"},
		{"10.244.50.0/25", false, "not SubnetLen long"},
		{"10.244.48.0/20", false, "not SubnetLen long"},
	} {
		prev := netip.MustParsePrefix(tc.previous)
		for seed := range uint64(20) {
			ch, err := chooseSubnet(c, all, ourIP, prev, newRand(seed))
			if err != nil {
				t.Fatalf("previous %s: %v", prev, err)
			}
			if ch.reuse != nil {
				t.Errorf("previous %s: reuses key %s of another host", prev, ch.reuse.lease.Name)
			}
			if got := ch.subnet == prev.Masked(); got != tc.reused {
				t.Errorf("previous %s (%s): chose %s", prev, tc.why, ch.subnet)
				break
			}
			assertFreeInRange(t, c, all, ch.subnet)
		}
	}
}

// TestChooseSubnetRandomFree: without a lease or a usable previous subnet
// the choice is a random free subnet of SubnetLen in [SubnetMin, SubnetMax].
func TestChooseSubnetRandomFree(t *testing.T) {
	c := etcdConfig(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.29.0"}`)
	var all []existing
	for i := 10; i <= 29; i += 2 {
		all = append(all, leased(fmt.Sprintf("10.244.%d.0/24", i), netip.AddrFrom4([4]byte{192, 168, 100, byte(100 + i)})))
	}
	all = append(all, reservation("10.244.11.0/24", netip.MustParseAddr("192.168.100.50")))
	all = append(all, reservation("10.244.16.0/21", netip.MustParseAddr("192.168.100.51"))) // 16..23
	// Free: 13, 15, 25, 27, 29.
	want := map[netip.Prefix]bool{}
	for _, i := range []int{13, 15, 25, 27, 29} {
		want[netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))] = true
	}
	seen := map[netip.Prefix]int{}
	for seed := range uint64(500) {
		ch, err := chooseSubnet(c, all, ourIP, netip.Prefix{}, newRand(seed))
		if err != nil {
			t.Fatal(err)
		}
		if !want[ch.subnet] || ch.reuse != nil {
			t.Fatalf("seed %d: chose %s (reuse %v); the free subnets are %v", seed, ch.subnet, ch.reuse, want)
		}
		seen[ch.subnet]++
	}
	if len(seen) != len(want) {
		t.Errorf("500 choices used only %v of the free subnets %v: not random", seen, want)
	}
}

// TestChooseSubnetDefaultRange: the default range skips the network's
// first subnet and ends with its last.
func TestChooseSubnetDefaultRange(t *testing.T) {
	c := etcdConfig(t, `{"Network":"10.10.0.0/22","SubnetLen":24}`) // subnets .0 .. .3, default min .1
	seen := map[netip.Prefix]bool{}
	for seed := range uint64(200) {
		ch, err := chooseSubnet(c, nil, ourIP, netip.Prefix{}, newRand(seed))
		if err != nil {
			t.Fatal(err)
		}
		seen[ch.subnet] = true
	}
	want := map[netip.Prefix]bool{
		netip.MustParsePrefix("10.10.1.0/24"): true,
		netip.MustParsePrefix("10.10.2.0/24"): true,
		netip.MustParsePrefix("10.10.3.0/24"): true,
	}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("chosen subnets = %v, want %v", seen, want)
	}
}

func TestChooseSubnetOutOfSubnets(t *testing.T) {
	c := etcdConfig(t, `{"Network":"10.10.0.0/22","SubnetLen":24}`)
	all := []existing{
		leased("10.10.1.0/24", otherIP),
		reservation("10.10.2.0/24", netip.MustParseAddr("192.168.100.50")),
		leased("10.10.3.0/24", netip.MustParseAddr("192.168.100.13")),
	}
	_, err := chooseSubnet(c, all, ourIP, netip.MustParsePrefix("10.10.2.0/24"), newRand(1))
	if !errors.Is(err, ErrOutOfSubnets) {
		t.Errorf("full network: err = %v, want ErrOutOfSubnets", err)
	}
	// A bigger reservation covering the whole range fills it too.
	all = []existing{reservation("10.10.0.0/22", netip.MustParseAddr("192.168.100.50"))}
	if _, err := chooseSubnet(c, all, ourIP, netip.Prefix{}, newRand(1)); !errors.Is(err, ErrOutOfSubnets) {
		t.Errorf("range covered by a /22 reservation: err = %v, want ErrOutOfSubnets", err)
	}
	// Our own lease is still taken back when the network is full.
	all = append(all, leased("10.10.1.0/24", ourIP))
	if ch, err := chooseSubnet(c, all[1:], ourIP, netip.Prefix{}, newRand(1)); err != nil || ch.subnet != netip.MustParsePrefix("10.10.1.0/24") {
		t.Errorf("full network with our lease: %v, %v; want 10.10.1.0/24", ch.subnet, err)
	}
}

// TestChooseSubnetNeverTaken: with random leases and reservations of
// various lengths, the choice never overlaps any of them.
func TestChooseSubnetNeverTaken(t *testing.T) {
	c := etcdConfig(t, `{"Network":"10.244.0.0/16","SubnetLen":26}`)
	r := newRand(42)
	for round := range 300 {
		var all []existing
		for range r.IntN(200) {
			bits := []int{26, 26, 26, 24, 25, 27, 28}[r.IntN(7)]
			a := netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(256)), byte(r.IntN(256))})
			p := netip.PrefixFrom(a, bits).Masked()
			if r.IntN(3) == 0 {
				all = append(all, reservation(p.String(), netip.MustParseAddr("192.168.100.50")))
			} else {
				all = append(all, leased(p.String(), netip.AddrFrom4([4]byte{192, 168, 101, byte(r.IntN(250))})))
			}
		}
		prev := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(256)), byte(r.IntN(4) * 64)}), 26)
		ch, err := chooseSubnet(c, all, ourIP, prev, newRand(uint64(round)))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		assertFreeInRange(t, c, all, ch.subnet)
	}
}

// assertFreeInRange checks that sn is a SubnetLen subnet in
// [SubnetMin, SubnetMax] overlapping no existing key.
func assertFreeInRange(t *testing.T, c *subnet.Config, all []existing, sn netip.Prefix) {
	t.Helper()
	if sn.Bits() != c.SubnetLen || sn.Masked() != sn || !c.Network.Contains(sn.Addr()) ||
		sn.Addr().Less(c.SubnetMin) || c.SubnetMax.Less(sn.Addr()) {
		t.Fatalf("chose %s: not a /%d in [%s, %s] of %s", sn, c.SubnetLen, c.SubnetMin, c.SubnetMax, c.Network)
	}
	for _, e := range all {
		if e.lease.Subnet.Overlaps(sn) {
			t.Fatalf("chose %s, which overlaps key %s (reserved %v)", sn, e.lease.Name, e.reserved)
		}
	}
}

// TestChooseSubnetOwnLeaseNoLongerFits: after the network configuration
// changed, this host's old lease is not taken back but replaced (and
// deleted with the new lease's write); a reservation is left alone.
func TestChooseSubnetOwnLeaseNoLongerFits(t *testing.T) {
	c := etcdConfig(t, `{"Network":"10.50.0.0/16","SubnetLen":24}`)
	for _, tc := range []struct {
		name  string
		e     existing
		stale bool
	}{
		{"lease outside Network", leased("10.244.3.0/24", ourIP), true},
		{"lease of another length", leased("10.50.3.0/25", ourIP), true},
		{"lease below SubnetMin", leased("10.50.0.0/24", ourIP), true},
		{"reservation outside Network", reservation("10.244.3.0/24", ourIP), false},
	} {
		all := []existing{tc.e, leased("10.50.9.0/24", otherIP)}
		ch, err := chooseSubnet(c, all, ourIP, netip.MustParsePrefix("10.244.3.0/24"), newRand(1))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if ch.reuse != nil {
			t.Errorf("%s: takes back %s", tc.name, ch.reuse.lease.Name)
		}
		assertFreeInRange(t, c, all, ch.subnet)
		if got := len(ch.stale) == 1 && ch.stale[0].lease.Name == tc.e.lease.Name; got != tc.stale {
			t.Errorf("%s: stale = %v, want the old key deleted: %v", tc.name, ch.stale, tc.stale)
		}
	}
}
