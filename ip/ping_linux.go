//go:build linux

package ip

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// ICMPPinger sends ICMP echo requests from a raw socket (CAP_NET_RAW), one
// at a time, through the routes of the caller's network namespace.
type ICMPPinger struct {
	id  int
	seq atomic.Uint32
}

// NewICMPPinger returns a pinger with a random echo identifier.
func NewICMPPinger() *ICMPPinger { return &ICMPPinger{id: rand.IntN(1 << 16)} }

// ErrNoAnswer is returned by Ping when no answer came in time.
var ErrNoAnswer = errors.New("no answer")

// Ping sends one echo request to a and waits up to timeout for its answer.
func (p *ICMPPinger) Ping(ctx context.Context, a netip.Addr, timeout time.Duration) (time.Duration, error) {
	network, listen, typ, reply, proto := "ip4:icmp", "0.0.0.0", icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply), 1
	if a.Is6() && !a.Is4In6() {
		network, listen, typ, reply, proto = "ip6:ipv6-icmp", "::", ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	c, err := icmp.ListenPacket(network, listen)
	if err != nil {
		return 0, fmt.Errorf("icmp socket: %w", err)
	}
	defer c.Close()
	seq := int(p.seq.Add(1) & 0xffff)
	msg, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: p.id, Seq: seq, Data: []byte("flanneld")}}).Marshal(nil)
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetDeadline(deadline); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: a.AsSlice()}); err != nil {
		return 0, fmt.Errorf("send echo to %s: %w", a, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, fmt.Errorf("%s: %w within %s", a, ErrNoAnswer, timeout)
			}
			return 0, err
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		if echo, ok := m.Body.(*icmp.Echo); ok && echo.ID == p.id && echo.Seq == seq {
			if fa, ok := from.(*net.IPAddr); ok && fa.IP.Equal(a.AsSlice()) {
				return time.Since(start), nil
			}
		}
	}
}
