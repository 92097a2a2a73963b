package udp

// Segmentation and checksum offloads between flanneld and the TUN device.
// flannel0 is opened with virtio-net headers (IFF_VNET_HDR) and TCP
// segmentation offload: the kernel hands over TCP super-packets of up to
// 64 KiB, which are cut here into the MSS-sized packets of the wire format
// (each sent as one datagram, with UDP GSO: the kernel cuts one send into
// datagrams), and takes back super-packets coalesced here from the
// segments received, so that the kernel handles each 64 KiB once rather
// than per packet. The header is only between flanneld and the kernel:
// what goes on the wire is plain IPv4 packets.

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// vnetHdrLen is the size of struct virtio_net_hdr, the header in front of
// every packet read from or written to the TUN device.
const vnetHdrLen = 10

// virtio_net_hdr flags and GSO types (include/uapi/linux/virtio_net.h).
const (
	vnetFlagNeedsCsum = 1
	vnetGSONone       = 0
	vnetGSOTCPv4      = 1
	vnetGSOECN        = 0x80
)

// vnetHdr is struct virtio_net_hdr. The TUN device uses the machine's
// byte order for it (no TUNSETVNETBE/LE).
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func decodeVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.NativeEndian.Uint16(b[2:]),
		gsoSize:    binary.NativeEndian.Uint16(b[4:]),
		csumStart:  binary.NativeEndian.Uint16(b[6:]),
		csumOffset: binary.NativeEndian.Uint16(b[8:]),
	}
}

func (h vnetHdr) encode(b []byte) {
	b[0], b[1] = h.flags, h.gsoType
	binary.NativeEndian.PutUint16(b[2:], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:], h.csumOffset)
}

// errOffload is wrapped by the errors about packets the device handed
// over that flanneld cannot turn into wire packets.
var errOffload = errors.New("unusable packet from the TUN device")

// The virtio-net headers that do not fit their packet (checkOffload).
// They are values made once: refusing a frame costs no allocation.
var (
	errGSOType   = fmt.Errorf("%w: unknown GSO type", errOffload)
	errGSOPacket = fmt.Errorf("%w: TCP segmentation of what is not a whole, unfragmented TCP segment", errOffload)
	errGSOSize   = fmt.Errorf("%w: TCP segmentation with gso_size 0", errOffload)
	errHdrLen    = fmt.Errorf("%w: hdr_len past the frame", errOffload)
	errCsumField = fmt.Errorf("%w: partial checksum not in a TCP or UDP header's checksum field", errOffload)
)

// Where TCP and UDP keep their checksums, from the start of their headers.
const (
	tcpCsumOffset = 16
	udpCsumOffset = 6
)

// checkOffload checks that the virtio-net header h fits the well-formed
// IPv4 packet pkt it came with (frameLen bytes followed the header in the
// frame, pkt and maybe padding), so that acting on it cannot change
// anything in pkt but a transport checksum, nor read or write outside it:
//   - the GSO type is none or TCPv4, with or without ECN;
//   - TCPv4 (checkGSO): pkt is a TCP segment, not a fragment, with its
//     whole TCP header; gso_size is not 0; hdr_len does not go past the
//     frame;
//   - NEEDS_CSUM: the checksum is one checksumField accepts.
//
// The other flags (DATA_VALID) are ignored, and so are csum_start and
// csum_offset without NEEDS_CSUM, as the virtio-net header defines them.
func checkOffload(pkt []byte, h vnetHdr, frameLen int) error {
	switch h.gsoType {
	case vnetGSONone:
	case vnetGSOTCPv4, vnetGSOTCPv4 | vnetGSOECN:
		if err := checkGSO(pkt, h, frameLen); err != nil {
			return err
		}
	default:
		return errGSOType
	}
	if h.flags&vnetFlagNeedsCsum != 0 {
		if _, err := checksumField(pkt, h); err != nil {
			return err
		}
	}
	return nil
}

