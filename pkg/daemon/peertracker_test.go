package daemon

import (
	"sync"
	"testing"
	"time"

	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

// trackingBackend is fakeBackend that also tracks peers, as udp does.
type trackingBackend struct {
	fakeBackend
	mu    sync.Mutex
	peers map[string]string // name -> subnet
}

func (b *trackingBackend) SetPeer(name string, lease *subnet.Lease) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if lease == nil {
		delete(b.peers, name)
		return
	}
	b.peers[name] = lease.Subnet.String()
}

func (b *trackingBackend) has(want map[string]string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.peers) != len(want) {
		return false
	}
	for k, v := range want {
		if b.peers[k] != v {
			return false
		}
	}
	return true
}

// TestPeerTracker checks that a backend tracking peers gets exactly the
// programmed ones: added, changed, skipped and removed peers.
func TestPeerTracker(t *testing.T) {
	be := &trackingBackend{peers: map[string]string{}}
	peers := subnet.NewPeers()
	l := newSyncLoop(be, network.NewReconciler(kernel.NewFake()), peers, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)),
		time.Hour, health.NewStatus(time.Minute), metrics.New("test"))
	runLoop(t, l)

	peers.Set(peer("n2", "10.244.2.0/24", "192.168.0.2", `{}`))
	peers.Set(peer("n3", "10.244.3.0/24", "192.168.0.3", `{}`))
	peers.Set(peer("bad", "10.244.4.0/24", "192.168.0.4", `"bad"`))
	peers.Set(peer("overlap", "10.244.1.0/25", "192.168.0.5", `{}`))
	peers.MarkSynced()
	waitFor(t, "n2 and n3 tracked", func() bool {
		return be.has(map[string]string{"n2": "10.244.2.0/24", "n3": "10.244.3.0/24"})
	})
	peers.Set(peer("n3", "10.244.5.0/24", "192.168.0.3", `{}`))
	peers.Delete("n2")
	waitFor(t, "n2 removed and n3 moved", func() bool {
		return be.has(map[string]string{"n3": "10.244.5.0/24"})
	})
	peers.Set(peer("n3", "10.244.5.0/24", "192.168.0.3", `"bad"`))
	waitFor(t, "n3 dropped when its lease turns bad", func() bool { return be.has(map[string]string{}) })
}
