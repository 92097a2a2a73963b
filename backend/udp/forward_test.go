package udp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/flanneld/flanneld/subnet"
)

func lease(name, sn, pub string) *subnet.Lease {
	return &subnet.Lease{Name: name, Subnet: netip.MustParsePrefix(sn),
		Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(pub), BackendType: Type}}
}

// testForwarder is this node 10.244.1.0/24 with peers n2 (10.244.2.0/24
// at 192.168.100.12) and n3 (10.244.3.0/24 at 192.168.100.13).
func testForwarder() *forwarder {
	f := newForwarder(defaultPort, 1472)
	f.local.Store(newLocalNet(netip.MustParsePrefix("10.244.1.0/24")))
	f.peers.set("n2", lease("n2", "10.244.2.0/24", "192.168.100.12"))
	f.peers.set("n3", lease("n3", "10.244.3.0/24", "192.168.100.13"))
	return f
}

func addr(s string) uint32 { return addrToUint32(netip.MustParseAddr(s)) }

// frame puts a virtio-net header in front of pkt.
func frame(h vnetHdr, pkt []byte) []byte {
	f := make([]byte, vnetHdrLen+len(pkt))
	h.encode(f)
	copy(f[vnetHdrLen:], pkt)
	return f
}

// route runs one egress round over frames.
func route(e *egress, frames ...[]byte) {
	e.begin()
	for _, f := range frames {
		e.take(f)
	}
	e.end()
}

// kernelSegments is what the kernel makes of one send: the bytes of its
// packets cut every segSize bytes into datagrams (UDP GSO), or one
// datagram when segSize is 0.
func kernelSegments(pkts []outPacket, segSize int) [][]byte {
	var all []byte
	for _, p := range pkts {
		all = append(all, joinPacket(p)...)
	}
	if segSize == 0 {
		return [][]byte{all}
	}
	var out [][]byte
	for len(all) > 0 {
		n := min(segSize, len(all))
		out = append(out, all[:n])
		all = all[n:]
	}
	return out
}

// sent returns, per peer, the datagrams the egress's batches make.
func sent(t *testing.T, e *egress) map[string][][]byte {
	t.Helper()
	out := map[string][][]byte{}
	for i := range e.batches {
		b := &e.batches[i]
		pkts := e.packets(b)
		seg := 0
		if len(pkts) > 1 {
			seg = b.segSize
		}
		total := 0
		for _, p := range pkts {
			total += p.len()
		}
		if len(pkts) > maxSegments || total > maxSendPayload {
			t.Errorf("send of %d packets, %d bytes: more than the kernel takes", len(pkts), total)
		}
		out[b.to.name] = append(out[b.to.name], kernelSegments(pkts, seg)...)
	}
	return out
}

func TestEgressRoutes(t *testing.T) {
	f := testForwarder()
	e := newEgress(f)
	toN2 := icmpEcho("10.244.1.5", "10.244.2.7")
	toN3 := icmpEcho("10.244.1.5", "10.244.3.7")
	route(e, frame(vnetHdr{}, toN2), frame(vnetHdr{}, toN3), frame(vnetHdr{}, toN2))
	got := sent(t, e)
	if len(got["n2"]) != 2 || len(got["n3"]) != 1 {
		t.Fatalf("datagrams to n2: %d, to n3: %d; want 2 and 1", len(got["n2"]), len(got["n3"]))
	}
	d := got["n2"][0]
	if d[8] != 63 {
		t.Errorf("TTL %d, want 63 (decremented)", d[8])
	}
	if refChecksum(d[:ipv4HeaderLen]) != 0 {
		t.Error("header checksum wrong after the TTL decrement")
	}
	if e.batches[0].to.addr.String() != "192.168.100.12:8285" {
		t.Errorf("sent to %s, want 192.168.100.12:8285", e.batches[0].to.addr)
	}
	if len(e.replies) != 0 {
		t.Errorf("%d ICMP errors, want none", len(e.replies))
	}
}