// checkGSO checks the GSO fields of h, of type TCPv4, against pkt (see
// checkOffload). hdr_len is how much of the packet the kernel had in its
// linear part, a hint only (the kernel itself, reading a frame from a TUN
// device, raises one too small): segmentTCP takes the header lengths from
// the headers, so only an hdr_len past the frame is refused.
func checkGSO(pkt []byte, h vnetHdr, frameLen int) error {
	iph := ihl(pkt)
	if pkt[9] != protoTCP || isFragment(pkt) || len(pkt) < iph+tcpHeaderLen {
		return errGSOPacket
	}
	if thl := int(pkt[iph+12]>>4) * 4; thl < tcpHeaderLen || len(pkt) < iph+thl {
		return errGSOPacket
	}
	if h.gsoSize == 0 {
		return errGSOSize
	}
	if int(h.hdrLen) > frameLen {
		return errHdrLen
	}
	return nil
}

// checksumField returns the offset in the well-formed IPv4 packet pkt of
// the checksum the virtio-net header h leaves partial (NEEDS_CSUM), which
// must be one the kernel leaves partial: that of the TCP or UDP header
// that follows the IP header (csum_start is the IP header's length,
// csum_offset 16 for TCP or 6 for UDP, as the IP protocol says), or that
// of an inner TCP or UDP header in a tunnel (IP in IP, GRE, a UDP tunnel:
// the kernel leaves the inner checksum to a device that offloads
// checksums of encapsulated packets, as TUN devices do on recent
// kernels), at least an IPv4 header past the IP header, so past any outer
// UDP header. Either way the transport header must be whole in pkt: the
// checksum lies in the IP payload, past the outer header, and completing
// it changes nothing that routes the packet.
func checksumField(pkt []byte, h vnetHdr) (int, error) {
	iph, start, off := ihl(pkt), int(h.csumStart), int(h.csumOffset)
	thl := 0
	switch proto := pkt[9]; {
	case start == iph && proto == protoTCP && off == tcpCsumOffset:
		thl = tcpHeaderLen
	case start == iph && proto == protoUDP && off == udpCsumOffset:
		thl = udpHeaderLen
	case start >= iph+ipv4HeaderLen && tunnels(proto) && off == tcpCsumOffset:
		thl = tcpHeaderLen
	case start >= iph+ipv4HeaderLen && tunnels(proto) && off == udpCsumOffset:
		thl = udpHeaderLen
	default:
		return 0, errCsumField
	}
	if start+thl > len(pkt) {
		return 0, errCsumField
	}
	return start + off, nil
}

// tunnels says whether packets of IP protocol proto may carry packets.
func tunnels(proto uint8) bool {
	return proto == protoUDP || proto == protoIPIP || proto == protoIPv6 || proto == protoGRE
}

// completeChecksum finishes the transport checksum of a packet the kernel
// left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum field holds the
// pseudo-header's sum; the rest is to be summed from csumStart). It
// refuses, changing nothing, a checksum that checksumField refuses.
func completeChecksum(pkt []byte, h vnetHdr) error {
	at, err := checksumField(pkt, h)
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint16(pkt[at:], ^fold(sumBytes(pkt[h.csumStart:], 0)))
	return nil
}

// outPacket is one packet to send: its headers and its payload, apart, so
// that segmenting a super-packet copies headers only.
type outPacket struct {
	head, body []byte
}

func (p outPacket) len() int { return len(p.head) + len(p.body) }

// tcpFlags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

