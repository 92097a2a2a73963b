package udp

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listenLoopback opens a udpConn on 127.0.0.1 and returns it with its
// address; no root is needed.
func listenLoopback(t *testing.T) (*udpConn, netip.AddrPort) {
	t.Helper()
	c, err := listenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Skipf("no UDP on the loopback interface: %v", err)
	}
	t.Cleanup(c.close)
	sa, err := unix.Getsockname(c.fd)
	if err != nil {
		t.Fatal(err)
	}
	in4 := sa.(*unix.SockaddrInet4)
	return c, netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
}

// sendSuper cuts a 64 KiB TCP super-packet as the egress does and sends
// it to to from c; it returns the packets sent.
func sendSuper(t *testing.T, c *udpConn, to netip.AddrPort) [][]byte {
	t.Helper()
	super := tcpPacket(1, tcpACK|tcpPSH, pattern(65535-52))
	segs, _, err := segmentTCP(super, 1420, make([]byte, headerArena), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := newSender(sendMsgs, sendIovecs)
	var want [][]byte
	for len(segs) > 0 {
		n := min(len(segs), 44) // 44 * 1472 bytes fit in one send
		s.add(to, segs[:n], len(joinPacket(segs[0])))
		for _, p := range segs[:n] {
			want = append(want, joinPacket(p))
		}
		segs = segs[n:]
	}
	c.send(s, func(i int, err error) {
		if isGSOError(err) {
			t.Skipf("no UDP GSO on this kernel: %v", err)
		}
		t.Fatalf("send %d: %v", i, err)
	})
	return want
}

// TestSendOnePacketPerDatagram sends a segmented super-packet with UDP
// GSO to a plain socket, as upstream's flanneld has: every datagram it
// receives must be exactly one of the IPv4 packets.
func TestSendOnePacketPerDatagram(t *testing.T) {
	c, _ := listenLoopback(t)
	if !c.gso.Load() {
		t.Skip("no UDP GSO on this kernel")
	}
	plain, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	want := sendSuper(t, c, plain.LocalAddr().(*net.UDPAddr).AddrPort())
	buf := make([]byte, 1<<16)
	for i, w := range want {
		plain.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := plain.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if string(buf[:n]) != string(w) {
			t.Fatalf("datagram %d: %d bytes, want packet %d (%d bytes) exactly", i, n, i, len(w))
		}
	}
}

// TestReceiveCoalesced sends the same to the forwarder's own socket
// (UDP GRO on): the receives, split at their segment size, give back the
// packets.
func TestReceiveCoalesced(t *testing.T) {
	c, _ := listenLoopback(t)
	if !c.gso.Load() {
		t.Skip("no UDP GSO on this kernel")
	}
	rc, to := listenLoopback(t)
	want := sendSuper(t, c, to)
	r := newReceiver(recvBatch, recvBufSize)
	var got [][]byte
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		n, err := rc.receive(r)
		if errors.Is(err, unix.EAGAIN) {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			length, seg, from, truncated := r.message(i)
			if truncated || uint32ToAddr(from).String() != "127.0.0.1" {
				t.Fatalf("receive %d: truncated %v, from %s", i, truncated, uint32ToAddr(from))
			}
			if seg == 0 {
				seg = length
			}
			data := r.bufs[i][vnetHdrLen : vnetHdrLen+length]
			for len(data) > 0 {
				d := data[:min(seg, len(data))]
				got = append(got, append([]byte(nil), d...))
				data = data[len(d):]
			}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("received %d packets, want %d", len(got), len(want))
	}
	for i := range want {
		if string(got[i]) != string(want[i]) {
			t.Fatalf("packet %d differs", i)
		}
	}
}
