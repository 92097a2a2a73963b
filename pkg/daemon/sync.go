package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/pkg/kernel"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

const (
	// minSyncInterval coalesces bursts of lease events into one pass.
	minSyncInterval = 100 * time.Millisecond
	maxRetryDelay   = 30 * time.Second
	// Drift repairs: a few at once, then at most one full pass every
	// repairInterval, so flanneld never fights another agent in a tight loop.
	repairBurst    = 5
	repairInterval = time.Second
)

// syncLoop is the one loop that programs peers: lease events only mark
// peers dirty; the loop recomputes those peers' desired state and lets the
// reconciler apply the difference. Full passes (the first, every resync
// period, and after drift) also check the device and compare with the
// kernel, repairing what someone changed and pruning what is stale.
type syncLoop struct {
	backend    backend.Backend
	reconciler *network.Reconciler
	peers      *subnet.Peers
	own        subnet.Lease
	resync     time.Duration
	status     *health.Status
	metrics    *metrics.Metrics
	// onReady is called when the node becomes ready: after the first
	// successful full pass, and again after recovering from failures.
	onReady func()
	// event posts an Event on the node's object (warning, reason, message).
	event func(warning bool, reason, message string)

	// drift is signalled (coalesced) when the kernel reports that
	// something flanneld owns changed.
	drift chan struct{}

	// states is the desired state of each programmed peer, recomputed only
	// when its lease changes; overlapping holds the leases of the peers
	// skipped because their subnet overlaps a programmed peer's,
	// re-examined whenever a peer goes away.
	states      map[string]peerEntry
	overlapping map[string]subnet.Lease
	// unreachable holds the peers skipped because their public IP was not
	// reachable directly (host-gw), re-examined on every full pass: what
	// this node reaches can change without their leases changing (after
	// the external interface went down and up, its IPv6 address may come
	// back only after flanneld recomputed its peers).
	unreachable map[string]skippedPeer
	index       *subnetIndex // the subnets of the programmed peers
	base        network.State
	// started is set after the first successful pass: peers added before
	// it are logged in one line, not one each.
	started bool

	mu    sync.Mutex
	owned []int // the backend's owned links, read by the drift watcher
}

func newSyncLoop(be backend.Backend, rec *network.Reconciler, peers *subnet.Peers, own subnet.Lease, resync time.Duration, status *health.Status, m *metrics.Metrics) *syncLoop {
	l := &syncLoop{
		backend:     be,
		reconciler:  rec,
		peers:       peers,
		own:         own,
		resync:      resync,
		status:      status,
		metrics:     m,
		onReady:     func() {},
		event:       func(bool, string, string) {},
		drift:       make(chan struct{}, 1),
		states:      map[string]peerEntry{},
		overlapping: map[string]subnet.Lease{},
		unreachable: map[string]skippedPeer{},
		index:       newSubnetIndex(),
		owned:       be.Base().OwnedLinks,
	}
	l.setBase(be.Base())
	return l
}

// peerEntry is a programmed peer: its desired state and its subnets.
type peerEntry struct {
	st              network.State
	subnet, subnet6 netip.Prefix
}

// skippedPeer is a peer skipped for now, and why.
type skippedPeer struct {
	lease  subnet.Lease
	reason string
}

// setBase gives the reconciler the backend's own state (its devices).
func (l *syncLoop) setBase(base network.State) {
	l.reconciler.Update(l.base, base)
	l.reconciler.SetOwnedLinks(base.OwnedLinks)
	l.base = base
}

// kick asks for a full pass because the kernel drifted.
func (l *syncLoop) kick() {
	select {
	case l.drift <- struct{}{}:
	default:
	}
}

func (l *syncLoop) ownedLinks() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.owned
}

