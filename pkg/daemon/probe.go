package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

// Peer probing: flanneld pings every programmed peer through the path pods
// use, round-robin, at most maxRate packets a second in total, so that each
// peer is probed every interval (or, in a large cluster, every
// peers/maxRate seconds). A lost probe is retried twice, retryAfter apart;
// three in a row make the peer unreachable, one answer reachable again.
// Results go to metrics (no per-peer series), Events (rate-limited) and a
// state file that `flanneld diagnose` reads. Readiness never depends on
// them: a dead peer must not take this node out.
const (
	probeTimeout    = 2 * time.Second
	probeRetryAfter = 2 * time.Second
	probeLosses     = 3
)

// probed reports whether peers are probed with the backend: those that
// carry pod traffic between nodes themselves (not alloc, which programs
// nothing, nor extension, whose datapath flanneld does not know).
func probed(backendType string) bool {
	switch backendType {
	case "vxlan", "host-gw", "udp", "wireguard":
		return true
	}
	return false
}

// probeTarget is the address that answers for a peer through the overlay:
// the network address of its subnet, which its flannel device holds (vxlan,
// udp), or the first address, its cni0 bridge (host-gw, which has no
// device; the bridge exists once the peer has a pod).
func probeTarget(backendType string, l subnet.Lease) netip.Addr {
	sn := l.Subnet
	if !sn.IsValid() {
		sn = l.IPv6Subnet
	}
	if !sn.IsValid() {
		return netip.Addr{}
	}
	a := sn.Masked().Addr()
	if backendType == "host-gw" {
		a = a.Next()
	}
	return a
}

// peerProbe is one peer's probing state.
type peerProbe struct {
	target   netip.Addr
	losses   int
	down     time.Time // when it became unreachable; zero while reachable
	answered bool      // it answered at least once
}

// Pinger sends one echo request and waits for its answer.
type Pinger interface {
	Ping(ctx context.Context, a netip.Addr, timeout time.Duration) (rtt time.Duration, err error)
}

// prober probes the programmed peers.
type prober struct {
	pinger     Pinger
	interval   time.Duration
	maxRate    float64
	retryAfter time.Duration
	metrics    *metrics.Metrics
	event      func(warning bool, reason, message string)
	stateFile  string // "" for none

	mu    sync.Mutex
	peers map[string]*peerProbe
	order []string // round-robin order, rebuilt when peers change
	next  int
	dirty bool
}

func newProber(p Pinger, interval time.Duration, maxRate float64, m *metrics.Metrics) *prober {
	return &prober{pinger: p, interval: interval, maxRate: maxRate, retryAfter: probeRetryAfter, metrics: m,
		event: func(bool, string, string) {}, peers: map[string]*peerProbe{}}
}

// setTarget adds or changes a peer (an invalid target removes it). It is
// called from the sync loop.
func (p *prober) setTarget(name string, target netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !target.IsValid() {
		if _, ok := p.peers[name]; ok {
			delete(p.peers, name)
			p.dirty = true
		}
		return
	}
	if pp, ok := p.peers[name]; ok && pp.target == target {
		return
	}
	p.peers[name] = &peerProbe{target: target}
	p.dirty = true
}

// pick returns the next peer to probe, round-robin.
func (p *prober) pick() (string, netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dirty {
		p.order = slices.Sorted(maps.Keys(p.peers))
		p.next, p.dirty = 0, false
	}
	if len(p.order) == 0 {
		return "", netip.Addr{}, false
	}
	p.next %= len(p.order)
	name := p.order[p.next]
	p.next++
	return name, p.peers[name].target, true
}

// period is the time between two probes: every peer once per interval,
// at most maxRate probes a second.
func (p *prober) period() time.Duration {
	p.mu.Lock()
	n := len(p.peers)
	p.mu.Unlock()
	if n == 0 {
		return time.Second // look again soon: the first peers are coming
	}
	return max(p.interval/time.Duration(n), time.Duration(float64(time.Second)/p.maxRate))
}

// run probes until ctx ends. Probes run concurrently (a dead peer's
// timeouts must not slow the others down), at most inFlight at once, each
// peer in one at a time; run returns once they have all ended.
func (p *prober) run(ctx context.Context) {
	limiter := rate.NewLimiter(rate.Limit(p.maxRate), 1)
	events := rate.NewLimiter(rate.Every(10*time.Second), 5)
	inFlight := max(2, int(math.Ceil(p.maxRate*probeLosses*(probeTimeout+p.retryAfter).Seconds())))
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	busy := map[string]bool{}
	var busyMu sync.Mutex
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.period()):
		}
		name, target, ok := p.pick()
		busyMu.Lock()
		if !ok || busy[name] {
			busyMu.Unlock()
			continue
		}
		select {
		case sem <- struct{}{}:
		default: // as many probes as the rate allows are out
			busyMu.Unlock()
			continue
		}
		busy[name] = true
		busyMu.Unlock()
		wg.Go(func() {
			defer func() {
				busyMu.Lock()
				delete(busy, name)
				busyMu.Unlock()
				<-sem
			}()
			p.probe(ctx, limiter, events, name, target)
		})
	}
}