func TestEgressUnreachable(t *testing.T) {
	f := testForwarder()
	e := newEgress(f)
	nowhere := icmpEcho("10.244.1.5", "10.244.9.9")
	expiring := icmpEcho("10.244.1.5", "10.244.2.7")
	expiring[8] = 1
	setIPv4Checksum(expiring)
	route(e, frame(vnetHdr{}, nowhere), frame(vnetHdr{}, expiring), []byte{1, 2, 3}, frame(vnetHdr{}, []byte{0x60, 0, 0, 0}))
	if len(e.batches) != 0 {
		t.Fatalf("%d sends, want none", len(e.batches))
	}
	counts := f.drops.snapshot()
	for reason, want := range map[string]uint64{"no_route": 1, "ttl_expired": 1, "invalid": 2} {
		if counts[reason] != want {
			t.Errorf("dropped for %s: %d, want %d", reason, counts[reason], want)
		}
	}
	if len(e.replies) != 2 {
		t.Fatalf("%d ICMP errors, want 2", len(e.replies))
	}
	for i, want := range [][2]byte{{icmpDestUnreachable, icmpNetUnreachable}, {icmpTimeExceeded, icmpTTLExceeded}} {
		r := e.replies[i]
		if decodeVnetHdr(r) != (vnetHdr{}) {
			t.Errorf("reply %d: virtio-net header %+v, want none", i, decodeVnetHdr(r))
		}
		msg := r[vnetHdrLen:]
		if uint32ToAddr(dstAddr(msg)).String() != "10.244.1.5" || uint32ToAddr(srcAddr(msg)).String() != "10.244.1.0" {
			t.Errorf("reply %d: from %s to %s, want from 10.244.1.0 to 10.244.1.5", i, uint32ToAddr(srcAddr(msg)), uint32ToAddr(dstAddr(msg)))
		}
		if got := [2]byte{msg[20], msg[21]}; got != want {
			t.Errorf("reply %d: ICMP type/code %v, want %v", i, got, want)
		}
	}
}

// TestEgressSegmentsOnePacketPerDatagram checks the wire format: a 64 KiB
// TCP super-packet from the TUN device leaves as MSS-sized IPv4 packets,
// each exactly one datagram once the kernel has cut the sends (UDP GSO).
func TestEgressSegmentsOnePacketPerDatagram(t *testing.T) {
	for _, gso := range []bool{true, false} {
		t.Run(fmt.Sprintf("gso=%v", gso), func(t *testing.T) {
			f := testForwarder()
			e := newEgress(f)
			if !gso {
				e.segLimit = 1
			}
			const mss = 1420
			super := tcpPacket(1, tcpACK|tcpPSH, pattern(65535-52))
			super[8] = 64
			setIPv4Checksum(super)
			route(e, frame(vnetHdr{gsoType: vnetGSOTCPv4, gsoSize: mss, hdrLen: 52, csumStart: 20, csumOffset: 16}, super),
				frame(vnetHdr{}, icmpEcho("10.244.1.5", "10.244.2.7")))
			got := sent(t, e)["n2"]
			want := (65535-52+mss-1)/mss + 1
			if len(got) != want {
				t.Fatalf("%d datagrams, want %d", len(got), want)
			}
			var payload []byte
			for i, d := range got {
				n, ok := ipv4Len(d)
				if !ok || n != len(d) {
					t.Fatalf("datagram %d (%d bytes) is not exactly one IPv4 packet (total length %d)", i, len(d), n)
				}
				if len(d) > 1472 {
					t.Fatalf("datagram %d: %d bytes, more than flannel0's MTU", i, len(d))
				}
				if d[8] != 63 || refChecksum(d[:ipv4HeaderLen]) != 0 {
					t.Fatalf("datagram %d: TTL %d or header checksum wrong", i, d[8])
				}
				if d[9] == protoTCP {
					if !tcpChecksumValid(d, ipv4HeaderLen) {
						t.Fatalf("datagram %d: TCP checksum wrong", i)
					}
					payload = append(payload, d[52:]...)
				}
			}
			if string(payload) != string(pattern(65535-52)) {
				t.Error("the datagrams do not carry the super-packet's payload in order")
			}
			if gso && len(e.batches) > 3 {
				t.Errorf("%d sends, want the segments batched (at most 64 per send)", len(e.batches))
			}
		})
	}
}

