package udp

// The forwarder's per-packet decisions, free of system calls so that they
// are tested without root: egress routes what is read from flannel0 to
// peers and groups it into UDP sends; admit checks the datagrams received
// before their packets are written to flannel0.

import (
	"net/netip"
	"sync/atomic"

	"golang.org/x/time/rate"
)

const (
	// maxSegments is the most datagrams one UDP GSO send may make
	// (UDP_MAX_SEGMENTS, 64 on every kernel with UDP GSO).
	maxSegments = 64
	// maxSendPayload is the most bytes one UDP send may carry.
	maxSendPayload = maxIPv4Len - ipv4HeaderLen - 8
	// icmpRate and icmpBurst bound the ICMP errors the forwarder writes
	// back into flannel0.
	icmpRate  = 1000
	icmpBurst = 100
	// maxRepliesPerRound bounds the ICMP errors made per round.
	maxRepliesPerRound = 8
	// headerArena holds the headers of the segments of one round: enough
	// for a 64 KiB super-packet cut at TCP's least MSS (48 bytes) with
	// the largest headers.
	headerArena = 128 << 10
)

// localNet is this node's side: its subnet, and flannel0's address (the
// source of the ICMP errors the forwarder sends).
type localNet struct {
	prefix, mask uint32
	addr         uint32
}

func newLocalNet(sn netip.Prefix) *localNet {
	sn = sn.Masked()
	a := addrToUint32(sn.Addr())
	return &localNet{prefix: a, mask: ^uint32(0) << (32 - sn.Bits()), addr: a}
}

func (l *localNet) contains(a uint32) bool { return a&l.mask == l.prefix }

// forwarder is the state the forwarding code shares.
type forwarder struct {
	port  int
	mtu   int
	peers *peerTable
	drops *drops
	local atomic.Pointer[localNet] // set by Configure
	icmp  *rate.Limiter

	sys // the device and the socket (forward_linux.go)
}

func newForwarder(port, mtu int) *forwarder {
	return &forwarder{
		port:  port,
		mtu:   mtu,
		peers: newPeerTable(port),
		drops: newDrops(),
		icmp:  rate.NewLimiter(icmpRate, icmpBurst),
	}
}

// sendBatch is a run of consecutive packets for one peer, sent with one
// sendmsg: every packet but the last has exactly segSize bytes, and the
// last no more, so UDP segmentation every segSize bytes (GSO) yields
// exactly one IPv4 packet per datagram, the wire format of the udp
// backend.
type sendBatch struct {
	to         *peer
	start, end int // indexes into egress.pkts
	segSize    int
	closed     bool // the last packet is shorter: nothing may follow
}

// egress is the TUN-to-UDP half: for each round of frames read from
// flannel0 it decides where each packet goes and groups the packets into
// sends. Its buffers are reused from round to round.
type egress struct {
	f *forwarder
	// segLimit is the most packets per send: maxSegments with UDP GSO, 1
	// without.
	segLimit int

	pkts    []outPacket // the packets to send, in order
	segs    []outPacket // scratch: the segments of a super-packet
	batches []sendBatch // over pkts
	headers []byte      // the segments' headers
	used    int         // of headers
	replies [][]byte    // ICMP errors to write back into flannel0, each after a virtio-net header
	replyTo [maxRepliesPerRound][]byte

	// Within a round, the frames read from one flow usually go to the
	// same place.
	last    *peer
	lastDst uint32
	local   *localNet
}

func newEgress(f *forwarder) *egress {
	e := &egress{f: f, segLimit: maxSegments, headers: make([]byte, headerArena)}
	for i := range e.replyTo {
		e.replyTo[i] = make([]byte, vnetHdrLen+icmpMaxLen)
	}
	return e
}

// begin starts a round: the peer table is read-locked until end.
func (e *egress) begin() {
	clear(e.pkts)
	e.pkts, e.batches, e.replies, e.used = e.pkts[:0], e.batches[:0], e.replies[:0], 0
	e.last, e.local = nil, e.f.local.Load()
	e.f.peers.rlock()
}

// end ends the round; the batches and replies stay valid until the next
// begin.
func (e *egress) end() {
	e.f.peers.runlock()
	e.last = nil
}

