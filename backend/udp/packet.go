package udp

// IPv4 header handling for the forwarder: plain functions on byte slices,
// without allocations on the forwarding path.

import (
	"encoding/binary"
	"math/bits"
)

const (
	ipv4HeaderLen = 20
	tcpHeaderLen  = 20
	udpHeaderLen  = 8
	icmpHeaderLen = 8
	protoICMP     = 1
	protoIPIP     = 4
	protoTCP      = 6
	protoUDP      = 17
	protoIPv6     = 41
	protoGRE      = 47

	// ICMP errors the forwarder sends (RFC 792).
	icmpDestUnreachable = 3
	icmpNetUnreachable  = 0
	icmpTimeExceeded    = 11
	icmpTTLExceeded     = 0

	// icmpErrorTTL is the TTL of the ICMP errors the forwarder originates.
	icmpErrorTTL = 64
	// icmpMaxLen bounds an ICMP error with the offending packet's start
	// (RFC 1812 4.3.2.3: no more than 576 bytes).
	icmpMaxLen = 576
	// tosInternetControl is the precedence of ICMP errors (RFC 1812 4.3.2.5).
	tosInternetControl = 0xc0

	// maxIPv4Len is the largest IPv4 packet.
	maxIPv4Len = 65535
)

// ipv4Len checks that pkt starts with a well-formed IPv4 header and
// returns the packet's total length (at most len(pkt)).
func ipv4Len(pkt []byte) (int, bool) {
	if len(pkt) < ipv4HeaderLen || pkt[0]>>4 != 4 {
		return 0, false
	}
	ihl := int(pkt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:]))
	if ihl < ipv4HeaderLen || total < ihl || total > len(pkt) {
		return 0, false
	}
	return total, true
}

// ihl is a well-formed IPv4 packet's header length.
func ihl(pkt []byte) int { return int(pkt[0]&0x0f) * 4 }

// srcAddr and dstAddr are a well-formed IPv4 packet's addresses.
func srcAddr(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[12:]) }
func dstAddr(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[16:]) }

// isFragment says whether an IPv4 packet is a fragment (more fragments
// follow, or it is not the first).
func isFragment(pkt []byte) bool { return binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 }

// decrementTTL lowers a well-formed IPv4 packet's TTL by one and updates
// the header checksum incrementally (RFC 1624, equation 3). It returns
// false, leaving the packet alone, when the TTL is 0 or 1: the packet must
// not be forwarded.
func decrementTTL(pkt []byte) bool {
	ttl := pkt[8]
	if ttl <= 1 {
		return false
	}
	pkt[8] = ttl - 1
	// The TTL is the high byte of the header's fifth 16-bit word.
	old := uint32(ttl)<<8 | uint32(pkt[9])
	sum := uint32(^binary.BigEndian.Uint16(pkt[10:])) + (^old & 0xffff) + (old - 0x100)
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	binary.BigEndian.PutUint16(pkt[10:], ^uint16(sum))
	return true
}

// The Internet checksum (RFC 1071). sumBytes accumulates bytes into a
// 64-bit one's complement sum read in little-endian order, eight bytes at
// a time: the sum of a byte-swapped sequence is the byte-swapped sum, so
// fold swaps the folded result back. Every slice but the last summed into
// one accumulator must have an even length.

// sumBytes adds b to the accumulator acc.
func sumBytes(b []byte, acc uint64) uint64 {
	var c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b), 0)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[8:]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[16:]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[24:]), c)
		acc, c = bits.Add64(acc, 0, c)
		acc += c
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b), 0)
		acc += c
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, c = bits.Add64(acc, uint64(binary.LittleEndian.Uint32(b)), 0)
		acc += c
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, c = bits.Add64(acc, uint64(binary.LittleEndian.Uint16(b)), 0)
		acc += c
		b = b[2:]
	}
	if len(b) == 1 {
		// The odd byte is the high byte of a big-endian word padded with
		// zero: the low byte read little-endian.
		acc, c = bits.Add64(acc, uint64(b[0]), 0)
		acc += c
	}
	return acc
}

