package udp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socketBuffer is the size asked for the socket's send and receive
// buffers: several 64 KiB GSO/GRO super-datagrams in flight.
const socketBuffer = 8 << 20

// udpConn is the backend's UDP socket, bound to the external interface's
// address and the backend's port. The forwarding loop polls it itself,
// outside Go's network poller, so a datagram wakes the thread that
// forwards it and nothing else; receives never wait, sends wait for room
// in the socket's buffer. Datagrams go out and come in in batches
// (sendmmsg, recvmmsg); with UDP GSO one send
// carries up to 64 packets that the kernel cuts into one datagram each,
// and with UDP GRO one receive may return several datagrams of one
// sender, coalesced.
type udpConn struct {
	fd     int
	gso    atomic.Bool // UDP_SEGMENT works; cleared if a send says otherwise
	gro    bool        // UDP_GRO is on
	closed atomic.Bool
}

// errConnClosed is returned by the I/O of a closed udpConn.
var errConnClosed = errors.New("udp socket closed")

// listenUDP opens the socket.
func listenUDP(addr netip.AddrPort) (*udpConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	for _, opt := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt[0], socketBuffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt[1], socketBuffer)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	c := &udpConn{fd: fd}
	_, gsoErr := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	c.gso.Store(gsoErr == nil)
	c.gro = unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	return c, nil
}

// close closes the socket.
func (c *udpConn) close() {
	if c.closed.Swap(true) {
		return
	}
	_ = unix.Close(c.fd)
}

// oobSize is the room for the one control message either way: UDP_SEGMENT
// (a u16) on send, UDP_GRO (an int) on receive.
var oobSize = unix.CmsgSpace(4)

// putSegmentSize writes into oob (oobSize bytes) the UDP_SEGMENT control
// message for segments of size bytes, and returns its length.
func putSegmentSize(oob []byte, size int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	return unix.CmsgSpace(2)
}

// segmentSize returns the UDP_GRO segment size in a received message's
// control data, 0 when the datagram was not coalesced.
func segmentSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO {
			switch {
			case len(data) >= 4:
				return int(int32(binary.NativeEndian.Uint32(data)))
			case len(data) >= 2:
				return int(binary.NativeEndian.Uint16(data))
			}
		}
		oob = rest
	}
	return 0
}

// sockaddr is a peer's address in the kernel's form.
func sockaddr(a netip.AddrPort) unix.RawSockaddrInet4 {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Addr().As4()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], a.Port())
	return sa
}

// addrPortOf is the inverse of sockaddr.
func addrPortOf(sa *unix.RawSockaddrInet4) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
}

// receiver holds the buffers of recvmmsg: up to n receives, each into a
// buffer of size bytes after vnetHdrLen bytes of headroom, several
// datagrams with UDP GRO.
type receiver struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	bufs  [][]byte
	oobs  [][]byte
}

func newReceiver(n, size int) *receiver {
	r := &receiver{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet4, n),
		bufs:  make([][]byte, n),
		oobs:  make([][]byte, n),
	}
	for i := range n {
		r.bufs[i] = make([]byte, size)
		r.oobs[i] = make([]byte, oobSize)
		r.iovs[i].Base = &r.bufs[i][vnetHdrLen]
		r.iovs[i].SetLen(size - vnetHdrLen)
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Control = &r.oobs[i][0]
	}
	return r
}

// receive returns how many receives it filled, without waiting: EAGAIN
// when there is nothing.
func (c *udpConn) receive(r *receiver) (int, error) {
	for i := range r.hdrs {
		h := &r.hdrs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet4
		h.SetControllen(len(r.oobs[i]))
		h.Flags = 0
		r.hdrs[i].Len = 0
	}
	for {
		if c.closed.Load() {
			return 0, errConnClosed
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&r.hdrs[0])),
			uintptr(len(r.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return 0, errno
		}
		return int(n), nil
	}
}

// message describes receive i: its length (the data is at
// bufs[i][vnetHdrLen:]), its UDP GRO segment size (0 when one datagram),
// its source address (0 when not IPv4) and whether the kernel truncated
// it.
func (r *receiver) message(i int) (length, segSize int, from uint32, truncated bool) {
	h := &r.hdrs[i]
	if r.names[i].Family == unix.AF_INET {
		from = binary.BigEndian.Uint32(r.names[i].Addr[:])
	}
	return int(h.Len), segmentSize(r.oobs[i][:h.Hdr.Controllen]), from, h.Hdr.Flags&unix.MSG_TRUNC != 0
}

// sender holds the buffers of sendmmsg.
type sender struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	oobs  [][]byte
	pkts  [][]outPacket // the packets of each message
}

func newSender(msgs, iovs int) *sender {
	s := &sender{
		hdrs:  make([]unix.Mmsghdr, 0, msgs),
		iovs:  make([]unix.Iovec, 0, iovs),
		names: make([]unix.RawSockaddrInet4, msgs),
		oobs:  make([][]byte, msgs),
		pkts:  make([][]outPacket, 0, msgs),
	}
	for i := range s.oobs {
		s.oobs[i] = make([]byte, oobSize)
	}
	return s
}

// reset empties the batch.
func (s *sender) reset() {
	clear(s.pkts)
	clear(s.iovs)
	s.hdrs, s.iovs, s.pkts = s.hdrs[:0], s.iovs[:0], s.pkts[:0]
}

// add queues one send of pkts to to; with segSize > 0, the kernel cuts it
// into datagrams of segSize bytes (UDP GSO). It reports false, queuing
// nothing, when the batch is full.
func (s *sender) add(to netip.AddrPort, pkts []outPacket, segSize int) bool {
	if len(s.hdrs) == cap(s.hdrs) || len(s.iovs)+2*len(pkts) > cap(s.iovs) {
		return false
	}
	first := len(s.iovs)
	for _, p := range pkts {
		for _, b := range [2][]byte{p.head, p.body} {
			if len(b) > 0 {
				iov := unix.Iovec{Base: &b[0]}
				iov.SetLen(len(b))
				s.iovs = append(s.iovs, iov)
			}
		}
	}
	i := len(s.hdrs)
	s.names[i] = sockaddr(to)
	s.hdrs = s.hdrs[:i+1]
	s.pkts = append(s.pkts, pkts)
	h := &s.hdrs[i].Hdr
	*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&s.names[i])), Namelen: unix.SizeofSockaddrInet4, Iov: &s.iovs[first]}
	h.SetIovlen(len(s.iovs) - first)
	if segSize > 0 {
		h.Control = &s.oobs[i][0]
		h.SetControllen(putSegmentSize(s.oobs[i], segSize))
	}
	return true
}

// send sends the batch, as many messages per system call as the kernel
// takes. A message the kernel refuses is reported to failed (with its
// index) and skipped.
func (c *udpConn) send(s *sender, failed func(i int, err error)) {
	for start := 0; start < len(s.hdrs); {
		if c.closed.Load() {
			for i := start; i < len(s.hdrs); i++ {
				failed(i, errConnClosed)
			}
			return
		}
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&s.hdrs[start])),
			uintptr(len(s.hdrs)-start), 0, 0, 0)
		switch {
		case errno == unix.EINTR:
		case errno != 0:
			failed(start, errno)
			start++
		default:
			start += int(n)
		}
	}
}

// isGSOError says whether a send failed because the kernel or the route's
// device cannot segment UDP (no checksum offload, a route MTU smaller than
// the segments).
func isGSOError(err error) bool {
	var errno unix.Errno
	return errors.As(err, &errno) && (errno == unix.EIO || errno == unix.EINVAL || errno == unix.ENOPROTOOPT)
}
