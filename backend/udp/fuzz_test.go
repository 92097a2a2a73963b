package udp

import (
	"testing"
)

// FuzzEgress feeds arbitrary frames, as the TUN device could hand over,
// to the egress: nothing may panic, and every datagram sent must be one
// IPv4 packet no larger than the frame allows.
func FuzzEgress(f *testing.F) {
	f.Add(frame(vnetHdr{}, icmpEcho("10.244.1.5", "10.244.2.7")))
	f.Add(frame(vnetHdr{}, icmpEcho("10.244.1.5", "10.244.9.9")))
	f.Add(frame(vnetHdr{gsoType: vnetGSOTCPv4, gsoSize: 100, hdrLen: 52, csumStart: 20, csumOffset: 16},
		tcpPacket(1, tcpACK|tcpPSH, pattern(1000))))
	f.Add(frame(vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 20, csumOffset: 16}, tcpPacket(1, tcpACK, pattern(10))))
	f.Add([]byte{1, 2, 3})
	fw := testForwarder()
	e := newEgress(fw)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > frameSize {
			return
		}
		route(e, data)
		for i := range e.batches {
			for _, p := range e.packets(&e.batches[i]) {
				pkt := joinPacket(p)
				if n, ok := ipv4Len(pkt); !ok || n != len(pkt) {
					t.Fatalf("sent %d bytes that are not one IPv4 packet", len(pkt))
				}
			}
		}
	})
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