func (l *syncLoop) run(ctx context.Context) {
	resync := time.NewTicker(l.resync)
	defer resync.Stop()
	limiter := rate.NewLimiter(rate.Every(repairInterval), repairBurst)
	var (
		wait       <-chan time.Time // a retry or a rate-limited repair
		retryDelay = time.Second
		synced     bool // the lease source has delivered its initial view
		first      = true
		full       bool
		ready      bool
	)
	l.status.Beat()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.peers.Changed():
		case <-resync.C:
			full = true
		case <-l.drift:
			full = true
			if d := limiter.Reserve().Delay(); d > 0 {
				klog.V(2).InfoS("Rate-limiting drift repair", "delay", d)
				wait = time.After(d)
				continue
			}
		case <-wait:
			wait = nil
		}
		fail := func(what string, err error) {
			klog.ErrorS(err, what+" failed; retrying", "retryIn", retryDelay)
			l.metrics.SyncErrors.Inc()
			if ready {
				ready = false
				l.status.SetReady(false, what+" failed: "+err.Error())
			}
			wait = time.After(retryDelay)
			retryDelay = min(2*retryDelay, maxRetryDelay)
		}
		if full || first {
			if err := l.ensureDevice(ctx); err != nil {
				fail("Device check", err)
				continue
			}
		}
		synced = l.drain(first || full) || synced
		if !synced {
			// Never program, let alone prune, before every peer is known.
			l.status.Beat()
			continue
		}
		kind := "incremental"
		if first || full {
			kind = "full"
		}
		start := time.Now()
		res, err := l.reconciler.Apply(first || full)
		elapsed := time.Since(start)
		l.metrics.SyncPasses.WithLabelValues(kind).Inc()
		l.metrics.SyncDuration.WithLabelValues(kind).Observe(elapsed.Seconds())
		for _, r := range res.Repaired {
			klog.InfoS("Repaired drift", "entry", r)
		}
		for k, n := range res.Kinds {
			l.metrics.DriftRepairs.WithLabelValues(k).Add(float64(n))
		}
		known := l.peers.Len()
		l.metrics.PeersKnown.Set(float64(known))
		l.metrics.PeersSkipped.Set(float64(known - len(l.states)))
		if err != nil {
			fail("Sync", err)
			continue
		}
		retryDelay = time.Second
		l.status.Beat()
		l.metrics.LastSync.SetToCurrentTime()
		l.metrics.PeersProgrammed.Set(float64(len(l.states)))
		klog.V(2).InfoS("Synced peers", "peers", len(l.states), "kind", kind,
			"added", res.Added, "removed", res.Removed, "duration", elapsed)
		full, first = false, false
		l.started = true
		if !ready {
			ready = true
			l.status.SetReady(true, "")
			l.onReady()
		}
		// Bound the pass rate: events arriving meanwhile are coalesced.
		select {
		case <-ctx.Done():
			return
		case <-time.After(minSyncInterval):
		}
	}
}

// watchKernel turns the kernel's change notifications into full passes:
// when an entry flanneld installed is deleted or changed, when its device is
// deleted or set down, when the underlay link comes back up, and when
// notifications were lost.
func (l *syncLoop) watchKernel(ctx context.Context, extIndex int) {
	extUp := true
	kernel.Subscribe(ctx, func(ev kernel.Event) {
		switch {
		case ev.Lost:
			l.kick()
		case ev.Link != nil:
			if slices.Contains(l.ownedLinks(), ev.Link.Index) && (ev.Link.Deleted || !ev.Link.Up) {
				klog.InfoS("Device changed; repairing", "device", ev.Link.Name, "deleted", ev.Link.Deleted, "up", ev.Link.Up)
				l.kick()
			}
			if ev.Link.Index == extIndex {
				if ev.Link.Up && !extUp {
					klog.InfoS("External interface is up again; resyncing", "interface", ev.Link.Name)
					l.peers.MarkAllDirty() // reachability may have changed
					l.kick()
				}
				extUp = ev.Link.Up
			}
		case ev.Addr != nil:
			// A peer skipped as unreachable may be reachable now (an
			// IPv6 address often returns after its link is up).
			if ev.Addr.LinkIndex == extIndex && !ev.Deleted {
				klog.V(2).InfoS("External interface got an address; resyncing", "address", ev.Addr.Addr)
				l.kick()
			}
		case l.reconciler.Drifted(ev):
			klog.V(2).InfoS("Kernel entry changed by someone else", "event", ev)
			l.kick()
		}
	})
}

// ensureDevice makes sure the backend's device exists and carries the
// node's lease; when it had to be recreated, every peer is reprogrammed.
func (l *syncLoop) ensureDevice(ctx context.Context) error {
	before := l.backend.Base().OwnedLinks
	attrs, err := l.backend.Setup(ctx, &l.own.Attrs)
	if err != nil {
		return err
	}
	if !attrs.Equal(l.own.Attrs) {
		klog.InfoS("The device's attributes differ from those advertised", "advertised", string(l.own.Attrs.BackendData), "device", string(attrs.BackendData))
	}
	if err := l.backend.Configure(ctx, l.own); err != nil {
		return err
	}
	after := l.backend.Base().OwnedLinks
	if !slices.Equal(before, after) {
		klog.InfoS("Recreated device; reprogramming every peer", "links", after)
		l.metrics.DriftRepairs.WithLabelValues("device").Inc()
		l.mu.Lock()
		l.owned = after
		l.mu.Unlock()
		l.setBase(l.backend.Base())
		l.peers.MarkAllDirty()
	}
	return nil
}

