package etcd

import (
	"errors"
	"math/rand/v2"
	"net/netip"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// ErrOutOfSubnets means every subnet between SubnetMin and SubnetMax is
// leased or reserved.
var ErrOutOfSubnets = errors.New("out of subnets: every subnet between SubnetMin and SubnetMax is leased or reserved")

// existing is what the allocator knows of one lease key.
type existing struct {
	lease    subnet.Lease
	reserved bool  // no etcd lease: an operator's reservation
	leaseID  int64 // the etcd lease the key is bound to
}

// choice is where AcquireLease's subnet comes from.
type choice struct {
	subnet netip.Prefix
	// reuse is the existing key to take back (same public IP), if any.
	reuse *existing
	// stale are this host's leases (same public IP, bound to an etcd
	// lease) that no longer fit the network configuration, e.g. after
	// Network changed: they are deleted when the new lease is written.
	stale []*existing
}

// chooseSubnet picks this host's subnet: the lease (or reservation) that
// has its public IP, if it fits the configuration, else the subnet from its
// previous subnet.env if free and in range, else a random free subnet in
// [SubnetMin, SubnetMax].
func chooseSubnet(c *subnet.Config, all []existing, publicIP netip.Addr, previous netip.Prefix, rng *rand.Rand) (choice, error) {
	var stale []*existing
	for i := range all {
		e := &all[i]
		if !publicIP.IsValid() || e.lease.Attrs.PublicIP != publicIP || !e.lease.Subnet.IsValid() {
			continue
		}
		if fits(c, e.lease.Subnet) {
			return choice{subnet: e.lease.Subnet, reuse: e}, nil
		}
		if !e.reserved {
			stale = append(stale, e)
		}
	}
	// Leases of the configured length are looked up in a set; others
	// (a reservation of another size) are checked for overlap.
	sameLen := map[netip.Prefix]bool{}
	var otherLen []netip.Prefix
	for _, e := range all {
		if sn := e.lease.Subnet; sn.Bits() == c.SubnetLen {
			sameLen[sn.Masked()] = true
		} else if sn.IsValid() {
			otherLen = append(otherLen, sn)
		}
	}
	taken := func(p netip.Prefix) bool {
		if sameLen[p] {
			return true
		}
		for _, o := range otherLen {
			if ip.Overlaps(o, p) {
				return true
			}
		}
		return false
	}
	if previous.IsValid() {
		previous = previous.Masked()
		if fits(c, previous) && !taken(previous) {
			return choice{subnet: previous, stale: stale}, nil
		}
	}
	var free []netip.Prefix
	for p := netip.PrefixFrom(c.SubnetMin, c.SubnetLen); inRange(c, p); {
		if !taken(p) {
			free = append(free, p)
		}
		next, ok := ip.NextPrefix(p)
		if !ok {
			break
		}
		p = next
	}
	if len(free) == 0 {
		return choice{}, ErrOutOfSubnets
	}
	return choice{subnet: free[rng.IntN(len(free))], stale: stale}, nil
}

// fits reports whether sn is a subnet this configuration hands out: of
// SubnetLen, in [SubnetMin, SubnetMax].
func fits(c *subnet.Config, sn netip.Prefix) bool {
	return sn.Bits() == c.SubnetLen && sn.Masked() == sn && inRange(c, sn)
}

func inRange(c *subnet.Config, p netip.Prefix) bool {
	a := p.Addr()
	return c.Network.Contains(a) && a.Compare(c.SubnetMin) >= 0 && a.Compare(c.SubnetMax) <= 0
}
