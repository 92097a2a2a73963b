package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

// fakeBackend routes each peer's subnet via its public IP on link 2 and
// rejects peers whose backend data is "bad".
type fakeBackend struct{}

func (fakeBackend) Setup(context.Context, *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	return subnet.LeaseAttrs{}, nil
}
func (fakeBackend) Configure(context.Context, subnet.Lease) error { return nil }
func (fakeBackend) Attach() error                                 { return nil }
func (fakeBackend) MTU() int                                      { return 1450 }
func (fakeBackend) Base() network.State                           { return network.State{OwnedLinks: []int{9}} }
func (fakeBackend) PeerState(p subnet.Lease) (network.State, error) {
	if string(p.Attrs.BackendData) == `"bad"` {
		return network.State{}, errors.New("bad backend data")
	}
	return network.State{Routes: []kernel.Route{{Dst: p.Subnet, Gw: p.Attrs.PublicIP, LinkIndex: 2}}}, nil
}

func peer(name, sn, pub string, data string) subnet.Lease {
	return subnet.Lease{Name: name, Subnet: netip.MustParsePrefix(sn),
		Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(pub), BackendType: "fake", BackendData: json.RawMessage(data)}}
}

// testConfig is the network of the sync loop tests.
var testConfig = &subnet.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16")}

// rulesFor are the peer rules of a node with lease own in testConfig.
func rulesFor(own subnet.Lease) subnet.PeerRules {
	return subnet.PeerRules{Config: testConfig, Own: own, Local: []netip.Addr{own.Attrs.PublicIP}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runLoop runs l until the test ends.
func runLoop(t *testing.T, l *syncLoop) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestSyncLoop(t *testing.T) {
	k := kernel.NewFake()
	// A stale route flanneld installed for a node deleted while it was down.
	stale := kernel.Route{Dst: netip.MustParsePrefix("10.244.9.0/24"), Gw: netip.MustParseAddr("192.168.0.9"), LinkIndex: 2, Protocol: kernel.RouteProtocol}
	k.Routes[stale.Key()] = stale

	peers := subnet.NewPeers()
	status := health.NewStatus(time.Minute)
	ready := make(chan struct{})
	l := newSyncLoop(fakeBackend{}, network.NewReconciler(k), peers, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)), time.Hour, status, metrics.New("test"))
	l.onReady = func() { close(ready) }
	runLoop(t, l)

	peers.Set(peer("n2", "10.244.2.0/24", "192.168.0.2", `{}`))
	peers.Set(peer("bad", "10.244.3.0/24", "192.168.0.3", `"bad"`))
	peers.Set(peer("overlap", "10.244.1.0/25", "192.168.0.4", `{}`))
	time.Sleep(200 * time.Millisecond)
	if len(k.Calls) != 0 {
		t.Fatalf("programmed before the lease source synced: %v", k.Calls)
	}
	peers.MarkSynced()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("never became ready")
	}
	if got := k.Dump(); got != "route 10.244.2.0/24 via 192.168.0.2 dev 2 proto 102" {
		t.Fatalf("kernel after first sync (stale pruned, bad and overlapping peers skipped):\n%s", got)
	}

	peers.Set(peer("n4", "10.244.4.0/24", "192.168.0.4", `{}`))
	peers.Delete("n2")
	waitFor(t, "n4 added and n2 removed", func() bool {
		return k.Dump() == "route 10.244.4.0/24 via 192.168.0.4 dev 2 proto 102"
	})
	// A peer whose data turns bad is removed.
	peers.Set(peer("n4", "10.244.4.0/24", "192.168.0.4", `"bad"`))
	waitFor(t, "n4 removed", func() bool { return k.Dump() == "" })
	if status.Healthy() != nil {
		t.Fatal("loop reported unhealthy")
	}
	if strings.Contains(strings.Join(k.Calls, "\n"), "10.244.3.0") {
		t.Fatal("the bad peer was programmed")
	}
}

// TestSyncLoopProgramsBeforePrepared: peers are programmed as soon as the
// lease source has synced, while the firewall and subnet.env are still
// being prepared; the node is ready only once both are done.
func TestSyncLoopProgramsBeforePrepared(t *testing.T) {
	k := kernel.NewFake()
	peers := subnet.NewPeers()
	status := health.NewStatus(time.Minute)
	ready := make(chan struct{})
	prepared := make(chan struct{})
	l := newSyncLoop(fakeBackend{}, network.NewReconciler(k), peers, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)), time.Hour, status, metrics.New("test"))
	l.prepared = prepared
	l.onReady = func() { close(ready) }
	runLoop(t, l)

	peers.Set(peer("n2", "10.244.2.0/24", "192.168.0.2", `{}`))
	peers.MarkSynced()
	waitFor(t, "n2 programmed", func() bool { return k.Dump() == "route 10.244.2.0/24 via 192.168.0.2 dev 2 proto 102" })
	select {
	case <-ready:
		t.Fatal("ready before the node was prepared")
	case <-time.After(200 * time.Millisecond):
	}
	if err := status.Ready(); err == nil || !strings.Contains(err.Error(), "firewall") {
		t.Errorf("readiness before the node was prepared: %v, want not ready, waiting for the firewall", err)
	}
	close(prepared)
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("never became ready once prepared")
	}
	if err := status.Ready(); err != nil {
		t.Errorf("not ready once prepared: %v", err)
	}
}
