package etcd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/ip"
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
	ch, err := chooseSubnet4(c, all, ourIP, netip.MustParsePrefix("10.244.9.0/24"), newRand(1))
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
	ch, err := chooseSubnet4(c, all, ourIP, netip.Prefix{}, newRand(1))
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
			ch, err := chooseSubnet4(c, all, ourIP, prev, newRand(seed))
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
		ch, err := chooseSubnet4(c, all, ourIP, netip.Prefix{}, newRand(seed))
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
		ch, err := chooseSubnet4(c, nil, ourIP, netip.Prefix{}, newRand(seed))
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
	_, err := chooseSubnet4(c, all, ourIP, netip.MustParsePrefix("10.10.2.0/24"), newRand(1))
	if !errors.Is(err, ErrOutOfSubnets) {
		t.Errorf("full network: err = %v, want ErrOutOfSubnets", err)
	}
	// A bigger reservation covering the whole range fills it too.
	all = []existing{reservation("10.10.0.0/22", netip.MustParseAddr("192.168.100.50"))}
	if _, err := chooseSubnet4(c, all, ourIP, netip.Prefix{}, newRand(1)); !errors.Is(err, ErrOutOfSubnets) {
		t.Errorf("range covered by a /22 reservation: err = %v, want ErrOutOfSubnets", err)
	}
	// Our own lease is still taken back when the network is full.
	all = append(all, leased("10.10.1.0/24", ourIP))
	if ch, err := chooseSubnet4(c, all[1:], ourIP, netip.Prefix{}, newRand(1)); err != nil || ch.subnet != netip.MustParsePrefix("10.10.1.0/24") {
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
		ch, err := chooseSubnet4(c, all, ourIP, prev, newRand(uint64(round)))
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
		ch, err := chooseSubnet4(c, all, ourIP, netip.MustParsePrefix("10.244.3.0/24"), newRand(1))
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

// chooseSubnet4 is chooseSubnet for an IPv4-only host.
func chooseSubnet4(c *subnet.Config, all []existing, publicIP netip.Addr, previous netip.Prefix, rng *rand.Rand) (choice, error) {
	return chooseSubnet(c, all, hostIPs{v4: publicIP}, previous, netip.Prefix{}, rng)
}

const dualConf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}`

var (
	ourIPv6   = netip.MustParseAddr("fd00:100::11")
	otherIPv6 = netip.MustParseAddr("fd00:100::12")
	ourHost   = hostIPs{v4: ourIP, v6: ourIPv6}
	ourHost6  = hostIPs{v6: ourIPv6}
)

// leasedKey is a key bound to an etcd lease naming v4 and/or v6 ("" for
// none), with the public IPs pub4 and pub6 (zero for none).
func leasedKey(v4, v6 string, pub4, pub6 netip.Addr) existing {
	var p4, p6 netip.Prefix
	if v4 != "" {
		p4 = netip.MustParsePrefix(v4)
	}
	if v6 != "" {
		p6 = netip.MustParsePrefix(v6)
	}
	return existing{lease: subnet.Lease{Name: keyName(p4, p6), Subnet: p4, IPv6Subnet: p6,
		Attrs: subnet.LeaseAttrs{PublicIP: pub4, PublicIPv6: pub6, BackendType: "vxlan"}}, leaseID: 0x1234}
}

func reservedKey(v4, v6 string, pub4, pub6 netip.Addr) existing {
	e := leasedKey(v4, v6, pub4, pub6)
	e.reserved, e.leaseID, e.lease.Attrs.BackendType = true, 0, ""
	return e
}

// assertFree6 checks that sn is an IPv6SubnetLen subnet in [IPv6SubnetMin,
// IPv6SubnetMax] overlapping no existing key's IPv6 subnet.
func assertFree6(t *testing.T, c *subnet.Config, all []existing, sn netip.Prefix) {
	t.Helper()
	if !fits6(c, sn) {
		t.Fatalf("chose %s: not a /%d in [%s, %s] of %s", sn, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax, c.IPv6Network)
	}
	for _, e := range all {
		if e.lease.IPv6Subnet.Overlaps(sn) {
			t.Fatalf("chose %s, which overlaps key %s (reserved %v)", sn, e.lease.Name, e.reserved)
		}
	}
}

func TestChooseSubnetDualStack(t *testing.T) {
	c := etcdConfig(t, dualConf)
	all := []existing{
		leasedKey("10.244.3.0/24", "fd00:0:0:3::/64", otherIP, otherIPv6),
		reservedKey("10.244.4.0/24", "fd00:0:0:4::/64", netip.MustParseAddr("192.168.100.50"), netip.Addr{}),
	}
	for seed := range uint64(100) {
		ch, err := chooseSubnet(c, all, ourHost, netip.Prefix{}, netip.Prefix{}, newRand(seed))
		if err != nil {
			t.Fatal(err)
		}
		if ch.reuse != nil || len(ch.stale) != 0 {
			t.Fatalf("choice %+v reuses or deletes a key", ch)
		}
		assertFreeInRange(t, c, all, ch.subnet)
		assertFree6(t, c, all, ch.ipv6Subnet)
		if name := keyName(ch.subnet, ch.ipv6Subnet); !strings.Contains(name, "&") {
			t.Fatalf("key name %s is not dual-stack", name)
		}
	}

	// Our dual-stack lease is taken back, by its IPv4 public IP.
	all = append(all, leasedKey("10.244.7.0/24", "fd00:0:0:7::/64", ourIP, ourIPv6))
	ch, err := chooseSubnet(c, all, ourHost, netip.MustParsePrefix("10.244.9.0/24"), netip.MustParsePrefix("fd00:0:0:9::/64"), newRand(1))
	if err != nil {
		t.Fatal(err)
	}
	if ch.reuse == nil || ch.reuse.lease.Name != "10.244.7.0-24&fd00:0:0:7::-64" ||
		ch.subnet != netip.MustParsePrefix("10.244.7.0/24") || ch.ipv6Subnet != netip.MustParsePrefix("fd00:0:0:7::/64") {
		t.Errorf("choice = %s %s (reuse %+v), want our key 10.244.7.0-24&fd00:0:0:7::-64", ch.subnet, ch.ipv6Subnet, ch.reuse)
	}
}

// TestChooseSubnetDualStackPrevious: each family takes back its previous
// subnet when it is free, independently of the other.
func TestChooseSubnetDualStackPrevious(t *testing.T) {
	c := etcdConfig(t, dualConf)
	all := []existing{
		leasedKey("10.244.3.0/24", "fd00:0:0:3::/64", otherIP, otherIPv6),
		reservedKey("", "fd00:0:0:10::/62", netip.Addr{}, netip.MustParseAddr("fd00:100::50")), // :10 .. :13
	}
	for _, tc := range []struct {
		prev4, prev6   string
		reuse4, reuse6 bool
	}{
		{"10.244.9.0/24", "fd00:0:0:9::/64", true, true},
		{"10.244.9.1/24", "fd00:0:0:9::1/64", true, true}, // subnet.env holds first addresses
		{"10.244.3.0/24", "fd00:0:0:9::/64", false, true},
		{"10.244.9.0/24", "fd00:0:0:3::/64", true, false},
		{"10.244.9.0/24", "fd00:0:0:12::/64", true, false}, // inside the /62 reservation
		{"10.244.9.0/24", "fd00:0:0:0::/64", true, false},  // below IPv6SubnetMin
		{"10.244.9.0/24", "fd00:0:1:9::/64", true, false},  // outside IPv6Network
		{"10.244.9.0/24", "fd00:0:0:9::/80", true, false},  // not IPv6SubnetLen long
		{"", "fd00:0:0:9::/64", false, true},
	} {
		var p4, p6 netip.Prefix
		if tc.prev4 != "" {
			p4 = netip.MustParsePrefix(tc.prev4)
		}
		p6 = netip.MustParsePrefix(tc.prev6)
		for seed := range uint64(10) {
			ch, err := chooseSubnet(c, all, ourHost, p4, p6, newRand(seed))
			if err != nil {
				t.Fatal(err)
			}
			assertFreeInRange(t, c, all, ch.subnet)
			assertFree6(t, c, all, ch.ipv6Subnet)
			if got := ch.subnet == p4.Masked(); got != tc.reuse4 {
				t.Errorf("previous %s: chose %s", tc.prev4, ch.subnet)
			}
			if got := ch.ipv6Subnet == p6.Masked(); got != tc.reuse6 {
				t.Errorf("previous %s: chose %s", tc.prev6, ch.ipv6Subnet)
			}
		}
	}
}

func TestChooseSubnetIPv6Only(t *testing.T) {
	c := etcdConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}`)
	all := []existing{
		leasedKey("", "fd00:0:0:3::/64", netip.Addr{}, otherIPv6),
		leasedKey("", "fd00:0:0:5::/64", netip.Addr{}, ourIPv6),
	}
	// Taken back by PublicIPv6.
	ch, err := chooseSubnet(c, all, ourHost6, netip.Prefix{}, netip.MustParsePrefix("fd00:0:0:9::/64"), newRand(1))
	if err != nil {
		t.Fatal(err)
	}
	if ch.reuse == nil || ch.reuse.lease.Name != "fd00:0:0:5::-64" || ch.subnet.IsValid() {
		t.Errorf("choice = %s %s (reuse %+v), want our key fd00:0:0:5::-64", ch.subnet, ch.ipv6Subnet, ch.reuse)
	}
	// Without it: the previous subnet, else a random one, never an IPv4 one.
	all = all[:1]
	ch, err = chooseSubnet(c, all, ourHost6, netip.Prefix{}, netip.MustParsePrefix("fd00:0:0:9::1/64"), newRand(1))
	if err != nil || ch.ipv6Subnet != netip.MustParsePrefix("fd00:0:0:9::/64") || ch.subnet.IsValid() || ch.reuse != nil {
		t.Errorf("choice = %s %s (reuse %+v) %v, want the previous fd00:0:0:9::/64", ch.subnet, ch.ipv6Subnet, ch.reuse, err)
	}
	if name := keyName(ch.subnet, ch.ipv6Subnet); name != "fd00:0:0:9::-64" {
		t.Errorf("key name %q", name)
	}
	seen := map[netip.Prefix]bool{}
	for seed := range uint64(200) {
		ch, err := chooseSubnet(c, all, ourHost6, netip.Prefix{}, netip.Prefix{}, newRand(seed))
		if err != nil {
			t.Fatal(err)
		}
		assertFree6(t, c, all, ch.ipv6Subnet)
		seen[ch.ipv6Subnet] = true
	}
	if len(seen) < 100 {
		t.Errorf("200 choices in 254 free subnets gave only %d distinct ones: not random", len(seen))
	}
}

