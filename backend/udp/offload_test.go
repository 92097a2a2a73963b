package udp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

// tcpPacket builds a TCP/IPv4 segment from 10.244.1.2:40000 to
// 10.244.2.2:5201 with the given sequence number, flags and payload, with
// a timestamp option (as Linux sends) and correct checksums.
func tcpPacket(seq uint32, flags byte, payload []byte) []byte {
	const thl = 32
	seg := make([]byte, thl+len(payload))
	binary.BigEndian.PutUint16(seg[0:], 40000)
	binary.BigEndian.PutUint16(seg[2:], 5201)
	binary.BigEndian.PutUint32(seg[4:], seq)
	binary.BigEndian.PutUint32(seg[8:], 777)
	seg[12] = thl / 4 << 4
	seg[13] = flags
	binary.BigEndian.PutUint16(seg[14:], 512)
	copy(seg[20:], []byte{1, 1, 8, 10, 0, 0, 0, 42, 0, 0, 0, 43}) // NOP NOP TS
	copy(seg[thl:], payload)
	p := ipv4Packet("10.244.1.2", "10.244.2.2", protoTCP, 63, seg)
	th := p[ipv4HeaderLen:]
	binary.BigEndian.PutUint16(th[16:], ^fold(sumBytes(th, pseudoHeaderSum(p, protoTCP, len(th)))))
	return p
}

// pattern is payload whose bytes look like TCP flags (PSH, FIN): moving
// it over a header must not be mistaken for that header.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%7) | tcpPSH | tcpFIN
	}
	return b
}

// joinPacket is what a packet becomes on the wire: headers then payload.
func joinPacket(p outPacket) []byte { return append(append([]byte(nil), p.head...), p.body...) }