// segmentTCP cuts the TCP/IPv4 super-packet pkt into segments of at most
// mss payload bytes, as the kernel's TSO would: each segment gets a copy
// of the headers, written into headers, with its own IP total length, IP
// ID (incremented), header checksum, sequence number, flags (CWR only on
// the first, FIN and PSH only on the last) and TCP checksum; its payload
// stays in pkt. The segments are appended to out; used is how much of
// headers they take. It fails when pkt is not such a packet or headers is
// too small.
func segmentTCP(pkt []byte, mss int, headers []byte, out []outPacket) (_ []outPacket, used int, _ error) {
	total, ok := ipv4Len(pkt)
	if !ok || pkt[9] != protoTCP || isFragment(pkt) || mss <= 0 {
		return out, 0, errOffload
	}
	pkt = pkt[:total]
	iph := ihl(pkt)
	if len(pkt) < iph+tcpHeaderLen {
		return out, 0, errOffload
	}
	thl := int(pkt[iph+12]>>4) * 4
	hl := iph + thl
	if thl < tcpHeaderLen || len(pkt) < hl {
		return out, 0, errOffload
	}
	payload := pkt[hl:]
	n := max((len(payload)+mss-1)/mss, 1)
	if n*hl > len(headers) {
		return out, 0, errOffload
	}
	id := binary.BigEndian.Uint16(pkt[4:])
	seq := binary.BigEndian.Uint32(pkt[iph+4:])
	flags := pkt[iph+13]
	// The addresses, protocol and TCP header but for what changes are the
	// same in every segment: sum them once.
	tmpl := pkt[:hl]
	for i := range n {
		body := payload[min(i*mss, len(payload)):min((i+1)*mss, len(payload))]
		h := headers[i*hl : (i+1)*hl]
		copy(h, tmpl)
		binary.BigEndian.PutUint16(h[2:], uint16(hl+len(body)))
		binary.BigEndian.PutUint16(h[4:], id+uint16(i))
		setIPv4Checksum(h)
		th := h[iph:]
		binary.BigEndian.PutUint32(th[4:], seq+uint32(i*mss))
		f := flags
		if i > 0 {
			f &^= tcpCWR
		}
		if i < n-1 {
			f &^= tcpFIN | tcpPSH
		}
		th[13] = f
		th[16], th[17] = 0, 0
		acc := pseudoHeaderSum(h, protoTCP, thl+len(body))
		acc = sumBytes(body, sumBytes(th, acc))
		binary.BigEndian.PutUint16(th[16:], ^fold(acc))
		out = append(out, outPacket{head: h, body: body})
	}
	return out, n * hl, nil
}

// tcpChecksumValid says whether the TCP/IPv4 packet pkt (IP header of iph
// bytes) has a correct checksum.
func tcpChecksumValid(pkt []byte, iph int) bool {
	return fold(sumBytes(pkt[iph:], pseudoHeaderSum(pkt, protoTCP, len(pkt)-iph))) == 0xffff
}

// coalescer merges consecutive segments of one TCP flow, received from a
// peer, into super-packets for the TUN device: the reverse of segmentTCP,
// as the kernel's GRO does. It works in the receive buffers themselves: a
// segment's payload is moved to the end of the super-packet being built,
// which starts at its first segment; each buffer keeps vnetHdrLen bytes
// before its first packet for the virtio-net header, and the header of
// any later packet goes over bytes already written out.
//
// A segment joins the super-packet when it follows it exactly (same
// addresses, ports, TOS, TTL, DF, TCP options and acknowledgment, next
// sequence number, only ACK and maybe PSH set, no more payload than the
// first segment's), its checksum is correct, and the result stays within
// 64 KiB; a short segment or PSH ends the super-packet. Anything else is
// written as it came.
type coalescer struct {
	write func(frame []byte) // writes a virtio-net header and packet to the device

	buf        []byte // holds the super-packet being built
	start, end int    // its bytes; its virtio-net header goes before start
	segments   int
	hl, mss    int // its first segment's header and payload lengths
	nextSeq    uint32
	open       bool // more segments may join
}

// add handles the packet of n bytes at buf[off:], a well-formed IPv4
// packet; off is at least vnetHdrLen, and the bytes before it may be
// overwritten once everything before them is written.
func (c *coalescer) add(buf []byte, off, n int) {
	pkt := buf[off : off+n]
	if c.open && c.joins(pkt) {
		// The move may overwrite pkt's headers: read them first.
		psh := pkt[ipv4HeaderLen+13]&tcpPSH != 0
		body := pkt[c.hl:]
		copy(c.buf[c.end:], body)
		c.end += len(body)
		c.segments++
		c.nextSeq += uint32(len(body))
		if psh {
			c.buf[c.start+ipv4HeaderLen+13] |= tcpPSH
		}
		c.open = !psh && len(body) == c.mss
		return
	}
	c.flush()
	if hl, payload, ok := c.startable(pkt); ok {
		c.buf, c.start, c.end = buf, off, off+n
		c.segments, c.hl, c.mss = 1, hl, payload
		c.nextSeq = binary.BigEndian.Uint32(pkt[ipv4HeaderLen+4:]) + uint32(payload)
		c.open = true
		return
	}
	c.writeSingle(buf, off, n)
}