// TestChooseSubnetFamilyChanged: this host's key of another set of families
// (IPv4-only before IPv6 was enabled, dual-stack after IPv4 was disabled) is
// replaced, its subnets kept when they still fit, and deleted with the new
// key's write.
func TestChooseSubnetFamilyChanged(t *testing.T) {
	dual := etcdConfig(t, dualConf)
	only6 := etcdConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}`)
	only4 := etcdConfig(t, defaultConf)
	for _, tc := range []struct {
		name       string
		c          *subnet.Config
		host       hostIPs
		old        existing
		want4      string
		want6      string
		prev6      string
		staleCount int
	}{
		{"IPv4 to dual-stack", dual, ourHost, leasedKey("10.244.7.0/24", "", ourIP, netip.Addr{}), "10.244.7.0/24", "fd00:0:0:9::/64", "fd00:0:0:9::/64", 1},
		{"IPv6-only to dual-stack", dual, ourHost, leasedKey("", "fd00:0:0:7::/64", netip.Addr{}, ourIPv6), "", "fd00:0:0:7::/64", "", 1},
		{"dual-stack to IPv6-only", only6, ourHost6, leasedKey("10.244.7.0/24", "fd00:0:0:7::/64", ourIP, ourIPv6), "", "fd00:0:0:7::/64", "", 1},
		{"dual-stack to IPv4", only4, hostIPs{v4: ourIP}, leasedKey("10.244.7.0/24", "fd00:0:0:7::/64", ourIP, ourIPv6), "10.244.7.0/24", "", "", 1},
		{"reservation IPv4 in dual-stack", dual, ourHost, reservedKey("10.244.7.0/24", "", ourIP, netip.Addr{}), "", "", "", 0},
	} {
		all := []existing{tc.old, leasedKey("10.244.3.0/24", "fd00:0:0:3::/64", otherIP, otherIPv6)}
		var prev6 netip.Prefix
		if tc.prev6 != "" {
			prev6 = netip.MustParsePrefix(tc.prev6)
		}
		ch, err := chooseSubnet(tc.c, all, tc.host, netip.Prefix{}, prev6, newRand(1))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if ch.reuse != nil {
			t.Errorf("%s: takes back %s", tc.name, ch.reuse.lease.Name)
		}
		if len(ch.stale) != tc.staleCount || (tc.staleCount == 1 && ch.stale[0].lease.Name != tc.old.lease.Name) {
			t.Errorf("%s: stale = %v, want %d", tc.name, ch.stale, tc.staleCount)
		}
		if tc.c.EnableIPv4 != ch.subnet.IsValid() || tc.c.EnableIPv6 != ch.ipv6Subnet.IsValid() {
			t.Errorf("%s: chose %s %s: not the families of the configuration", tc.name, ch.subnet, ch.ipv6Subnet)
		}
		if tc.want4 != "" && ch.subnet != netip.MustParsePrefix(tc.want4) {
			t.Errorf("%s: IPv4 subnet %s, want %s kept", tc.name, ch.subnet, tc.want4)
		}
		if tc.want6 != "" && ch.ipv6Subnet != netip.MustParsePrefix(tc.want6) {
			t.Errorf("%s: IPv6 subnet %s, want %s kept", tc.name, ch.ipv6Subnet, tc.want6)
		}
		if tc.staleCount == 0 {
			// The reservation still holds its subnet.
			if ch.subnet == tc.old.lease.Subnet {
				t.Errorf("%s: chose the reserved %s", tc.name, ch.subnet)
			}
		}
	}
}

// TestChooseSubnetHugeIPv6Range: a range of 2^63 subnets (and one of
// 2^118) is never enumerated, and the choice is random.
func TestChooseSubnetHugeIPv6Range(t *testing.T) {
	for _, conf := range []string{
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"8000::/1","IPv6SubnetLen":64,"IPv6SubnetMin":"8000::","IPv6SubnetMax":"ffff:ffff:ffff:ffff::"}`,
		`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/8","IPv6SubnetLen":126}`,
	} {
		c := etcdConfig(t, conf)
		var all []existing
		r := newRand(7)
		for i := range 500 {
			a := netip.AddrFrom16([16]byte{0xfd, byte(r.IntN(256)), 0, 0, 0, 0, 0, byte(i >> 8), byte(i)}) // dense near the start
			all = append(all, leasedKey("", netip.PrefixFrom(a, c.IPv6SubnetLen).Masked().String(), netip.Addr{}, netip.MustParseAddr(fmt.Sprintf("fd00:200::%x", i+1))))
		}
		seen := map[netip.Prefix]bool{}
		start := time.Now()
		for seed := range uint64(200) {
			ch, err := chooseSubnet(c, all, ourHost6, netip.Prefix{}, netip.Prefix{}, newRand(seed))
			if err != nil {
				t.Fatal(err)
			}
			assertFree6(t, c, all, ch.ipv6Subnet)
			seen[ch.ipv6Subnet] = true
		}
		if len(seen) != 200 {
			t.Errorf("%s: 200 choices gave %d distinct subnets", conf, len(seen))
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: 200 choices took %v", conf, d)
		}
	}
}

