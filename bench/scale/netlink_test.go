package scale

// Counting what flanneld programmed, cheaply enough to poll every 50 ms at
// 10,000 peers: one raw rtnetlink socket opened inside the node's namespace,
// dump requests filtered by the kernel (NETLINK_GET_STRICT_CHK), and only
// the fixed headers of the answers read (no per-entry allocation).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/flanneld/flanneld/e2e/lab"
)

// routeProtocol marks the routes flanneld installs ("proto 102").
const routeProtocol = 102

// counts is how many of flanneld's entries are on the VXLAN device.
type counts struct {
	routes, neighbours, fdb int
}

func (c counts) String() string {
	return fmt.Sprintf("%d routes, %d neighbours, %d FDB entries", c.routes, c.neighbours, c.fdb)
}

// all reports whether routes, neighbours and FDB entries all number n.
func (c counts) all(n int) bool { return c.routes == n && c.neighbours == n && c.fdb == n }

// counter dumps one namespace's routes, neighbours and FDB entries.
type counter struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// openCounter opens a netlink socket inside namespace ns; it keeps that
// namespace whichever goroutine uses it.
func openCounter(ns string) (*counter, error) {
	c := &counter{fd: -1, buf: make([]byte, 1<<20)}
	err := lab.InNetns(ns, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(c.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		c.close()
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	if err := unix.SetsockoptInt(c.fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1); err != nil {
		c.close()
		return nil, fmt.Errorf("netlink strict checking: %w", err)
	}
	_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	return c, nil
}

func (c *counter) close() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// linkIndex returns the index of device name in namespace ns, 0 when it
// does not exist (yet).
func linkIndex(ns, name string) (int, error) {
	var index int
	err := lab.InNetns(ns, func() error {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return nil // not there yet
		}
		index = ifc.Index
		return nil
	})
	return index, err
}

// Netlink layout (include/uapi/linux/rtnetlink.h, neighbour.h).
const (
	nlmsgHdrLen  = 16
	rtmsgLen     = 12
	ndmsgLen     = 12
	rtaHdrLen    = 4
	nudPermanent = 0x80
	ndaDst       = 1
	ndaIfindex   = 8
	rtaOif       = 4
)

// countRoutes counts routes of the main table with protocol 102 through
// device index.
func (c *counter) countRoutes(index int) (int, error) {
	body := make([]byte, rtmsgLen)
	body[0] = unix.AF_INET
	body[4] = unix.RT_TABLE_MAIN
	body[5] = routeProtocol
	body = appendAttrU32(body, rtaOif, uint32(index))
	n := 0
	err := c.dump(unix.RTM_GETROUTE, body, func(typ uint16, msg []byte) {
		if typ != unix.RTM_NEWROUTE || len(msg) < rtmsgLen {
			return
		}
		if msg[4] != unix.RT_TABLE_MAIN || msg[5] != routeProtocol {
			return
		}
		if oif, ok := attrU32(msg[rtmsgLen:], rtaOif); ok && int(oif) == index {
			n++
		}
	})
	return n, err
}

// countNeighbours counts permanent entries of device index in family
// (AF_INET: neighbours; AF_BRIDGE: FDB entries, which must have a remote).
func (c *counter) countNeighbours(family uint8, index int) (int, error) {
	body := make([]byte, ndmsgLen)
	body[0] = family
	if family == unix.AF_BRIDGE {
		binary.NativeEndian.PutUint32(body[4:], uint32(index))
	} else {
		body = appendAttrU32(body, ndaIfindex, uint32(index))
	}
	n := 0
	err := c.dump(unix.RTM_GETNEIGH, body, func(typ uint16, msg []byte) {
		if typ != unix.RTM_NEWNEIGH || len(msg) < ndmsgLen || msg[0] != family {
			return
		}
		ifindex := int(int32(binary.NativeEndian.Uint32(msg[4:])))
		state := binary.NativeEndian.Uint16(msg[8:])
		if ifindex != index || state&nudPermanent == 0 {
			return
		}
		if family == unix.AF_BRIDGE && !hasAttr(msg[ndmsgLen:], ndaDst) {
			return
		}
		n++
	})
	return n, err
}

// count returns all three counts for device index.
func (c *counter) count(index int) (counts, error) {
	var r counts
	var err error
	if r.routes, err = c.countRoutes(index); err != nil {
		return r, fmt.Errorf("dumping routes: %w", err)
	}
	if r.neighbours, err = c.countNeighbours(unix.AF_INET, index); err != nil {
		return r, fmt.Errorf("dumping neighbours: %w", err)
	}
	if r.fdb, err = c.countNeighbours(unix.AF_BRIDGE, index); err != nil {
		return r, fmt.Errorf("dumping FDB entries: %w", err)
	}
	return r, nil
}

// dump sends one dump request and calls fn with the type and payload of
// every answer.
func (c *counter) dump(typ uint16, body []byte, fn func(typ uint16, payload []byte)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	req := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(body))
	binary.NativeEndian.PutUint32(req[0:], uint32(nlmsgHdrLen+len(body)))
	binary.NativeEndian.PutUint16(req[4:], typ)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], c.seq)
	req = append(req, body...)
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		done, err := walkMessages(c.buf[:n], c.seq, fn)
		if err != nil || done {
			return err
		}
	}
}

// walkMessages calls fn for each message of one datagram of a dump with
// sequence number seq; done is true at NLMSG_DONE.
func walkMessages(b []byte, seq uint32, fn func(typ uint16, payload []byte)) (done bool, err error) {
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		typ := binary.NativeEndian.Uint16(b[4:])
		if l < nlmsgHdrLen || l > len(b) {
			return false, fmt.Errorf("malformed netlink message (length %d of %d)", l, len(b))
		}
		if binary.NativeEndian.Uint32(b[8:]) == seq {
			payload := b[nlmsgHdrLen:l]
			switch typ {
			case unix.NLMSG_DONE:
				return true, nil
			case unix.NLMSG_ERROR:
				if len(payload) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(payload)); errno != 0 {
						return false, unix.Errno(-errno)
					}
				}
				return true, nil
			default:
				fn(typ, payload)
			}
		}
		b = b[align4(l):]
	}
	return false, nil
}

func align4(n int) int { return (n + 3) &^ 3 }

func appendAttrU32(b []byte, typ uint16, v uint32) []byte {
	a := make([]byte, 8)
	binary.NativeEndian.PutUint16(a[0:], 8)
	binary.NativeEndian.PutUint16(a[2:], typ)
	binary.NativeEndian.PutUint32(a[4:], v)
	return append(b, a...)
}

// findAttr returns the payload of attribute typ in a list of attributes.
func findAttr(b []byte, typ uint16) ([]byte, bool) {
	for len(b) >= rtaHdrLen {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		if l < rtaHdrLen || l > len(b) {
			return nil, false
		}
		if binary.NativeEndian.Uint16(b[2:])&^unix.NLA_F_NESTED == typ {
			return b[rtaHdrLen:l], true
		}
		b = b[min(align4(l), len(b)):]
	}
	return nil, false
}

func hasAttr(b []byte, typ uint16) bool {
	_, ok := findAttr(b, typ)
	return ok
}

func attrU32(b []byte, typ uint16) (uint32, bool) {
	v, ok := findAttr(b, typ)
	if !ok || len(v) < 4 {
		return 0, false
	}
	return binary.NativeEndian.Uint32(v), true
}
