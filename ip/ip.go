// Package ip holds flanneld's address helpers: netip prefix arithmetic
// (pure, usable anywhere) and, on Linux, the selection of the external
// (underlay) interface that encapsulated traffic is sent through.
package ip

import (
	"fmt"
	"net"
	"net/netip"
)

// FirstAddr returns the first host address of p (its network address plus
// one) with p's prefix length, e.g. 10.244.1.0/24 -> 10.244.1.1/24. This is
// the FLANNEL_SUBNET value of subnet.env. It returns the zero Prefix when p
// is invalid or has no address after its network address.
func FirstAddr(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return netip.Prefix{}
	}
	next := p.Masked().Addr().Next()
	if !next.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(next, p.Bits())
}

// LastAddr returns the last address inside p (for IPv4, the broadcast
// address), or the zero Addr when p is invalid.
func LastAddr(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// ContainsPrefix reports whether inner lies entirely inside outer. Both must
// be valid and of the same family; an IPv4-mapped IPv6 prefix counts as IPv6.
func ContainsPrefix(outer, inner netip.Prefix) bool {
	if !outer.IsValid() || !inner.IsValid() || outer.Addr().Is4() != inner.Addr().Is4() {
		return false
	}
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// Overlaps reports whether a and b share any address. Unlike calling
// netip.Prefix.Overlaps directly it documents (and guarantees) that an
// invalid prefix overlaps nothing.
func Overlaps(a, b netip.Prefix) bool {
	if !a.IsValid() || !b.IsValid() {
		return false
	}
	return a.Overlaps(b)
}

// NextPrefix returns the prefix of the same length that directly follows p
// (p is masked first), e.g. 10.244.1.0/24 -> 10.244.2.0/24. ok is false when
// p is invalid or the next prefix would run past the end of the address
// space.
func NextPrefix(p netip.Prefix) (next netip.Prefix, ok bool) {
	if !p.IsValid() || p.Bits() == 0 {
		return netip.Prefix{}, false
	}
	b := p.Masked().Addr().AsSlice()
	// Add 1 at bit position Bits()-1 (counted from the most significant
	// bit) and carry towards the front.
	bit := p.Bits() - 1
	idx := bit / 8
	add := uint16(0x80 >> (bit % 8))
	for ; idx >= 0 && add != 0; idx-- {
		sum := uint16(b[idx]) + add
		b[idx] = byte(sum)
		add = sum >> 8
	}
	if add != 0 {
		return netip.Prefix{}, false // carried out of the first byte
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, p.Bits()), true
}

// IsAligned reports whether a is the network address of the prefix of
// length bits that contains it (a.k.a. a is "aligned" to bits).
func IsAligned(a netip.Addr, bits int) bool {
	p, err := a.Prefix(bits)
	return a.IsValid() && err == nil && p.Addr() == a
}

// PrefixFromIPNet converts a *net.IPNet to a netip.Prefix, unmapping IPv4
// addresses stored in 16 bytes. It returns the zero Prefix for nil or
// malformed input.
func PrefixFromIPNet(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := AddrFromIP(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, bits := n.Mask.Size()
	switch {
	case bits == 0: // not a canonical mask
		return netip.Prefix{}
	case a.Is4() && bits == 8*net.IPv6len: // IPv4 address with a 16-byte mask
		ones -= 8 * (net.IPv6len - net.IPv4len)
	case bits != a.BitLen():
		return netip.Prefix{}
	}
	p := netip.PrefixFrom(a, ones)
	if !p.IsValid() {
		return netip.Prefix{}
	}
	return p
}

// AddrFromIP converts a net.IP to a netip.Addr, turning IPv4-mapped IPv6
// addresses into plain IPv4 ones. ok is false for nil or malformed input.
func AddrFromIP(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// IPNetFromPrefix converts p to a *net.IPNet (masked, IPv4 in 4 bytes), or
// returns nil when p is invalid. It is the form the netlink library expects.
func IPNetFromPrefix(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	p = p.Masked()
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

// ParseAddrOf parses an address of one family (IPv4 with want4, else
// IPv6), without a zone; an IPv4-mapped IPv6 address is not IPv4. The
// error says which family was expected, for the caller to name the value.
func ParseAddrOf(s string, want4 bool) (netip.Addr, error) {
	family := "IPv6"
	if want4 {
		family = "IPv4"
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is4() != want4 || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("not an %s address", family)
	}
	return a, nil
}

// Text is v's text, or "" when v is not valid (an address or prefix of a
// family that is off): for logs, reports and files that leave it out.
func Text[T interface {
	IsValid() bool
	String() string
}](v T) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}
