package etcd

import (
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net/netip"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// ErrOutOfSubnets means every subnet between SubnetMin and SubnetMax (or
// IPv6SubnetMin and IPv6SubnetMax) is leased or reserved.
var ErrOutOfSubnets = errors.New("out of subnets: every subnet between SubnetMin and SubnetMax is leased or reserved")

// existing is what the allocator knows of one lease key.
type existing struct {
	lease    subnet.Lease
	reserved bool  // no etcd lease: an operator's reservation
	leaseID  int64 // the etcd lease the key is bound to
}

// choice is where AcquireLease's subnets come from.
type choice struct {
	// subnet and ipv6Subnet are the subnets of the enabled families (the
	// zero Prefix for a disabled one).
	subnet, ipv6Subnet netip.Prefix
	// reuse is the existing key to take back (same public IP), if any.
	reuse *existing
	// stale are this host's leases (same public IP, bound to an etcd
	// lease) that no longer fit the network configuration, e.g. after
	// Network changed or IPv6 was enabled: they are deleted when the new
	// lease is written.
	stale []*existing
}

// hostIPs identifies this host's keys: by PublicIP when both the host and
// the key have one, else by PublicIPv6 (an IPv6-only host or key).
type hostIPs struct{ v4, v6 netip.Addr }

func (h hostIPs) owns(a subnet.LeaseAttrs) bool {
	if h.v4.IsValid() && a.PublicIP.IsValid() {
		return a.PublicIP == h.v4
	}
	if h.v6.IsValid() && a.PublicIPv6.IsValid() {
		return a.PublicIPv6 == h.v6
	}
	return false
}

// chooseSubnet picks this host's subnets, one per enabled family, for a
// single key: the lease (or reservation) that has its public IP, if it fits
// the configuration; else, for each family, the subnet from its previous
// subnet.env (or from its own stale key) if free and in range, else a
// random free subnet in [SubnetMin, SubnetMax] or [IPv6SubnetMin,
// IPv6SubnetMax].
func chooseSubnet(c *subnet.Config, all []existing, host hostIPs, previous, previous6 netip.Prefix, rng *rand.Rand) (choice, error) {
	var stale []*existing
	isStale := map[*existing]bool{}
	for i := range all {
		e := &all[i]
		if !host.owns(e.lease.Attrs) || (!e.lease.Subnet.IsValid() && !e.lease.IPv6Subnet.IsValid()) {
			continue
		}
		if keyFits(c, e.lease) {
			return choice{subnet: e.lease.Subnet, ipv6Subnet: e.lease.IPv6Subnet, reuse: e}, nil
		}
		if !e.reserved {
			stale = append(stale, e)
			isStale[e] = true
		}
	}
	ch := choice{stale: stale}
	// This host's stale keys are deleted in the same transaction, so their
	// subnets are free for it; they are tried after the previous subnets.
	pick := func(family string, network netip.Prefix, bits int, min, max netip.Addr, previous netip.Prefix, of func(subnet.Lease) netip.Prefix) (netip.Prefix, error) {
		r := newFamily(network, bits, min, max, all, isStale, of)
		cands := []netip.Prefix{previous}
		for _, e := range stale {
			cands = append(cands, of(e.lease))
		}
		sn, err := r.choose(cands, rng)
		if err != nil {
			err = fmt.Errorf("%s %s: %w", family, network, err)
		}
		return sn, err
	}
	var err4, err6 error
	if c.EnableIPv4 {
		ch.subnet, err4 = pick("IPv4", c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, previous, func(l subnet.Lease) netip.Prefix { return l.Subnet })
	}
	if c.EnableIPv6 {
		ch.ipv6Subnet, err6 = pick("IPv6", c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax, previous6, func(l subnet.Lease) netip.Prefix { return l.IPv6Subnet })
	}
	if err := errors.Join(err4, err6); err != nil {
		return choice{}, err
	}
	return ch, nil
}

// keyFits reports whether l has exactly the families the configuration
// enables, each a subnet it hands out.
func keyFits(c *subnet.Config, l subnet.Lease) bool {
	if c.EnableIPv4 != l.Subnet.IsValid() || c.EnableIPv6 != l.IPv6Subnet.IsValid() {
		return false
	}
	return (!c.EnableIPv4 || fits(c, l.Subnet)) && (!c.EnableIPv6 || fits6(c, l.IPv6Subnet))
}

// fits reports whether sn is an IPv4 subnet this configuration hands out:
// of SubnetLen, in [SubnetMin, SubnetMax].
func fits(c *subnet.Config, sn netip.Prefix) bool {
	return familyOf(c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax).fits(sn)
}

// fits6 is fits for IPv6 subnets.
func fits6(c *subnet.Config, sn netip.Prefix) bool {
	return familyOf(c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax).fits(sn)
}

// Ranges of at most enumerateMax subnets are listed in full and a free
// subnet is drawn uniformly; larger ones (IPv6 ranges can hold 2^64 and
// more) are never enumerated: randomTries random candidates are checked,
// then a scan from a random start finds a free subnet or proves the range
// full.
const (
	enumerateMax = 1 << 12
	randomTries  = 64
)

// family is one address family's range and the subnets taken in it.
type family struct {
	network  netip.Prefix
	bits     int // the subnet length
	min, max netip.Addr
	// Keys of the subnet length are looked up in a set; others (a
	// reservation of another size) are checked for overlap.
	sameLen  map[netip.Prefix]bool
	otherLen []netip.Prefix
}

func familyOf(network netip.Prefix, bits int, min, max netip.Addr) *family {
	return &family{network: network, bits: bits, min: min, max: max}
}

// newFamily collects the subnets of one family taken by the keys in all,
// except by skip (this host's stale keys).
func newFamily(network netip.Prefix, bits int, min, max netip.Addr, all []existing, skip map[*existing]bool, sn func(subnet.Lease) netip.Prefix) *family {
	f := familyOf(network, bits, min, max)
	f.sameLen = map[netip.Prefix]bool{}
	for i := range all {
		p := sn(all[i].lease)
		switch {
		case skip[&all[i]] || !p.IsValid() || p.Addr().Is4() != network.Addr().Is4():
		case p.Bits() == bits:
			f.sameLen[p.Masked()] = true
		default:
			f.otherLen = append(f.otherLen, p.Masked())
		}
	}
	return f
}

// fits reports whether sn is a subnet of the range: of the subnet length,
// a network address, in [min, max] inside network.
func (f *family) fits(sn netip.Prefix) bool {
	return sn.IsValid() && sn.Bits() == f.bits && sn.Masked() == sn && f.inRange(sn)
}

func (f *family) inRange(p netip.Prefix) bool {
	a := p.Addr()
	return f.network.Contains(a) && a.Compare(f.min) >= 0 && a.Compare(f.max) <= 0
}

// blocker returns a key's subnet that overlaps p, if any.
func (f *family) blocker(p netip.Prefix) (netip.Prefix, bool) {
	if f.sameLen[p] {
		return p, true
	}
	for _, o := range f.otherLen {
		if ip.Overlaps(o, p) {
			return o, true
		}
	}
	return netip.Prefix{}, false
}

// choose returns the first of candidates that fits and is free, else a
// random free subnet of the range.
func (f *family) choose(candidates []netip.Prefix, rng *rand.Rand) (netip.Prefix, error) {
	for _, p := range candidates {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		if _, taken := f.blocker(p); f.fits(p) && !taken {
			return p, nil
		}
	}
	n := f.count()
	if n.IsInt64() && n.Int64() <= enumerateMax {
		var free []netip.Prefix
		for p := netip.PrefixFrom(f.min, f.bits); f.inRange(p); {
			if _, taken := f.blocker(p); !taken {
				free = append(free, p)
			}
			next, ok := ip.NextPrefix(p)
			if !ok {
				break
			}
			p = next
		}
		if len(free) == 0 {
			return netip.Prefix{}, ErrOutOfSubnets
		}
		return free[rng.IntN(len(free))], nil
	}
	for range randomTries {
		p := f.random(n, rng)
		if _, taken := f.blocker(p); !taken {
			return p, nil
		}
	}
	return f.scan(f.random(n, rng))
}

// scan looks for a free subnet from start to max, then from min back to
// start. It jumps over keys larger than a subnet, so it takes at most one
// step per key before it finds a free subnet or has seen the whole range:
// it never walks a huge range subnet by subnet.
func (f *family) scan(start netip.Prefix) (netip.Prefix, error) {
	first := netip.PrefixFrom(f.min, f.bits)
	wrapped := false
	bound := 2*(len(f.sameLen)+len(f.otherLen)) + 4
	p := start
	for range bound {
		b, taken := f.blocker(p)
		if !taken {
			return p, nil
		}
		next, ok := p, true
		if b.Bits() < f.bits {
			// Jump to the subnet after the end of b.
			next = netip.PrefixFrom(ip.LastAddr(b), f.bits).Masked()
		}
		next, ok = ip.NextPrefix(next)
		if !ok || !f.inRange(next) {
			if wrapped {
				return netip.Prefix{}, ErrOutOfSubnets
			}
			next, wrapped = first, true
		}
		if wrapped && next.Addr().Compare(start.Addr()) >= 0 {
			return netip.Prefix{}, ErrOutOfSubnets
		}
		p = next
	}
	// Not reached: every step passes a different key.
	return netip.Prefix{}, fmt.Errorf("no free /%d subnet found in %d steps from %s", f.bits, bound, start)
}

// count is the number of subnets in [min, max].
func (f *family) count() *big.Int {
	n := new(big.Int).Sub(f.index(f.max), f.index(f.min))
	return n.Add(n, big.NewInt(1))
}

// index is the number of the subnet of the subnet length starting at a.
func (f *family) index(a netip.Addr) *big.Int {
	i := new(big.Int).SetBytes(a.AsSlice())
	return i.Rsh(i, uint(a.BitLen()-f.bits))
}

// random returns a random subnet of the n subnets in [min, max].
func (f *family) random(n *big.Int, rng *rand.Rand) netip.Prefix {
	var r *big.Int
	if n.IsUint64() {
		r = new(big.Int).SetUint64(rng.Uint64N(n.Uint64()))
	} else {
		// 192 random bits modulo n (< 2^127): the bias is negligible.
		r = new(big.Int)
		for range 3 {
			r.Lsh(r, 64).Or(r, new(big.Int).SetUint64(rng.Uint64()))
		}
		r.Mod(r, n)
	}
	i := r.Add(r, f.index(f.min))
	i.Lsh(i, uint(f.min.BitLen()-f.bits))
	a, _ := netip.AddrFromSlice(i.FillBytes(make([]byte, f.min.BitLen()/8)))
	return netip.PrefixFrom(a, f.bits)
}