// probe pings one peer, retrying a lost probe, and records the result.
func (p *prober) probe(ctx context.Context, limiter, events *rate.Limiter, name string, target netip.Addr) {
	for attempt := 0; attempt < probeLosses; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(p.retryAfter):
			}
		}
		if limiter.Wait(ctx) != nil {
			return
		}
		rtt, err := p.pinger.Ping(ctx, target, probeTimeout)
		p.metrics.Probes.Inc()
		if ctx.Err() != nil {
			return
		}
		if p.record(name, target, err == nil, events) && err == nil {
			p.metrics.ProbeRTT.Observe(rtt.Seconds())
		}
		if err == nil {
			return
		}
	}
}

// record folds a probe's result into the peer's state (if it is still the
// same peer) and reports a change; it says whether the peer is still known.
func (p *prober) record(name string, target netip.Addr, answered bool, events *rate.Limiter) bool {
	p.mu.Lock()
	pp, ok := p.peers[name]
	if !ok || pp.target != target {
		p.mu.Unlock()
		return false
	}
	var changed, down bool
	var since time.Duration
	switch {
	case answered:
		if !pp.down.IsZero() {
			changed, since = true, time.Since(pp.down)
		}
		pp.losses, pp.down, pp.answered = 0, time.Time{}, true
	default:
		pp.losses++
		if pp.losses >= probeLosses && pp.down.IsZero() {
			pp.down, changed, down = time.Now(), true, true
		}
	}
	probed, unreachable := p.countsLocked()
	var state ProbeState
	if changed { // sorted copy of every peer: only when the file must change
		state = p.stateLocked()
	}
	p.mu.Unlock()
	p.metrics.PeersProbed.Set(float64(probed))
	p.metrics.PeersUnreachable.Set(float64(unreachable))
	if !changed {
		return true
	}
	if down {
		klog.InfoS("Peer does not answer probes through the overlay", "node", name, "address", target, "probes", probeLosses)
		if events.Allow() {
			p.event(true, "PeerNotResponding", fmt.Sprintf("peer %s (%s) does not answer through the overlay", name, target))
		}
	} else {
		klog.InfoS("Peer answers probes again", "node", name, "address", target, "after", since.Round(time.Second))
		if events.Allow() {
			p.event(false, "PeerResponding", fmt.Sprintf("peer %s (%s) answers again, after %s without answering", name, target, since.Round(time.Second)))
		}
	}
	p.writeState(state)
	return true
}

func (p *prober) countsLocked() (probed, unreachable int) {
	for _, pp := range p.peers {
		if pp.answered || pp.losses > 0 {
			probed++
		}
		if !pp.down.IsZero() {
			unreachable++
		}
	}
	return probed, unreachable
}

// UnreachablePeer is a peer that does not answer probes, as the state file
// lists it for `flanneld diagnose`.
type UnreachablePeer struct {
	Name    string    `json:"name"`
	Address string    `json:"address"`
	Since   time.Time `json:"since"`
}

// ProbeState is the state file's content.
type ProbeState struct {
	Written     time.Time         `json:"written"`
	Unreachable []UnreachablePeer `json:"unreachable"`
}

func (p *prober) stateLocked() ProbeState {
	s := ProbeState{Written: time.Now(), Unreachable: []UnreachablePeer{}}
	for _, name := range slices.Sorted(maps.Keys(p.peers)) {
		if pp := p.peers[name]; !pp.down.IsZero() {
			s.Unreachable = append(s.Unreachable, UnreachablePeer{Name: name, Address: ip.Text(pp.target), Since: pp.down})
		}
	}
	return s
}

// writeState writes the state file (for `flanneld diagnose`), atomically.
func (p *prober) writeState(s ProbeState) {
	if p.stateFile == "" {
		return
	}
	data, err := json.Marshal(s)
	if err == nil {
		err = subnet.WriteFileAtomic(p.stateFile, data, 0o644, (*os.File).Sync)
	}
	if err != nil {
		klog.ErrorS(err, "Could not write the probe state", "path", p.stateFile)
	}
}