// drain folds the changed peers into states, and reports whether the
// lease source has synced. Changed peers are handled in name order, so
// which of two overlapping peers wins does not depend on event order. With
// full (a full pass), the peers skipped as unreachable are examined again.
func (l *syncLoop) drain(full bool) bool {
	changed, synced := l.peers.Drain()
	removed := false
	for _, name := range slices.Sorted(maps.Keys(changed)) {
		lease := changed[name]
		if lease == nil {
			if _, ok := l.states[name]; ok {
				klog.InfoS("Removing peer", "node", name)
				removed = true
			}
			l.dropState(name)
			delete(l.overlapping, name)
			delete(l.unreachable, name)
			continue
		}
		if old, ok := l.states[name]; ok && (old.subnet != lease.Subnet || old.subnet6 != lease.IPv6Subnet) {
			removed = true // its old subnet may have blocked another peer
		}
		l.update(*lease)
	}
	if removed {
		for _, name := range slices.Sorted(maps.Keys(l.overlapping)) {
			l.update(l.overlapping[name])
		}
	}
	if full {
		for _, name := range slices.Sorted(maps.Keys(l.unreachable)) {
			if _, ok := changed[name]; !ok {
				l.update(l.unreachable[name].lease)
			}
		}
	}
	return synced
}

// setState records a peer's desired state and hands the change to the
// reconciler (and the peer to a backend that tracks peers itself).
func (l *syncLoop) setState(lease subnet.Lease, st network.State) {
	name := lease.Name
	old := l.states[name]
	l.index.remove(name, old.subnet, old.subnet6)
	l.reconciler.Update(old.st, st)
	l.index.add(name, lease.Subnet, lease.IPv6Subnet)
	l.states[name] = peerEntry{st: st, subnet: lease.Subnet, subnet6: lease.IPv6Subnet}
	if t, ok := l.backend.(backend.PeerTracker); ok {
		t.SetPeer(name, &lease)
	}
}

// dropState forgets a peer's desired state.
func (l *syncLoop) dropState(name string) {
	if old, ok := l.states[name]; ok {
		l.reconciler.Update(old.st, network.State{})
		l.index.remove(name, old.subnet, old.subnet6)
		delete(l.states, name)
		if t, ok := l.backend.(backend.PeerTracker); ok {
			t.SetPeer(name, nil)
		}
	}
}

// update recomputes one peer's desired state, skipping it with a warning
// when its lease is unusable.
func (l *syncLoop) update(lease subnet.Lease) {
	name := lease.Name
	st, err := l.peerState(lease)
	if err != nil {
		_, programmed := l.states[name]
		_, wasOverlapping := l.overlapping[name]
		prev, wasUnreachable := l.unreachable[name]
		if programmed || !(wasOverlapping || (wasUnreachable && prev.reason == err.Error())) {
			klog.InfoS("Skipping peer", "node", name, "reason", err.Error())
			reason := "PeerSkipped"
			if errors.Is(err, backend.ErrUnreachable) {
				reason = "PeerUnreachable"
			}
			l.event(true, reason, fmt.Sprintf("peer %s skipped: %v", name, err))
		}
		l.dropState(name)
		delete(l.overlapping, name)
		delete(l.unreachable, name)
		if _, ok := err.(*overlapError); ok {
			l.overlapping[name] = lease
		} else if errors.Is(err, backend.ErrUnreachable) {
			l.unreachable[name] = skippedPeer{lease: lease, reason: err.Error()}
		}
		return
	}
	delete(l.overlapping, name)
	delete(l.unreachable, name)
	verb := "Updating peer"
	if _, ok := l.states[name]; !ok {
		verb = "Adding peer"
	}
	kv := []any{"node", name}
	if lease.Subnet.IsValid() {
		kv = append(kv, "subnet", lease.Subnet, "publicIP", lease.Attrs.PublicIP)
	}
	if lease.IPv6Subnet.IsValid() {
		kv = append(kv, "subnetIPv6", lease.IPv6Subnet, "publicIPv6", lease.Attrs.PublicIPv6)
	}
	if l.started {
		klog.InfoS(verb, kv...)
	} else {
		klog.V(2).InfoS(verb, kv...)
	}
	l.setState(lease, st)
}

type overlapError struct{ msg string }

func (e *overlapError) Error() string { return e.msg }

// peerState checks that the peer's subnet overlaps neither this node's nor
// a programmed peer's, then asks the backend for its state.
func (l *syncLoop) peerState(peer subnet.Lease) (network.State, error) {
	for _, pair := range [][2]netip.Prefix{{peer.Subnet, l.own.Subnet}, {peer.IPv6Subnet, l.own.IPv6Subnet}} {
		sn, own := pair[0], pair[1]
		if ip.Overlaps(sn, own) {
			return network.State{}, &overlapError{fmt.Sprintf("its subnet %s overlaps this node's subnet %s", sn, own)}
		}
		if other, osn, ok := l.index.overlapping(peer.Name, sn); ok {
			return network.State{}, &overlapError{fmt.Sprintf("its subnet %s overlaps the subnet %s of peer %s", sn, osn, other)}
		}
	}
	return l.backend.PeerState(peer)
}
