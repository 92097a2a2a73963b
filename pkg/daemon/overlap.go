package daemon

import (
	"net/netip"
)

// subnetIndex finds which programmed peer's subnet overlaps a given one in
// time independent of the number of peers: subnets are looked up by their
// prefix at each length in use (peers nearly always share one length).
type subnetIndex struct {
	byPrefix map[netip.Prefix]string
	lengths  map[int]int // prefix length -> how many subnets have it
}

func newSubnetIndex() *subnetIndex {
	return &subnetIndex{byPrefix: map[netip.Prefix]string{}, lengths: map[int]int{}}
}

func (x *subnetIndex) add(name string, p netip.Prefix) {
	if !p.IsValid() {
		return
	}
	p = p.Masked()
	if _, ok := x.byPrefix[p]; !ok {
		x.lengths[p.Bits()]++
	}
	x.byPrefix[p] = name
}

func (x *subnetIndex) remove(name string, p netip.Prefix) {
	p = p.Masked()
	if owner, ok := x.byPrefix[p]; !ok || owner != name {
		return
	}
	delete(x.byPrefix, p)
	if x.lengths[p.Bits()]--; x.lengths[p.Bits()] == 0 {
		delete(x.lengths, p.Bits())
	}
}

// overlapping returns a peer other than name whose subnet overlaps p.
func (x *subnetIndex) overlapping(name string, p netip.Prefix) (string, netip.Prefix, bool) {
	if !p.IsValid() {
		return "", netip.Prefix{}, false
	}
	for bits := range x.lengths {
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
