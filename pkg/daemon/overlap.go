package daemon

import (
	"net/netip"
)

// subnetIndex finds which programmed peer's subnet overlaps a given one in
// time independent of the number of peers: subnets are looked up by their
// prefix at each length in use (peers nearly always share one length per
// address family).
type subnetIndex struct {
	byPrefix map[netip.Prefix]string
	lengths  map[prefixLen]int // how many subnets have each length
}

// prefixLen is a prefix length of one address family.
type prefixLen struct {
	is4  bool
	bits int
}

func lenOf(p netip.Prefix) prefixLen { return prefixLen{p.Addr().Is4(), p.Bits()} }

func newSubnetIndex() *subnetIndex {
	return &subnetIndex{byPrefix: map[netip.Prefix]string{}, lengths: map[prefixLen]int{}}
}

// add records name's subnets (invalid ones are ignored).
func (x *subnetIndex) add(name string, subnets ...netip.Prefix) {
	for _, p := range subnets {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		if _, ok := x.byPrefix[p]; !ok {
			x.lengths[lenOf(p)]++
		}
		x.byPrefix[p] = name
	}
}

// remove forgets name's subnets.
func (x *subnetIndex) remove(name string, subnets ...netip.Prefix) {
	for _, p := range subnets {
		p = p.Masked()
		if owner, ok := x.byPrefix[p]; !ok || owner != name {
			continue
		}
		delete(x.byPrefix, p)
		if x.lengths[lenOf(p)]--; x.lengths[lenOf(p)] == 0 {
			delete(x.lengths, lenOf(p))
		}
	}
}

// overlapping returns a peer other than name whose subnet overlaps p.
func (x *subnetIndex) overlapping(name string, p netip.Prefix) (string, netip.Prefix, bool) {
	if !p.IsValid() {
		return "", netip.Prefix{}, false
	}
	for l := range x.lengths {
		if l.is4 != p.Addr().Is4() {
			continue
		}
		bits := l.bits
		if bits <= p.Bits() {
			// A subnet of this length containing p.
			q := netip.PrefixFrom(p.Addr(), bits).Masked()
			if owner, ok := x.byPrefix[q]; ok && owner != name {
				return owner, q, true
			}
			continue
		}
		// Subnets longer than p: rare (mixed lengths), so scanned.
		for q, owner := range x.byPrefix {
			if q.Bits() == bits && owner != name && p.Overlaps(q) {
				return owner, q, true
			}
		}
	}
	return "", netip.Prefix{}, false
}
