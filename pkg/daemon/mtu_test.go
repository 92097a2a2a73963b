package daemon

import (
	"testing"
	"time"

	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

// mtuBackend is sized for the underlay's MTU minus 50, or a fixed MTU.
type mtuBackend struct {
	fakeBackend
	mtu, fixed int
}

func (b *mtuBackend) MTU() int { return b.mtu }
func (b *mtuBackend) SetUnderlayMTU(ext int) error {
	if b.fixed == 0 {
		b.mtu = ext - 50
	}
	return nil
}

// TestMTUFollowsUnderlay: when the kernel reports a new MTU of the
// external interface, a full pass resizes the backend and reports the
// pods' new MTU once; an explicit MTU is kept.
func TestMTUFollowsUnderlay(t *testing.T) {
	for _, c := range []struct {
		name  string
		fixed int
		want  []int
	}{
		{"follows", 0, []int{8950, 1350}},
		{"explicit MTU kept", 1400, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			be := &mtuBackend{mtu: 1450, fixed: c.fixed}
			if c.fixed > 0 {
				be.mtu = c.fixed
			}
			peers := subnet.NewPeers()
			l := newSyncLoop(be, network.NewReconciler(kernel.NewFake()), peers, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)),
				time.Hour, health.NewStatus(time.Minute), metrics.New("test"))
			l.extMTU.Store(1500)
			l.underlayMTU = 1500
			got := make(chan int, 4)
			l.onMTU = func(mtu int) { got <- mtu }
			peers.MarkSynced()
			runLoop(t, l)
			for i, ext := range []int{9000, 1400} {
				l.extMTU.Store(int64(ext))
				l.kickFull()
				if c.want == nil {
					continue
				}
				select {
				case mtu := <-got:
					if mtu != c.want[i] {
						t.Errorf("underlay MTU %d: pods' MTU %d, want %d", ext, mtu, c.want[i])
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("underlay MTU %d: the pods' MTU was not reported", ext)
				}
			}
			if c.want == nil {
				time.Sleep(500 * time.Millisecond) // two full passes' worth
				if len(got) != 0 {
					t.Errorf("the explicit MTU changed: %d", <-got)
				}
			}
		})
	}
}