// udpPacket is a UDP/IPv4 datagram from 10.244.1.2:40000 to
// 10.244.2.2:4789 carrying payload, without checksum.
func udpPacket(payload []byte) []byte {
	seg := make([]byte, udpHeaderLen+len(payload))
	binary.BigEndian.PutUint16(seg[0:], 40000)
	binary.BigEndian.PutUint16(seg[2:], 4789)
	binary.BigEndian.PutUint16(seg[4:], uint16(len(seg)))
	copy(seg[udpHeaderLen:], payload)
	return ipv4Packet("10.244.1.2", "10.244.2.2", protoUDP, 64, seg)
}

// leavePartial leaves the checksum at start+off of p partial, as the
// kernel does (VIRTIO_NET_HDR_F_NEEDS_CSUM): the sum of the
// pseudo-header of the IPv4 header at ip and the transport header at
// start.
func leavePartial(p []byte, ip, start, off int) vnetHdr {
	binary.BigEndian.PutUint16(p[start+off:], fold(pseudoHeaderSum(p[ip:], p[ip+9], len(p)-start)))
	return vnetHdr{flags: vnetFlagNeedsCsum, csumStart: uint16(start), csumOffset: uint16(off)}
}

// transportChecksumValid says whether the transport header at start of
// p, under the IPv4 header at ip, has a correct checksum.
func transportChecksumValid(p []byte, ip, start int) bool {
	return fold(sumBytes(p[start:], pseudoHeaderSum(p[ip:], p[ip+9], len(p)-start))) == 0xffff
}

// TestEgressCompletesPartialChecksum checks the checksums the kernel
// leaves partial: a TCP or UDP packet's own, and an inner TCP header's
// in a tunnel (IP in IP, a UDP tunnel such as VXLAN).
func TestEgressCompletesPartialChecksum(t *testing.T) {
	inner := tcpPacket(1, tcpACK, pattern(300))
	vxlan := append(make([]byte, 8+14), inner...) // VXLAN and Ethernet headers, then the inner packet
	for _, c := range []struct {
		name      string
		pkt       []byte
		ip, start int // the IP and transport headers of the checksum
		off       int
	}{
		{"TCP", tcpPacket(1, tcpACK, pattern(300)), 0, 20, 16},
		{"UDP", udpPacket(pattern(301)), 0, 20, 6},
		{"TCP in IP in IP", ipv4Packet("10.244.1.2", "10.244.2.2", protoIPIP, 64, inner), 20, 40, 16},
		{"TCP in VXLAN", udpPacket(vxlan), 50, 70, 16},
	} {
		f := testForwarder()
		e := newEgress(f)
		route(e, frame(leavePartial(c.pkt, c.ip, c.start, c.off), c.pkt))
		got := sent(t, e)["n2"]
		if len(got) != 1 || !transportChecksumValid(got[0], c.ip, c.start) {
			t.Errorf("%s: the partial checksum was not completed", c.name)
		}
		if c.ip > 0 && string(got[0][c.ip:]) != string(inner) {
			t.Errorf("%s: the inner packet is not the packet tunnelled", c.name)
		}
	}
}