func TestSegmentTCP(t *testing.T) {
	const mss = 1420
	payload := pattern(60000)
	super := tcpPacket(1000, tcpACK|tcpPSH|tcpCWR, payload)
	headers := make([]byte, headerArena)
	segs, used, err := segmentTCP(super, mss, headers, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := (len(payload) + mss - 1) / mss
	if len(segs) != want || used != want*52 {
		t.Fatalf("%d segments using %d header bytes, want %d using %d", len(segs), used, want, want*52)
	}
	var got []byte
	for i, s := range segs {
		p := joinPacket(s)
		n, ok := ipv4Len(p)
		if !ok || n != len(p) {
			t.Fatalf("segment %d: not one whole IPv4 packet (total length %d, %d bytes)", i, n, len(p))
		}
		if len(p) > 52+mss {
			t.Fatalf("segment %d: %d bytes, more than headers and MSS", i, len(p))
		}
		if refChecksum(p[:ipv4HeaderLen]) != 0 {
			t.Fatalf("segment %d: IP header checksum wrong", i)
		}
		if !tcpChecksumValid(p, ipv4HeaderLen) {
			t.Fatalf("segment %d: TCP checksum wrong", i)
		}
		th := p[ipv4HeaderLen:]
		if seq := binary.BigEndian.Uint32(th[4:]); seq != 1000+uint32(i*mss) {
			t.Fatalf("segment %d: sequence number %d", i, seq)
		}
		if id := binary.BigEndian.Uint16(p[4:]); id != 0x1234+uint16(i) {
			t.Fatalf("segment %d: IP ID %#x", i, id)
		}
		flags := tcpACK
		if i == 0 {
			flags |= tcpCWR
		}
		if i == len(segs)-1 {
			flags |= tcpPSH
		}
		if th[13] != byte(flags) {
			t.Fatalf("segment %d: flags %#x, want %#x", i, th[13], flags)
		}
		got = append(got, s.body...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("the segments' payloads are not the payload")
	}

	// Not enough room for the headers, or not TCP: refused.
	if _, _, err := segmentTCP(super, mss, headers[:100], nil); err == nil {
		t.Error("segmented into too small a header buffer")
	}
	if _, _, err := segmentTCP(icmpEcho("10.244.1.2", "10.244.2.2"), mss, headers, nil); err == nil {
		t.Error("segmented an ICMP packet")
	}
}

func TestCompleteChecksum(t *testing.T) {
	p := tcpPacket(1, tcpACK, pattern(999))
	want := append([]byte(nil), p...)
	// What the kernel hands over with CHECKSUM_PARTIAL: the field holds
	// the pseudo-header's sum.
	binary.BigEndian.PutUint16(p[ipv4HeaderLen+16:], fold(pseudoHeaderSum(p, protoTCP, len(p)-ipv4HeaderLen)))
	if err := completeChecksum(p, vnetHdr{flags: vnetFlagNeedsCsum, csumStart: ipv4HeaderLen, csumOffset: 16}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, want) {
		t.Fatalf("checksum %x, want %x", p[ipv4HeaderLen+16:ipv4HeaderLen+18], want[ipv4HeaderLen+16:ipv4HeaderLen+18])
	}
	// Nowhere but in the TCP header's checksum field: not beyond the
	// packet, nor over the IP header (csum_start 0 and offset 12 would
	// sum the packet into its source address).
	for _, h := range []vnetHdr{
		{csumStart: uint16(len(p)), csumOffset: 16},
		{csumStart: ipv4HeaderLen, csumOffset: uint16(len(p))},
		{csumStart: 0, csumOffset: 12},
		{csumStart: 0, csumOffset: 36},
		{csumStart: ipv4HeaderLen, csumOffset: 6},
	} {
		if err := completeChecksum(p, h); err == nil || !bytes.Equal(p, want) {
			t.Errorf("completed a checksum at %d+%d (error %v)", h.csumStart, h.csumOffset, err)
		}
	}
}

// received lays packets out as a receive buffer does: vnetHdrLen bytes of
// headroom, then the datagrams back to back (one UDP GRO receive). It
// returns the buffer and the packets' offsets.
func received(pkts ...[]byte) ([]byte, []int) {
	buf := make([]byte, vnetHdrLen, recvBufSize)
	var offs []int
	for _, p := range pkts {
		offs = append(offs, len(buf))
		buf = append(buf, p...)
	}
	return buf[:cap(buf)], offs
}

// coalesce runs packets laid out in one receive buffer through a
// coalescer and returns the frames it writes.
func coalesce(pkts ...[]byte) []vnetFrame {
	buf, offs := received(pkts...)
	var out []vnetFrame
	c := &coalescer{write: func(f []byte) {
		out = append(out, vnetFrame{decodeVnetHdr(f), append([]byte(nil), f[vnetHdrLen:]...)})
	}}
	for i, p := range pkts {
		c.add(buf, offs[i], len(p))
	}
	c.flush()
	return out
}

type vnetFrame struct {
	hdr vnetHdr
	pkt []byte
}

func TestCoalesceSegments(t *testing.T) {
	const mss = 1420
	payload := pattern(40*mss + 100)
	super := tcpPacket(5000, tcpACK|tcpPSH, payload)
	segs, _, err := segmentTCP(super, mss, make([]byte, headerArena), nil)
	if err != nil {
		t.Fatal(err)
	}
	var wire [][]byte
	for _, s := range segs {
		wire = append(wire, joinPacket(s))
	}
	out := coalesce(wire...)
	if len(out) != 1 {
		t.Fatalf("%d frames, want the segments coalesced into 1", len(out))
	}
	f := out[0]
	wantHdr := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, hdrLen: 52, gsoSize: mss, csumStart: 20, csumOffset: 16}
	if f.hdr != wantHdr {
		t.Errorf("virtio-net header %+v, want %+v", f.hdr, wantHdr)
	}
	if n, ok := ipv4Len(f.pkt); !ok || n != len(super) || refChecksum(f.pkt[:ipv4HeaderLen]) != 0 {
		t.Errorf("super-packet: total length %d (%v), want %d, with a valid header checksum", n, ok, len(super))
	}
	if !bytes.Equal(f.pkt[52:], payload) {
		t.Error("the super-packet's payload is not the segments' payloads in order")
	}
	if th := f.pkt[ipv4HeaderLen:]; th[13] != tcpACK|tcpPSH || binary.BigEndian.Uint32(th[4:]) != 5000 {
		t.Errorf("super-packet: flags %#x seq %d, want ACK|PSH and 5000", th[13], binary.BigEndian.Uint32(th[4:]))
	}
	// The kernel completes the checksum from the pseudo-header's sum.
	check := append([]byte(nil), f.pkt...)
	if err := completeChecksum(check, f.hdr); err != nil || !tcpChecksumValid(check, ipv4HeaderLen) {
		t.Errorf("the partial checksum does not complete to a valid one (%v)", err)
	}
}

func TestCoalesceKeepsApart(t *testing.T) {
	a0 := tcpPacket(100, tcpACK, pattern(1000))
	a1 := tcpPacket(1100, tcpACK, pattern(1000))
	a2 := tcpPacket(2100, tcpACK, pattern(1000))
	gap := tcpPacket(2200, tcpACK, pattern(1000))
	long := tcpPacket(1100, tcpACK, pattern(1001))
	short := tcpPacket(1100, tcpACK, pattern(500))
	syn := tcpPacket(1100, tcpACK|tcpSYN, pattern(1000))
	bad := tcpPacket(1100, tcpACK, pattern(1000))
	bad[len(bad)-1] ^= 0xff
	other := tcpPacket(1100, tcpACK, pattern(1000))
	binary.BigEndian.PutUint16(other[ipv4HeaderLen:], 40001) // another source port
	th := other[ipv4HeaderLen:]
	th[16], th[17] = 0, 0
	binary.BigEndian.PutUint16(th[16:], ^fold(sumBytes(th, pseudoHeaderSum(other, protoTCP, len(th)))))
	pshFirst := tcpPacket(100, tcpACK|tcpPSH, pattern(1000))
	ping := icmpEcho("10.244.1.2", "10.244.2.2")

	for _, c := range []struct {
		name  string
		pkts  [][]byte
		sizes []int // the frames' packet sizes
	}{
		{"a flow", [][]byte{a0, a1, a2}, []int{52 + 3000}},
		{"sequence gap", [][]byte{a0, a1, gap}, []int{52 + 2000, 1052}},
		{"longer segment", [][]byte{a0, long}, []int{1052, 1053}},
		{"short segment ends", [][]byte{a0, short, a2}, []int{52 + 1500, 1052}},
		{"SYN", [][]byte{a0, syn}, []int{1052, 1052}},
		{"bad checksum", [][]byte{a0, bad}, []int{1052, 1052}},
		{"another flow", [][]byte{a0, other}, []int{1052, 1052}},
		{"PSH first", [][]byte{pshFirst, a1}, []int{1052, 1052}},
		{"ICMP between", [][]byte{a0, ping, a1}, []int{1052, len(ping), 1052}},
	} {
		out := coalesce(c.pkts...)
		var sizes []int
		for _, f := range out {
			sizes = append(sizes, len(f.pkt))
			if f.hdr.gsoType == vnetGSONone && f.hdr != (vnetHdr{}) {
				t.Errorf("%s: a single packet with virtio-net header %+v", c.name, f.hdr)
			}
		}
		if fmt.Sprint(sizes) != fmt.Sprint(c.sizes) {
			t.Errorf("%s: frames of %v bytes, want %v", c.name, sizes, c.sizes)
		}
	}

	// Single packets go out exactly as they came.
	out := coalesce(ping, bad)
	if len(out) != 2 || !bytes.Equal(out[0].pkt, ping) || !bytes.Equal(out[1].pkt, bad) {
		t.Error("packets that are not coalesced were changed")
	}
}

// TestCoalesceAcrossReceives checks that segments that arrive as separate
// datagrams (from a peer without UDP GSO, such as upstream's flanneld)
// are coalesced too.
func TestCoalesceAcrossReceives(t *testing.T) {
	var out []vnetFrame
	c := &coalescer{write: func(f []byte) {
		out = append(out, vnetFrame{decodeVnetHdr(f), append([]byte(nil), f[vnetHdrLen:]...)})
	}}
	for i := range 10 {
		buf, offs := received(tcpPacket(uint32(i*1000), tcpACK, pattern(1000)))
		c.add(buf, offs[0], 1052)
	}
	c.flush()
	if len(out) != 1 || len(out[0].pkt) != 52+10000 {
		t.Fatalf("%d frames, want one of %d bytes", len(out), 52+10000)
	}
}