// take decides where the frame read from flannel0 (virtio-net header and
// packet) goes: it drops what it cannot forward (sending an ICMP error
// back where one is due) or whose virtio-net header does not fit the
// packet, decrements the TTL, cuts a super-packet into segments, and
// queues the packets for their peer. The frame is changed in place and
// must stay untouched until the round's sends are done.
func (e *egress) take(frame []byte) {
	if len(frame) < vnetHdrLen {
		e.f.drops.add(dropInvalid, 1, 0, nil)
		return
	}
	h := decodeVnetHdr(frame)
	pkt := frame[vnetHdrLen:]
	n, ok := ipv4Len(pkt)
	if !ok {
		e.f.drops.add(dropInvalid, 1, 0, pkt)
		return
	}
	pkt = pkt[:n]
	if checkOffload(pkt, h, len(frame)-vnetHdrLen) != nil {
		e.f.drops.add(dropBadOffload, 1, 0, pkt)
		return
	}
	dst := dstAddr(pkt)
	if e.last == nil || dst != e.lastDst {
		e.last, e.lastDst = e.f.peers.byDestination(dst), dst
	}
	to := e.last
	if to == nil {
		e.f.drops.add(dropNoRoute, 1, 0, pkt)
		e.reply(pkt, icmpDestUnreachable, icmpNetUnreachable)
		return
	}
	if !decrementTTL(pkt) {
		e.f.drops.add(dropTTLExpired, 1, 0, pkt)
		e.reply(pkt, icmpTimeExceeded, icmpTTLExceeded)
		return
	}
	e.queue(to, pkt, h)
}

// queue queues the packet pkt, checked by checkOffload, for the peer to:
// its checksum completed, or cut into segments.
func (e *egress) queue(to *peer, pkt []byte, h vnetHdr) {
	if h.gsoType == vnetGSONone {
		if h.flags&vnetFlagNeedsCsum != 0 && completeChecksum(pkt, h) != nil {
			e.f.drops.add(dropBadOffload, 1, 0, pkt)
			return
		}
		e.add(to, outPacket{head: pkt})
		return
	}
	var used int
	var err error
	e.segs, used, err = segmentTCP(pkt, int(h.gsoSize), e.headers[e.used:], e.segs[:0])
	if err != nil {
		// gso_size so small that the segments' headers do not fit.
		e.f.drops.add(dropBadOffload, 1, 0, pkt)
		return
	}
	e.used += used
	for _, s := range e.segs {
		e.add(to, s)
	}
	clear(e.segs)
}

// room says whether the round can take another frame of any kind.
func (e *egress) room() bool { return len(e.headers)-e.used >= headerArena/2 }

// add appends p for peer to to the last batch when segmentation keeps it
// a datagram of its own, else starts a batch.
func (e *egress) add(to *peer, p outPacket) {
	e.pkts = append(e.pkts, p)
	end := len(e.pkts)
	size := p.len()
	if k := len(e.batches); k > 0 {
		b := &e.batches[k-1]
		count := b.end - b.start
		if b.to == to && !b.closed && count < e.segLimit && size <= b.segSize && (count+1)*b.segSize <= maxSendPayload {
			b.end = end
			b.closed = size < b.segSize
			return
		}
	}
	e.batches = append(e.batches, sendBatch{to: to, start: end - 1, end: end, segSize: size})
}

// packets returns the packets of batch b.
func (e *egress) packets(b *sendBatch) []outPacket { return e.pkts[b.start:b.end] }

// reply queues the ICMP error about pkt, unless the rate limit or the
// round's share is exhausted.
func (e *egress) reply(pkt []byte, typ, code uint8) {
	if e.local == nil || len(e.replies) == len(e.replyTo) || !e.f.icmp.Allow() {
		return
	}
	buf := e.replyTo[len(e.replies)]
	if msg := icmpError(buf[vnetHdrLen:], pkt, e.local.addr, typ, code); msg != nil {
		clear(buf[:vnetHdrLen])
		e.replies = append(e.replies, buf[:vnetHdrLen+len(msg)])
	}
}

// admit checks the datagrams of one receive from the address from, at
// buf[off:off+length]: one datagram, or with segSize > 0 several coalesced
// by the kernel (UDP GRO), each segSize bytes but the last. Each must be
// one IPv4 packet, from the subnet of the peer whose public IP sent it, to
// this node's subnet; deliver gets each packet that passes (its offset in
// buf and length).
func (f *forwarder) admit(buf []byte, off, length, segSize int, from uint32, deliver func(buf []byte, off, n int)) {
	if length <= 0 {
		return
	}
	if segSize <= 0 || segSize > length {
		segSize = length
	}
	local := f.local.Load()
	f.peers.rlock()
	defer f.peers.runlock()
	senders := f.peers.bySource(from)
	if len(senders) == 0 || local == nil {
		f.drops.add(dropUnknownSource, (length+segSize-1)/segSize, from, buf[off:off+length])
		return
	}
	for end := off + length; off < end; off += segSize {
		d := buf[off:min(off+segSize, end)]
		n, ok := ipv4Len(d)
		if !ok {
			f.drops.add(dropInvalid, 1, from, d)
			continue
		}
		pkt := d[:n]
		if !fromAny(senders, srcAddr(pkt)) {
			f.drops.add(dropInnerSource, 1, from, pkt)
			continue
		}
		if !local.contains(dstAddr(pkt)) {
			f.drops.add(dropInnerDestination, 1, from, pkt)
			continue
		}
		deliver(buf, off, n)
	}
}

// fromAny says whether src is inside the subnet of one of the peers.
func fromAny(peers []*peer, src uint32) bool {
	for _, p := range peers {
		if p.contains(src) {
			return true
		}
	}
	return false
}