// TestEgressRefusesBadOffloads checks that a frame whose virtio-net header
// does not fit its packet is dropped, counted as bad_offload, and not
// sent. Acting on such a header would change the IP header (a partial
// checksum completed at csum_start 0 overwrites the version, the TTL and
// protocol or the source address, and the packet went out so) or
// segment as TCP what is not TCP.
func TestEgressRefusesBadOffloads(t *testing.T) {
	tcp := tcpPacket(1, tcpACK, pattern(300))
	udp := udpPacket(pattern(300))
	ping := icmpEcho("10.244.1.5", "10.244.2.7")
	shortUDP := ipv4Packet("10.244.1.2", "10.244.2.2", protoUDP, 64, make([]byte, 6))
	shortTCP := ipv4Packet("10.244.1.2", "10.244.2.2", protoTCP, 64, make([]byte, 18))
	big := tcpPacket(1, tcpACK, pattern(3000))
	frag := tcpPacket(1, tcpACK, pattern(3000))
	frag[6] |= 0x20 // more fragments
	setIPv4Checksum(frag)
	csum := func(start, off uint16) vnetHdr {
		return vnetHdr{flags: vnetFlagNeedsCsum, csumStart: start, csumOffset: off}
	}
	tso := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, gsoSize: 100, hdrLen: 52, csumStart: 20, csumOffset: 16}
	with := func(change func(h *vnetHdr)) vnetHdr { h := tso; change(&h); return h }

	for _, c := range []struct {
		name string
		hdr  vnetHdr
		pkt  []byte
	}{
		{"checksum over the version", csum(0, 0), tcp},
		{"checksum over TTL and protocol", csum(0, 8), tcp},
		{"checksum over the header checksum", csum(0, 10), udp},
		{"checksum over the source address", csum(0, 12), tcp},
		{"checksum over the destination address", csum(0, 16), udp},
		{"csum_start in the IP header", csum(12, 8), tcp},
		{"csum_start short of the IP header", csum(19, 17), tcp},
		{"TCP's field in a UDP packet", csum(20, 16), udp},
		{"UDP's field in a TCP packet", csum(20, 6), tcp},
		{"TCP's field in TCP payload", csum(52, 16), tcp},
		{"inner checksum over the outer UDP header", csum(24, 6), udp},
		{"checksum of ICMP", csum(20, 2), ping},
		{"UDP header cut short", csum(20, 6), shortUDP},
		{"csum_start past the packet", csum(65535, 16), tcp},
		{"csum_offset past the packet", csum(20, 65535), tcp},
		{"inner checksum past the packet", csum(uint16(len(udp)-6), 6), udp},
		{"TCPv6 segmentation", with(func(h *vnetHdr) { h.gsoType = 4 }), tcp},
		{"UDP segmentation", with(func(h *vnetHdr) { h.gsoType = 5 }), udp},
		{"ECN without a GSO type", vnetHdr{gsoType: vnetGSOECN}, tcp},
		{"TCP segmentation of UDP", tso, udp},
		{"TCP segmentation of a fragment", tso, frag},
		{"TCP segmentation without a TCP header", tso, shortTCP},
		{"gso_size 0", with(func(h *vnetHdr) { h.gsoSize = 0 }), tcp},
		{"hdr_len past the frame", with(func(h *vnetHdr) { h.hdrLen = uint16(len(tcp) + 1) }), tcp},
		{"gso_size too small for the headers", with(func(h *vnetHdr) { h.gsoSize = 1 }), big},
		{"segmentation with the checksum over the source address", with(func(h *vnetHdr) { h.csumStart, h.csumOffset = 0, 12 }), tcp},
	} {
		f := testForwarder()
		e := newEgress(f)
		route(e, frame(c.hdr, c.pkt))
		if len(e.batches) != 0 || len(e.replies) != 0 {
			t.Errorf("%s: %d sends, %d ICMP errors; want none", c.name, len(e.batches), len(e.replies))
		}
		counts := f.drops.snapshot()
		if counts["bad_offload"] != 1 {
			t.Errorf("%s: %d dropped for bad_offload, want 1", c.name, counts["bad_offload"])
		}
		for reason, n := range counts {
			if reason != "bad_offload" && n != 0 {
				t.Errorf("%s: %d dropped for %s, want none", c.name, n, reason)
			}
		}
	}
}

// admitted runs datagrams from the address from through admit and
// returns the packets delivered.
func admitted(f *forwarder, from string, segSize int, pkts ...[]byte) [][]byte {
	buf, _ := received(pkts...)
	length := 0
	for _, p := range pkts {
		length += len(p)
	}
	var out [][]byte
	f.admit(buf, vnetHdrLen, length, segSize, addr(from), func(b []byte, off, n int) {
		out = append(out, append([]byte(nil), b[off:off+n]...))
	})
	return out
}

