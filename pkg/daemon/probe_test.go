package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flanneld/flanneld/pkg/metrics"
)

// fakePinger answers for the addresses that are up.
type fakePinger struct {
	mu    sync.Mutex
	down  map[netip.Addr]bool
	pings map[netip.Addr]int
}

func (f *fakePinger) Ping(_ context.Context, a netip.Addr, _ time.Duration) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pings[a]++
	if f.down[a] {
		return 0, errors.New("no answer")
	}
	return time.Millisecond, nil
}

func (f *fakePinger) setDown(a netip.Addr, down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down[a] = down
}

// TestProber: every peer is probed; three lost probes in a row make a peer
// unreachable (metric, Event, state file for diagnose), an answer makes it
// reachable again; a removed peer is no longer probed or counted.
func TestProber(t *testing.T) {
	f := &fakePinger{down: map[netip.Addr]bool{}, pings: map[netip.Addr]int{}}
	m := metrics.New("test")
	p := newProber(f, 20*time.Millisecond, 1000, m)
	p.retryAfter = time.Millisecond
	p.stateFile = filepath.Join(t.TempDir(), "peer-probes.json")
	var mu sync.Mutex
	var events []string
	p.event = func(_ bool, reason, _ string) { mu.Lock(); events = append(events, reason); mu.Unlock() }
	a2, a3 := netip.MustParseAddr("10.244.2.0"), netip.MustParseAddr("10.244.3.0")
	p.setTarget("n2", a2)
	p.setTarget("n3", a3)
	f.setDown(a3, true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.run(ctx) }()
	defer func() { cancel(); <-done }()

	waitValue(t, "n3 unreachable", m.PeersUnreachable, 1)
	waitValue(t, "both probed", m.PeersProbed, 2)
	var s ProbeState
	waitFor(t, "the state file", func() bool {
		data, err := os.ReadFile(p.stateFile)
		return err == nil && json.Unmarshal(data, &s) == nil && len(s.Unreachable) == 1
	})
	if s.Unreachable[0].Name != "n3" || s.Unreachable[0].Address != "10.244.3.0" || s.Unreachable[0].Since.IsZero() {
		t.Errorf("state file %+v", s)
	}
	f.setDown(a3, false)
	waitValue(t, "n3 reachable again", m.PeersUnreachable, 0)
	// The Event follows the metric: wait for it too.
	waitFor(t, "the second event", func() bool { mu.Lock(); defer mu.Unlock(); return len(events) >= 2 })
	mu.Lock()
	if len(events) != 2 || events[0] != "PeerNotResponding" || events[1] != "PeerResponding" {
		t.Errorf("events %v", events)
	}
	mu.Unlock()
	if histogramCount(t, m, "flanneld_peer_probe_rtt_seconds", "") == 0 {
		t.Error("no round trip observed")
	}

	f.setDown(a3, true)
	waitValue(t, "n3 unreachable again", m.PeersUnreachable, 1)
	p.setTarget("n3", netip.Addr{})
	f.mu.Lock()
	before := f.pings[a3]
	f.mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	f.mu.Lock()
	after := f.pings[a3]
	f.mu.Unlock()
	if after > before+probeLosses {
		t.Errorf("a removed peer is still probed: %d more pings", after-before)
	}
}

// TestProberRate: however many peers, the probes stay under the rate
// bound: each peer is probed every interval, or every peers/maxRate.
func TestProberRate(t *testing.T) {
	p := newProber(nil, time.Minute, 5, metrics.New("test"))
	for i := range 5000 {
		p.setTarget(string(rune('a'+i%26))+string(rune(i)), netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}))
	}
	if got := p.period(); got != 200*time.Millisecond {
		t.Errorf("5,000 peers at most 5 probes a second: a probe every %v, want 200ms", got)
	}
	small := newProber(nil, time.Minute, 5, metrics.New("test"))
	for i := range 3 {
		small.setTarget(string(rune('a'+i)), netip.AddrFrom4([4]byte{10, 0, byte(i), 0}))
	}
	if got := small.period(); got != 20*time.Second {
		t.Errorf("3 peers each once a minute: a probe every %v, want 20s", got)
	}
}
