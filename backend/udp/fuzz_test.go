package udp

import (
	"testing"
)

// FuzzEgress feeds arbitrary frames, as the TUN device could hand over,
// to the egress: nothing may panic, every datagram sent must be one IPv4
// packet no larger than the frame allows, made from the frame's packet
// as checkForwarded says, and sent to the peer that owns its destination.
func FuzzEgress(f *testing.F) {
	f.Add(frame(vnetHdr{}, icmpEcho("10.244.1.5", "10.244.2.7")))
	f.Add(frame(vnetHdr{}, icmpEcho("10.244.1.5", "10.244.9.9")))
	f.Add(frame(vnetHdr{gsoType: vnetGSOTCPv4, gsoSize: 100, hdrLen: 52, csumStart: 20, csumOffset: 16},
		tcpPacket(1, tcpACK|tcpPSH, pattern(1000))))
	f.Add(frame(vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4 | vnetGSOECN, gsoSize: 100, hdrLen: 52, csumStart: 20, csumOffset: 16},
		tcpPacket(1, tcpACK|tcpPSH|tcpCWR, pattern(1000))))
	f.Add(frame(vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 20, csumOffset: 16}, tcpPacket(1, tcpACK, pattern(10))))
	udp := udpPacket(pattern(10))
	f.Add(frame(leavePartial(udp, 0, 20, 6), udp))
	ipip := ipv4Packet("10.244.1.2", "10.244.2.2", protoIPIP, 64, tcpPacket(1, tcpACK, pattern(10)))
	f.Add(frame(leavePartial(ipip, 20, 40, 16), ipip))
	f.Add([]byte{1, 2, 3})
	fw := testForwarder()
	e := newEgress(fw)
	buf := make([]byte, frameSize)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > frameSize {
			return
		}
		// The egress changes the frame: it gets a copy, so that data
		// stays the input (and a failing input is written as it was).
		route(e, buf[:copy(buf, data)])
		for i := range e.batches {
			b := &e.batches[i]
			for _, p := range e.packets(b) {
				pkt := joinPacket(p)
				if n, ok := ipv4Len(pkt); !ok || n != len(pkt) {
					t.Fatalf("sent %d bytes that are not one IPv4 packet", len(pkt))
				}
				checkForwarded(t, data[vnetHdrLen:], pkt, b.to)
			}
		}
	})
}

// checkForwarded checks that pkt, sent to the peer to, was made from the
// packet in as the egress may: with in's IP header but for the total
// length and ID (segments), the TTL (decremented) and the header checksum
// (still correct if in's was), and for a destination inside to's subnet.
// A virtio-net header that makes the egress write elsewhere in the IP
// header fails it.
func checkForwarded(t *testing.T, in, pkt []byte, to *peer) {
	t.Helper()
	h := ihl(pkt)
	switch {
	case len(in) < h:
		t.Fatalf("sent a %d-byte IP header from a %d-byte packet", h, len(in))
	case string(pkt[:2]) != string(in[:2]) || string(pkt[6:8]) != string(in[6:8]) ||
		pkt[9] != in[9] || string(pkt[12:h]) != string(in[12:h]):
		t.Fatalf("sent IP header %x, made from %x: changed beyond length, ID, TTL and checksum", pkt[:h], in[:h])
	case pkt[8] != in[8]-1:
		t.Fatalf("sent TTL %d, from %d", pkt[8], in[8])
	case refChecksum(in[:h]) == 0 && refChecksum(pkt[:h]) != 0:
		t.Fatalf("sent IP header %x, made from %x: header checksum broken", pkt[:h], in[:h])
	case !to.contains(dstAddr(pkt)):
		t.Fatalf("sent a packet for %s to %s", uint32ToAddr(dstAddr(pkt)), to.name)
	}
}

// FuzzIngress feeds arbitrary datagrams from a peer to the admission
// checks and the coalescer: nothing may panic, and every frame written
// must hold a packet from the peer's subnet to this node's.
func FuzzIngress(f *testing.F) {
	a := tcpPacket(1, tcpACK, pattern(500))
	b := tcpPacket(501, tcpACK|tcpPSH, pattern(500))
	for _, p := range [][]byte{a, b} {
		copy(p[12:20], []byte{10, 244, 2, 7, 10, 244, 1, 5})
		setIPv4Checksum(p)
	}
	f.Add(append(append([]byte(nil), a...), b...), len(a))
	f.Add(icmpEcho("10.244.2.7", "10.244.1.5"), 0)
	f.Add([]byte{0x45, 0, 0, 20}, 0)
	fw := testForwarder()
	from := addr("192.168.100.12")
	f.Fuzz(func(t *testing.T, data []byte, segSize int) {
		if len(data) > recvBufSize-vnetHdrLen {
			return
		}
		buf := make([]byte, recvBufSize)
		copy(buf[vnetHdrLen:], data)
		c := &coalescer{write: func(fr []byte) {
			if len(fr) < vnetHdrLen+ipv4HeaderLen {
				t.Fatalf("wrote a %d-byte frame", len(fr))
			}
			pkt := fr[vnetHdrLen:]
			if src, dst := srcAddr(pkt), dstAddr(pkt); src>>8 != addr("10.244.2.0")>>8 || dst>>8 != addr("10.244.1.0")>>8 {
				t.Fatalf("wrote a packet from %s to %s", uint32ToAddr(src), uint32ToAddr(dst))
			}
		}}
		fw.admit(buf, vnetHdrLen, len(data), segSize, from, c.add)
		c.flush()
	})
}