func TestAdmitSourceChecks(t *testing.T) {
	f := testForwarder()
	fromN2 := icmpEcho("10.244.2.7", "10.244.1.5")
	spoofed := icmpEcho("10.244.3.7", "10.244.1.5")   // n3's subnet, sent by n2
	elsewhere := icmpEcho("10.244.2.7", "10.244.3.5") // not for this node
	outside := icmpEcho("8.8.8.8", "10.244.1.5")

	if got := admitted(f, "192.168.100.12", 0, fromN2); len(got) != 1 || string(got[0]) != string(fromN2) {
		t.Fatal("a peer's packet was not delivered as it came")
	}
	for _, c := range []struct {
		name, from string
		pkt        []byte
		reason     string
	}{
		{"not a peer", "192.168.100.99", fromN2, "unknown_source"},
		{"the other peer's subnet", "192.168.100.12", spoofed, "inner_source"},
		{"outside the Network", "192.168.100.12", outside, "inner_source"},
		{"not for this node", "192.168.100.12", elsewhere, "inner_destination"},
		{"not IPv4", "192.168.100.12", []byte{0x60, 0, 0, 0, 0, 0, 0, 0}, "invalid"},
	} {
		before := f.drops.snapshot()[c.reason]
		if got := admitted(f, c.from, 0, c.pkt); len(got) != 0 {
			t.Errorf("%s: delivered", c.name)
		}
		if after := f.drops.snapshot()[c.reason]; after != before+1 {
			t.Errorf("%s: %s drops went from %d to %d, want +1", c.name, c.reason, before, after)
		}
	}

	// A peer that is removed is no longer accepted.
	f.peers.set("n2", nil)
	if got := admitted(f, "192.168.100.12", 0, fromN2); len(got) != 0 {
		t.Error("a removed peer's packet was delivered")
	}
	// A peer whose lease moves is accepted at its new address only.
	f.peers.set("n2", lease("n2", "10.244.2.0/24", "192.168.100.22"))
	if got := admitted(f, "192.168.100.22", 0, fromN2); len(got) != 1 {
		t.Error("the peer's packet from its new address was not delivered")
	}
	if got := admitted(f, "192.168.100.12", 0, fromN2); len(got) != 0 {
		t.Error("a packet from the peer's old address was delivered")
	}
}

// TestAdmitCoalescedReceive checks a receive holding several datagrams
// (UDP GRO): each is checked on its own, and a receive from an unknown
// address counts every datagram.
func TestAdmitCoalescedReceive(t *testing.T) {
	f := testForwarder()
	good := ipv4Packet("10.244.2.7", "10.244.1.5", 17, 64, make([]byte, 80))
	bad := ipv4Packet("10.244.3.7", "10.244.1.5", 17, 64, make([]byte, 80))
	last := ipv4Packet("10.244.2.7", "10.244.1.5", 17, 64, make([]byte, 30))
	got := admitted(f, "192.168.100.12", len(good), good, bad, good, last)
	if len(got) != 3 || len(got[2]) != len(last) {
		t.Fatalf("delivered %d packets, want 3 (the last shorter)", len(got))
	}
	if n := f.drops.snapshot()["inner_source"]; n != 1 {
		t.Errorf("inner_source drops %d, want 1", n)
	}
	admitted(f, "192.168.100.99", len(good), good, good, last)
	if n := f.drops.snapshot()["unknown_source"]; n != 3 {
		t.Errorf("unknown_source drops %d, want 3", n)
	}
}

