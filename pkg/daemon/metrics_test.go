package daemon

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

// value is the value of a collector holding one counter or gauge, as
// prometheus/testutil.ToFloat64 gives it (testutil itself would need one
// more module in go.mod).
func value(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 2)
	c.Collect(ch)
	close(ch)
	var out []float64
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		switch {
		case pb.Counter != nil:
			out = append(out, pb.Counter.GetValue())
		case pb.Gauge != nil:
			out = append(out, pb.Gauge.GetValue())
		default:
			t.Fatalf("%v is neither a counter nor a gauge", m.Desc())
		}
	}
	if len(out) != 1 {
		t.Fatalf("collected %d metrics, want 1", len(out))
	}
	return out[0]
}

// histogramCount is the number of observations of a histogram series (of
// the kind label, or the unlabelled series when kind is "").
func histogramCount(t *testing.T, m *metrics.Metrics, name, kind string) uint64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			if kind == "" && len(s.GetLabel()) == 0 {
				return s.GetHistogram().GetSampleCount()
			}
			for _, l := range s.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return s.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	t.Fatalf("no %s{kind=%q}", name, kind)
	return 0
}

// waitValue waits until the collector's value is want.
func waitValue(t *testing.T, what string, c prometheus.Collector, want float64) {
	t.Helper()
	waitFor(t, what, func() bool { return value(t, c) == want })
}

// TestSyncLoopMetrics drives the sync loop with a fake kernel and checks
// the metric values after a first full pass with a skipped peer, a drift
// repair, an incremental pass and a failing pass.
func TestSyncLoopMetrics(t *testing.T) {
	k := kernel.NewFake()
	var failing atomic.Bool
	k.Fail = func(call string) error {
		if failing.Load() && strings.Contains(call, "10.244.5.0/24") {
			return errors.New("injected failure")
		}
		return nil
	}
	peers := subnet.NewPeers()
	m := metrics.New("test")
	status := health.NewStatus(time.Minute)
	l := newSyncLoop(fakeBackend{}, network.NewReconciler(k), peers, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)), time.Hour, status, m)
	var (
		mu     sync.Mutex
		events []string
	)
	l.event = func(warning bool, reason, message string) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, reason+": "+message)
	}
	ready := make(chan struct{}, 1)
	l.onReady = func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	}
	runLoop(t, l)

	peers.Set(peer("n2", "10.244.2.0/24", "192.168.0.2", `{}`))
	peers.Set(peer("n3", "10.244.3.0/24", "192.168.0.3", `{}`))
	peers.Set(peer("bad", "10.244.4.0/24", "192.168.0.4", `"bad"`))
	peers.MarkSynced()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("never became ready")
	}

	// After the first (full) pass.
	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"peers_known", m.PeersKnown, 3},
		{"peers_programmed", m.PeersProgrammed, 2},
		{"peers_skipped", m.PeersSkipped, 1},
		{"sync_passes_total{full}", m.SyncPasses.WithLabelValues("full"), 1},
		{"sync_passes_total{incremental}", m.SyncPasses.WithLabelValues("incremental"), 0},
		{"sync_errors_total", m.SyncErrors, 0},
		{"drift_repairs_total{route}", m.DriftRepairs.WithLabelValues("route"), 0},
	} {
		if got := value(t, c.c); got != c.want {
			t.Errorf("after the first pass: %s = %v, want %v", c.name, got, c.want)
		}
	}
	if got := histogramCount(t, m, "flanneld_sync_duration_seconds", "full"); got != 1 {
		t.Errorf("sync_duration_seconds{full} count = %d, want 1", got)
	}
	if ts := value(t, m.LastSync); ts < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last_sync_timestamp_seconds = %v, want about now", ts)
	}
	mu.Lock()
	if len(events) != 1 || !strings.HasPrefix(events[0], "PeerSkipped: peer bad skipped") {
		t.Errorf("events %q, want one PeerSkipped for bad", events)
	}
	mu.Unlock()

	// Someone deletes n2's route; the kernel's notification names it, and
	// an incremental pass restores that entry.
	n2 := kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("192.168.0.2"), LinkIndex: 2, Protocol: kernel.RouteProtocol}
	if err := k.DelRoute(n2); err != nil {
		t.Fatal(err)
	}
	if !l.reconciler.Drifted(kernel.Event{Route: &n2, Deleted: true}) {
		t.Fatal("the deletion is not drift")
	}
	l.kick()
	waitValue(t, "a route repair", m.DriftRepairs.WithLabelValues("route"), 1)
	waitFor(t, "n2's route back", func() bool { return strings.Contains(k.Dump(), "route 10.244.2.0/24") })
	if got := value(t, m.SyncPasses.WithLabelValues("full")); got != 1 {
		t.Errorf("sync_passes_total{full} = %v after the repair, want 1: the entry is repaired by an incremental pass", got)
	}
	for _, kind := range []string{"neighbour", "fdb", "device", "rule"} {
		if got := value(t, m.DriftRepairs.WithLabelValues(kind)); got != 0 {
			t.Errorf("drift_repairs_total{%s} = %v, want 0", kind, got)
		}
	}

	// A new peer: an incremental pass.
	peers.Set(peer("n6", "10.244.6.0/24", "192.168.0.6", `{}`))
	waitValue(t, "n6 programmed", m.PeersProgrammed, 3)
	if got := value(t, m.SyncPasses.WithLabelValues("incremental")); got < 1 {
		t.Errorf("sync_passes_total{incremental} = %v, want at least 1", got)
	}
	if got := value(t, m.PeersKnown); got != 4 {
		t.Errorf("peers_known = %v, want 4", got)
	}

	// An entry the kernel refuses is counted and reported once, and
	// retried with backoff; the pass succeeds and the node stays ready.
	failing.Store(true)
	peers.Set(peer("n5", "10.244.5.0/24", "192.168.0.5", `{}`))
	waitValue(t, "a refused entry", m.EntryFailures.WithLabelValues("route", "refused"), 1)
	waitValue(t, "one entry failing", m.EntriesFailing, 1)
	if err := status.Ready(); err != nil {
		t.Errorf("not ready because one entry was refused: %v", err)
	}
	if got := value(t, m.SyncErrors); got != 0 {
		t.Errorf("sync_errors_total = %v, want 0: a refused entry is not a failed pass", got)
	}
	waitFor(t, "an EntryRefused Event for n5's route", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(events, func(e string) bool { return strings.HasPrefix(e, "EntryRefused: route 10.244.5.0/24") })
	})
	failing.Store(false)
	waitValue(t, "no entry failing after the retry", m.EntriesFailing, 0)
	waitFor(t, "n5's route in", func() bool { return strings.Contains(k.Dump(), "route 10.244.5.0/24") })
	if got := value(t, m.EntryFailures.WithLabelValues("route", "refused")); got != 1 {
		t.Errorf("entry_failures_total = %v, want 1 (reported once)", got)
	}
	if got := value(t, m.PeersSkipped); got != 1 {
		t.Errorf("peers_skipped = %v, want 1", got)
	}
	if got := value(t, m.PeersRejected.WithLabelValues("backend")); got != 1 {
		t.Errorf("peers_rejected_total{backend} = %v, want 1", got)
	}
}