// TestChooseSubnetHugeIPv6RangeNearlyFull: a huge range covered by
// reservations but for one subnet: the random tries fail, the scan finds it
// by jumping over the reservations; with that subnet taken too, the range is
// full and says so.
func TestChooseSubnetHugeIPv6RangeNearlyFull(t *testing.T) {
	c := etcdConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/32"}`) // 2^32 /64s
	res := netip.MustParseAddr("fd00:100::50")
	var all []existing
	// fd00:0:0:1:: .. fd00:0:ffff:ffff:: (the range) minus fd00:0:1234:5678::
	for _, p := range []string{"fd00:0::/36", "fd00:0:1000::/36", "fd00:0:2000::/35", "fd00:0:4000::/34", "fd00:0:8000::/33"} {
		all = append(all, reservedKey("", p, netip.Addr{}, res))
	}
	// Split fd00:0:1000::/36 so that only fd00:0:1234:5678::/64 is free.
	all = slices.DeleteFunc(all, func(e existing) bool { return e.lease.IPv6Subnet.String() == "fd00:0:1000::/36" })
	free := netip.MustParsePrefix("fd00:0:1234:5678::/64")
	for b := 36; b <= 64; b++ {
		// At each length, the half not holding free.
		half := netip.PrefixFrom(free.Addr(), b).Masked()
		sibling := flipBit(half, b-1)
		all = append(all, leasedKey("", sibling.String(), netip.Addr{}, otherIPv6))
	}
	for seed := range uint64(20) {
		ch, err := chooseSubnet(c, all, ourHost6, netip.Prefix{}, netip.Prefix{}, newRand(seed))
		if err != nil || ch.ipv6Subnet != free {
			t.Fatalf("seed %d: chose %s, %v; want the only free subnet %s", seed, ch.ipv6Subnet, err, free)
		}
	}
	all = append(all, leasedKey("", free.String(), netip.Addr{}, otherIPv6))
	for seed := range uint64(20) {
		if ch, err := chooseSubnet(c, all, ourHost6, netip.Prefix{}, netip.Prefix{}, newRand(seed)); !errors.Is(err, ErrOutOfSubnets) {
			t.Fatalf("seed %d: full range: chose %s, err %v; want ErrOutOfSubnets", seed, ch.ipv6Subnet, err)
		}
	}
}