// startable says whether pkt may start a super-packet: a TCP/IPv4 segment
// without IP options, not a fragment, with payload, only ACK set, and a
// correct checksum; it returns its header and payload lengths.
func (c *coalescer) startable(pkt []byte) (hl, payload int, ok bool) {
	if pkt[0] != 0x45 || pkt[9] != protoTCP || isFragment(pkt) || len(pkt) < ipv4HeaderLen+tcpHeaderLen {
		return 0, 0, false
	}
	th := pkt[ipv4HeaderLen:]
	thl := int(th[12]>>4) * 4
	hl = ipv4HeaderLen + thl
	if thl < tcpHeaderLen || len(pkt) <= hl || th[13] != tcpACK || !tcpChecksumValid(pkt, ipv4HeaderLen) {
		return 0, 0, false
	}
	return hl, len(pkt) - hl, true
}

// joins says whether pkt extends the super-packet being built.
func (c *coalescer) joins(pkt []byte) bool {
	head := c.buf[c.start:c.end]
	hl := c.hl
	if len(pkt) <= hl || len(pkt)-hl > c.mss || c.end-c.start+len(pkt)-hl > maxIPv4Len || c.end+len(pkt)-hl > len(c.buf) ||
		pkt[0] != 0x45 || pkt[9] != protoTCP || isFragment(pkt) {
		return false
	}
	th, hth := pkt[ipv4HeaderLen:], head[ipv4HeaderLen:]
	switch {
	case pkt[1] != head[1], pkt[8] != head[8], pkt[6]&0x40 != head[6]&0x40: // TOS, TTL, DF
		return false
	case string(pkt[12:20]) != string(head[12:20]): // addresses
		return false
	case string(th[0:4]) != string(hth[0:4]), string(th[8:13]) != string(hth[8:13]): // ports, ack, data offset
		return false
	case th[13] != tcpACK && th[13] != tcpACK|tcpPSH:
		return false
	case binary.BigEndian.Uint32(th[4:]) != c.nextSeq:
		return false
	case string(th[tcpHeaderLen:hl-ipv4HeaderLen]) != string(hth[tcpHeaderLen:hl-ipv4HeaderLen]): // options
		return false
	}
	return tcpChecksumValid(pkt, ipv4HeaderLen)
}

// flush writes the super-packet being built, if any.
func (c *coalescer) flush() {
	if c.segments == 0 {
		return
	}
	buf, start, end := c.buf, c.start, c.end
	segments := c.segments
	c.segments, c.open, c.buf = 0, false, nil
	if segments == 1 {
		c.writeSingle(buf, start, end-start)
		return
	}
	pkt := buf[start:end]
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	setIPv4Checksum(pkt)
	// CHECKSUM_PARTIAL: the kernel sums from csumStart into a checksum
	// field that holds the pseudo-header's sum.
	binary.BigEndian.PutUint16(pkt[ipv4HeaderLen+16:], fold(pseudoHeaderSum(pkt, protoTCP, len(pkt)-ipv4HeaderLen)))
	vnetHdr{
		flags:      vnetFlagNeedsCsum,
		gsoType:    vnetGSOTCPv4,
		hdrLen:     uint16(c.hl),
		gsoSize:    uint16(c.mss),
		csumStart:  ipv4HeaderLen,
		csumOffset: 16,
	}.encode(buf[start-vnetHdrLen:])
	c.write(buf[start-vnetHdrLen : end])
}

// writeSingle writes the packet at buf[off:off+n] as it is.
func (c *coalescer) writeSingle(buf []byte, off, n int) {
	clear(buf[off-vnetHdrLen : off])
	c.write(buf[off-vnetHdrLen : off+n])
}