// sumWord adds the big-endian 16-bit word w to the accumulator.
func sumWord(w uint16, acc uint64) uint64 {
	acc, c := bits.Add64(acc, uint64(bits.ReverseBytes16(w)), 0)
	return acc + c
}

// fold reduces an accumulator to the 16-bit one's complement sum, in
// network byte order.
func fold(acc uint64) uint16 {
	acc = acc>>32 + acc&0xffffffff
	acc = acc>>32 + acc&0xffffffff
	acc = acc>>16 + acc&0xffff
	acc = acc>>16 + acc&0xffff
	acc = acc>>16 + acc&0xffff
	return bits.ReverseBytes16(uint16(acc))
}

// checksum is the Internet checksum of b.
func checksum(b []byte) uint16 { return ^fold(sumBytes(b, 0)) }

// pseudoHeaderSum is the accumulator of an IPv4 packet's TCP or UDP
// pseudo-header: its addresses, protocol and transport length.
func pseudoHeaderSum(pkt []byte, proto uint8, length int) uint64 {
	return sumWord(uint16(length), sumWord(uint16(proto), sumBytes(pkt[12:20], 0)))
}

// setIPv4Checksum recomputes the header checksum of a well-formed IPv4
// packet.
func setIPv4Checksum(pkt []byte) {
	pkt[10], pkt[11] = 0, 0
	binary.BigEndian.PutUint16(pkt[10:], checksum(pkt[:ihl(pkt)]))
}

// icmpErrorAllowed says whether an ICMP error may be sent about the
// well-formed IPv4 packet pkt (RFC 1812 4.3.2.7): not about an ICMP error,
// a fragment other than the first, or a packet whose source is not one
// unicast host or whose destination is broadcast or multicast.
func icmpErrorAllowed(pkt []byte) bool {
	src, dst := srcAddr(pkt), dstAddr(pkt)
	switch {
	case src == 0, src>>24 == 127, src>>28 == 0xe, src>>28 == 0xf:
		return false // unspecified, loopback, multicast, reserved or broadcast
	case dst>>28 == 0xe, dst == 0xffffffff:
		return false
	case binary.BigEndian.Uint16(pkt[6:])&0x1fff != 0:
		return false // not the first fragment
	}
	if pkt[9] == protoICMP {
		h := ihl(pkt)
		if len(pkt) <= h {
			return false
		}
		switch pkt[h] {
		case 0, 8, 13, 14: // echo reply and request, timestamp and reply
		default:
			return false // an error, or a type this code does not know
		}
	}
	return true
}

// icmpError builds into buf the ICMP error of type typ and code that from
// sends to the source of the well-formed IPv4 packet pkt, quoting as much
// of pkt as fits in 576 bytes, and returns it; nil when no error may be
// sent about pkt (icmpErrorAllowed) or buf is too small.
func icmpError(buf, pkt []byte, from uint32, typ, code uint8) []byte {
	if !icmpErrorAllowed(pkt) {
		return nil
	}
	quote := min(len(pkt), icmpMaxLen-ipv4HeaderLen-icmpHeaderLen)
	total := ipv4HeaderLen + icmpHeaderLen + quote
	if len(buf) < total {
		return nil
	}
	out := buf[:total]
	out[0] = 0x45
	out[1] = tosInternetControl
	binary.BigEndian.PutUint16(out[2:], uint16(total))
	clear(out[4:8]) // identification, flags, fragment offset
	out[8] = icmpErrorTTL
	out[9] = protoICMP
	binary.BigEndian.PutUint32(out[12:], from)
	copy(out[16:20], pkt[12:16])
	setIPv4Checksum(out)

	msg := out[ipv4HeaderLen:]
	msg[0], msg[1] = typ, code
	clear(msg[2:icmpHeaderLen]) // checksum, unused
	copy(msg[icmpHeaderLen:], pkt[:quote])
	binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	return out
}