func TestPeerTable(t *testing.T) {
	tb := newPeerTable(defaultPort)
	tb.set("a", lease("a", "10.244.2.0/24", "192.168.0.2"))
	tb.set("b", lease("b", "10.245.0.0/16", "192.168.0.3"))
	tb.set("c", lease("c", "10.244.3.0/24", "192.168.0.2")) // same host as a
	tb.set("bad", &subnet.Lease{Name: "bad"})
	tb.rlock()
	defer tb.runlock()
	for dst, want := range map[string]string{"10.244.2.9": "a", "10.245.7.7": "b", "10.244.3.1": "c", "10.244.4.1": "", "10.246.0.1": ""} {
		got := ""
		if p := tb.byDestination(addr(dst)); p != nil {
			got = p.name
		}
		if got != want {
			t.Errorf("peer for %s: %q, want %q", dst, got, want)
		}
	}
	if got := tb.bySource(addr("192.168.0.2")); len(got) != 2 {
		t.Errorf("%d peers at 192.168.0.2, want 2", len(got))
	}
	if !fromAny(tb.bySource(addr("192.168.0.2")), addr("10.244.3.4")) || fromAny(tb.bySource(addr("192.168.0.2")), addr("10.245.0.1")) {
		t.Error("inner source check wrong for a host with two subnets")
	}
	if len(tb.byName) != 3 {
		t.Errorf("%d peers, want 3 (a lease without subnet is not a peer)", len(tb.byName))
	}
}

func TestPeerTableRemove(t *testing.T) {
	tb := newPeerTable(defaultPort)
	tb.set("a", lease("a", "10.244.2.0/24", "192.168.0.2"))
	tb.set("b", lease("b", "10.245.0.0/16", "192.168.0.3"))
	tb.set("a", nil)
	tb.set("b", lease("b", "10.244.2.0/24", "192.168.0.4")) // takes a's subnet
	tb.rlock()
	defer tb.runlock()
	if p := tb.byDestination(addr("10.244.2.1")); p == nil || p.name != "b" {
		t.Errorf("10.244.2.1 goes to %v, want b", p)
	}
	if tb.byDestination(addr("10.245.0.1")) != nil || tb.bySource(addr("192.168.0.2")) != nil || tb.bySource(addr("192.168.0.3")) != nil {
		t.Error("a removed or moved peer is still found")
	}
	if len(tb.lengths) != 1 || tb.lengths[0] != 24 {
		t.Errorf("prefix lengths %v, want [24]", tb.lengths)
	}
}

// TestNoAllocations checks that forwarding costs no allocation per packet
// either way: routing and segmenting a super-packet, and admitting and
// coalescing its segments.
func TestNoAllocations(t *testing.T) {
	f := testForwarder()
	e := newEgress(f)
	super := tcpPacket(1, tcpACK, pattern(60000))
	fr := frame(vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, gsoSize: 1420, hdrLen: 52, csumStart: 20, csumOffset: 16}, super)
	work := make([]byte, len(fr))
	route(e, fr) // grow the buffers once
	if n := testing.AllocsPerRun(20, func() {
		copy(work, fr)
		route(e, work)
	}); n != 0 {
		t.Errorf("egress: %v allocations per super-packet", n)
	}

	var pkts [][]byte
	segs, _, _ := segmentTCP(tcpPacket(1, tcpACK, pattern(40*1420)), 1420, make([]byte, headerArena), nil)
	for _, s := range segs {
		p := joinPacket(s)
		copy(p[12:16], []byte{10, 244, 2, 7}) // from n2's subnet
		copy(p[16:20], []byte{10, 244, 1, 5}) // to this node
		setIPv4Checksum(p)
		th := p[ipv4HeaderLen:]
		th[16], th[17] = 0, 0
		binary.BigEndian.PutUint16(th[16:], ^fold(sumBytes(th, pseudoHeaderSum(p, protoTCP, len(th)))))
		pkts = append(pkts, p)
	}
	orig, _ := received(pkts...)
	buf := make([]byte, len(orig))
	length := len(pkts) * len(pkts[0])
	frames := 0
	c := &coalescer{write: func([]byte) { frames++ }}
	deliver := c.add
	from := addr("192.168.100.12")
	if n := testing.AllocsPerRun(20, func() {
		copy(buf, orig)
		f.admit(buf, vnetHdrLen, length, len(pkts[0]), from, deliver)
		c.flush()
	}); n != 0 {
		t.Errorf("ingress: %v allocations per receive", n)
	}
	if frames != 21 { // one super-packet per run, plus the warm-up run
		t.Errorf("%d frames written in 21 runs, want 21", frames)
	}
}
