//go:build linux

package kernel

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flanneld/flanneld/network/nstest"
)

// TestSubscribeEndsItsGoroutines: when the receiver stops while the
// notification channels are full, Subscribe drains them so that netlink's
// readers, blocked sending, end with it; it returns only once they have.
// (On 4308a5a the readers blocked on a full channel forever.)
func TestSubscribeEndsItsGoroutines(t *testing.T) {
	n := nstest.New(t)
	ns, h := n.Open(t), n.Handle(t)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}

	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	first := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Subscribe(ctx, &ns, func(Event) {
			select {
			case first <- struct{}{}:
			default:
			}
			<-release // a slow receiver: the channels fill up
		})
	}()
	addRoute := func(i int) {
		dst := &net.IPNet{IP: net.IPv4(10, byte(i>>8), byte(i), 0), Mask: net.CIDRMask(24, 32)}
		if err := h.RouteAdd(&netlink.Route{Dst: dst, LinkIndex: lo.Attrs().Index, Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
	}
	// Once the receiver is stuck in its first notification, far more
	// route notifications than the channels hold.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		addRoute(60000 + i)
		select {
		case <-first:
		case <-time.After(50 * time.Millisecond):
			if time.Now().Before(deadline) {
				continue
			}
			t.Fatal("no notification arrived")
		}
		break
	}
	for i := range 4 * eventBuffer {
		addRoute(i)
	}
	time.Sleep(200 * time.Millisecond) // let the readers block on the full channels
	cancel()
	close(release)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return after its context ended")
	}
	deadline = time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines left running after Subscribe returned (%d before):\n%s", n-before, before, buf[:runtime.Stack(buf, true)])
	}
}