// flipBit flips bit i (from the most significant) of p's address.
func flipBit(p netip.Prefix, i int) netip.Prefix {
	b := p.Addr().As16()
	b[i/8] ^= 0x80 >> (i % 8)
	return netip.PrefixFrom(netip.AddrFrom16(b), p.Bits())
}

func TestChooseSubnetSmallIPv6RangeFull(t *testing.T) {
	c := etcdConfig(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/62"}`) // :1 .. :3 /64
	all := []existing{
		leasedKey("10.244.1.0/24", "fd00:0:0:1::/64", otherIP, otherIPv6),
		reservedKey("", "fd00:0:0:2::/64", netip.Addr{}, netip.MustParseAddr("fd00:100::50")),
		leasedKey("10.244.3.0/24", "fd00:0:0:3::/64", netip.MustParseAddr("192.168.100.13"), netip.MustParseAddr("fd00:100::13")),
	}
	_, err := chooseSubnet(c, all, ourHost, netip.Prefix{}, netip.MustParsePrefix("fd00:0:0:2::/64"), newRand(1))
	if !errors.Is(err, ErrOutOfSubnets) || !strings.Contains(err.Error(), "IPv6 fd00::/62") {
		t.Errorf("full IPv6 range: err = %v, want ErrOutOfSubnets naming IPv6 fd00::/62", err)
	}
	// A /61 reservation covering the range fills it too (scan path, with
	// a small IPv6SubnetLen range it enumerates; both must agree).
	all = []existing{reservedKey("", "fd00::/62", netip.Addr{}, netip.MustParseAddr("fd00:100::50"))}
	if _, err := chooseSubnet(c, all, ourHost, netip.Prefix{}, netip.Prefix{}, newRand(1)); !errors.Is(err, ErrOutOfSubnets) {
		t.Errorf("range covered by a reservation: err = %v, want ErrOutOfSubnets", err)
	}
}

// TestChooseSubnetNeverTakenIPv6: with random keys of various lengths in a
// range too big to enumerate, the IPv6 choice never overlaps any of them,
// and an overlap in one family does not block the other.
func TestChooseSubnetNeverTakenIPv6(t *testing.T) {
	c := etcdConfig(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":62}`) // 2^14 /62s
	r := newRand(42)
	for round := range 200 {
		var all []existing
		for range r.IntN(3000) {
			bits := []int{62, 62, 62, 56, 60, 61, 63, 64}[r.IntN(8)]
			a := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, byte(r.IntN(256)), byte(r.IntN(256))})
			p := netip.PrefixFrom(a, bits).Masked()
			if r.IntN(3) == 0 {
				all = append(all, reservedKey("", p.String(), netip.Addr{}, netip.MustParseAddr("fd00:100::50")))
			} else {
				all = append(all, leasedKey("", p.String(), netip.Addr{}, netip.AddrFrom16([16]byte{0xfd, 0, 2, 0, 15: byte(r.IntN(250))})))
			}
		}
		ch, err := chooseSubnet(c, all, ourHost, netip.Prefix{}, netip.Prefix{}, newRand(uint64(round)))
		if errors.Is(err, ErrOutOfSubnets) {
			// Verify by enumeration that it is really full.
			f := newFamily(c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax, all, nil, func(l subnet.Lease) netip.Prefix { return l.IPv6Subnet })
			for p := netip.PrefixFrom(c.IPv6SubnetMin, 62); f.inRange(p); p, _ = ip.NextPrefix(p) {
				if _, taken := f.blocker(p); !taken {
					t.Fatalf("round %d: out of subnets, but %s is free", round, p)
				}
			}
			continue
		}
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		assertFree6(t, c, all, ch.ipv6Subnet)
		assertFreeInRange(t, c, all, ch.subnet)
	}
}
