package udp

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// refChecksum is RFC 1071 the obvious way, 16 bits at a time.
func refChecksum(b []byte) uint16 {
	var s uint32
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func TestChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		b := make([]byte, r.IntN(2000))
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		if i%5 == 0 { // carries everywhere
			for j := range b {
				b[j] = 0xff
			}
		}
		if got, want := checksum(b), refChecksum(b); got != want {
			t.Fatalf("len %d: checksum %04x, want %04x", len(b), got, want)
		}
	}
}

// ipv4Packet builds a well-formed IPv4 packet with payload bytes of
// protocol proto.
func ipv4Packet(src, dst string, proto uint8, ttl uint8, payload []byte) []byte {
	p := make([]byte, ipv4HeaderLen+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0x1234)
	p[6] = 0x40 // DF
	p[8] = ttl
	p[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	setIPv4Checksum(p)
	copy(p[ipv4HeaderLen:], payload)
	return p
}

// icmpEcho is an ICMP echo request from src to dst.
func icmpEcho(src, dst string) []byte {
	msg := []byte{8, 0, 0, 0, 0, 1, 0, 1, 'h', 'e', 'l', 'l', 'o'}
	binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	return ipv4Packet(src, dst, protoICMP, 64, msg)
}

func TestDecrementTTL(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 5000 {
		p := make([]byte, ipv4HeaderLen)
		for j := range p {
			p[j] = byte(r.UintN(256))
		}
		p[0] = 0x45
		p[8] = byte(2 + r.UintN(254))
		setIPv4Checksum(p)
		ttl := p[8]
		if !decrementTTL(p) {
			t.Fatalf("TTL %d not decremented", ttl)
		}
		if p[8] != ttl-1 {
			t.Fatalf("TTL %d became %d", ttl, p[8])
		}
		if refChecksum(p) != 0 {
			t.Fatalf("header checksum wrong after decrementing TTL %d: % x", ttl, p)
		}
		want := append([]byte(nil), p...)
		setIPv4Checksum(want)
		if string(want) != string(p) {
			t.Fatalf("incremental checksum %x, full recomputation %x", p[10:12], want[10:12])
		}
	}
	for _, ttl := range []byte{0, 1} {
		p := icmpEcho("10.244.1.2", "10.244.2.2")
		p[8] = ttl
		setIPv4Checksum(p)
		before := string(p)
		if decrementTTL(p) {
			t.Errorf("TTL %d: decremented", ttl)
		}
		if string(p) != before {
			t.Errorf("TTL %d: packet changed", ttl)
		}
	}
}

func TestIPv4Len(t *testing.T) {
	good := icmpEcho("10.244.1.2", "10.244.2.2")
	padded := append(append([]byte(nil), good...), 0, 0, 0)
	for _, c := range []struct {
		name string
		pkt  []byte
		want int
		ok   bool
	}{
		{"packet", good, len(good), true},
		{"padded", padded, len(good), true},
		{"empty", nil, 0, false},
		{"short", good[:19], 0, false},
		{"IPv6", append([]byte{0x60}, good[1:]...), 0, false},
		{"truncated", good[:len(good)-1], 0, false},
		{"IHL 4", append([]byte{0x44}, good[1:]...), 0, false},
	} {
		n, ok := ipv4Len(c.pkt)
		if n != c.want || ok != c.ok {
			t.Errorf("%s: ipv4Len = %d, %v; want %d, %v", c.name, n, ok, c.want, c.ok)
		}
	}
}

func TestICMPNetUnreachable(t *testing.T) {
	pkt := icmpEcho("10.244.1.2", "10.244.9.9")
	from := addrToUint32(netip.MustParseAddr("10.244.1.0"))
	buf := make([]byte, icmpMaxLen)
	msg := icmpError(buf, pkt, from, icmpDestUnreachable, icmpNetUnreachable)
	if msg == nil {
		t.Fatal("no ICMP error")
	}
	if n, ok := ipv4Len(msg); !ok || n != len(msg) {
		t.Fatalf("not a well-formed IPv4 packet: % x", msg)
	}
	if refChecksum(msg[:ipv4HeaderLen]) != 0 {
		t.Error("IP header checksum wrong")
	}
	if msg[9] != protoICMP || msg[8] != icmpErrorTTL {
		t.Errorf("protocol %d TTL %d", msg[9], msg[8])
	}
	if got := uint32ToAddr(srcAddr(msg)); got.String() != "10.244.1.0" {
		t.Errorf("source %s, want flannel0's 10.244.1.0", got)
	}
	if got := uint32ToAddr(dstAddr(msg)); got.String() != "10.244.1.2" {
		t.Errorf("destination %s, want the sender 10.244.1.2", got)
	}
	icmp := msg[ipv4HeaderLen:]
	if icmp[0] != 3 || icmp[1] != 0 {
		t.Errorf("type %d code %d, want 3 0 (net unreachable)", icmp[0], icmp[1])
	}
	if refChecksum(icmp) != 0 {
		t.Error("ICMP checksum wrong")
	}
	if string(icmp[icmpHeaderLen:]) != string(pkt) {
		t.Errorf("quotes % x, want the whole packet % x", icmp[icmpHeaderLen:], pkt)
	}

	// A long packet is quoted up to 576 bytes in all.
	long := ipv4Packet("10.244.1.2", "10.244.9.9", 17, 64, make([]byte, 1400))
	if msg := icmpError(buf, long, from, icmpTimeExceeded, icmpTTLExceeded); len(msg) != icmpMaxLen {
		t.Errorf("ICMP error about a 1420-byte packet is %d bytes, want %d", len(msg), icmpMaxLen)
	}

	// No error about an error, a later fragment, or a multicast packet.
	errPkt := ipv4Packet("10.244.1.2", "10.244.9.9", protoICMP, 64, []byte{3, 1, 0, 0, 0, 0, 0, 0})
	frag := icmpEcho("10.244.1.2", "10.244.9.9")
	binary.BigEndian.PutUint16(frag[6:], 10)
	mcast := icmpEcho("10.244.1.2", "224.0.0.5")
	zero := icmpEcho("0.0.0.0", "10.244.9.9")
	for name, p := range map[string][]byte{"ICMP error": errPkt, "fragment": frag, "multicast": mcast, "unspecified source": zero} {
		if msg := icmpError(buf, p, from, icmpDestUnreachable, icmpNetUnreachable); msg != nil {
			t.Errorf("%s: got an ICMP error", name)
		}
	}
}
