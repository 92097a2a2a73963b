package daemon

import (
	"fmt"
	"testing"
	"time"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

// reachBackend is fakeBackend whose peers are unreachable while down is set
// (host-gw while the external interface has no address of their family).
type reachBackend struct {
	fakeBackend
	down *bool
}

func (b reachBackend) PeerState(p subnet.Lease) (network.State, error) {
	if *b.down {
		return network.State{}, fmt.Errorf("%w: peer %s at %s: route lookup: network is unreachable", backend.ErrUnreachable, p.Name, p.Attrs.PublicIP)
	}
	return b.fakeBackend.PeerState(p)
}

// A peer skipped as unreachable is examined again on full passes, without
// its lease changing, and the warning is not repeated while the reason
// stays the same.
func TestUnreachablePeerReexamined(t *testing.T) {
	down := true
	peers := subnet.NewPeers()
	l := newSyncLoop(reachBackend{down: &down}, network.NewReconciler(kernel.NewFake()), peers,
		rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)), time.Hour, health.NewStatus(time.Minute), metrics.New("test"))
	var events []string
	l.event = func(_ bool, reason, _ string) { events = append(events, reason) }

	peers.Set(peer("n2", "10.244.2.0/24", "192.168.0.2", `{}`))
	peers.MarkSynced()
	l.drain(true)
	if _, ok := l.states["n2"]; ok || len(events) != 1 || events[0] != "PeerUnreachable" {
		t.Fatalf("unreachable peer: programmed %v, events %v; want skipped with one PeerUnreachable", ok, events)
	}
	l.drain(true)
	if len(events) != 1 {
		t.Errorf("the warning was repeated on re-examination: %v", events)
	}

	down = false
	l.drain(false)
	if _, ok := l.states["n2"]; ok {
		t.Errorf("re-examined on an incremental pass")
	}
	l.drain(true)
	if _, ok := l.states["n2"]; !ok || len(l.unreachable) != 0 {
		t.Errorf("reachable again: programmed %v, still unreachable %v", ok, l.unreachable)
	}

	// A deleted peer is forgotten.
	down = true
	peers.Set(peer("n3", "10.244.3.0/24", "192.168.0.3", `{}`))
	l.drain(false)
	peers.Delete("n3")
	l.drain(true)
	if _, ok := l.unreachable["n3"]; ok {
		t.Errorf("a deleted peer is still examined")
	}
}
