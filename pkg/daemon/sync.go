package daemon

import (
	"context"
	"time"

	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/subnet"
)

const (
	// minSyncInterval coalesces bursts of lease events into one pass.
	minSyncInterval = 100 * time.Millisecond
	maxRetryDelay   = 30 * time.Second
)

// syncLoop is the one loop that programs peers: lease events only mark
// peers dirty; the loop recomputes those peers' desired state and lets the
// reconciler apply the difference, with a periodic full pass that repairs
// drift and prunes stale entries.
type syncLoop struct {
	backend     backend.Backend
	reconciler  *network.Reconciler
	peers       *subnet.Peers
	own         subnet.Lease
	resync      time.Duration
	status      *health.Status
	onFirstSync func()

	// states is each usable peer's desired state, recomputed only when
	// that peer's lease changes.
	states map[string]network.State
}

func (l *syncLoop) run(ctx context.Context) {
	l.states = map[string]network.State{}
	resync := time.NewTicker(l.resync)
	defer resync.Stop()
	var (
		retry      <-chan time.Time
		retryDelay = time.Second
		synced     bool // the lease source has delivered its initial view
		first      = true
		full       bool
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.peers.Changed():
		case <-resync.C:
			full = true
		case <-retry:
			retry = nil
		}
		synced = l.drain() || synced
		if !synced {
			// Never program, let alone prune, before every peer is known.
			l.status.Beat()
			continue
		}
		start := time.Now()
		res, err := l.reconciler.Sync(l.desired(), first || full)
		for _, r := range res.Repaired {
			klog.InfoS("Repaired drift", "entry", r)
		}
		if err != nil {
			klog.ErrorS(err, "Sync failed; retrying", "retryIn", retryDelay)
			retry = time.After(retryDelay)
			retryDelay = min(2*retryDelay, maxRetryDelay)
			continue
		}
		retryDelay = time.Second
		l.status.Beat()
		klog.V(2).InfoS("Synced peers", "peers", len(l.states), "full", first || full,
			"added", res.Added, "removed", res.Removed, "duration", time.Since(start))
		full = false
		if first {
			first = false
			l.onFirstSync()
		}
		// Bound the pass rate: events arriving meanwhile are coalesced.
		select {
		case <-ctx.Done():
			return
		case <-time.After(minSyncInterval):
		}
	}
}

// drain folds the changed peers into states, and reports whether the
// lease source has synced.
func (l *syncLoop) drain() bool {
	changed, synced := l.peers.Drain()
	for name, lease := range changed {
		if lease == nil {
			if _, ok := l.states[name]; ok {
				klog.InfoS("Removing peer", "node", name)
			}
			delete(l.states, name)
			continue
		}
		st, err := l.peerState(*lease)
		if err != nil {
			klog.InfoS("Skipping peer", "node", name, "reason", err.Error())
			delete(l.states, name)
			continue
		}
		if _, ok := l.states[name]; !ok {
			klog.InfoS("Adding peer", "node", name, "subnet", lease.Subnet, "publicIP", lease.Attrs.PublicIP)
		} else {
			klog.InfoS("Updating peer", "node", name, "subnet", lease.Subnet, "publicIP", lease.Attrs.PublicIP)
		}
		l.states[name] = st
	}
	return synced
}

func (l *syncLoop) peerState(peer subnet.Lease) (network.State, error) {
	if peer.Subnet.Overlaps(l.own.Subnet) {
		return network.State{}, &overlapError{peer: peer.Subnet, own: l.own.Subnet}
	}
	return l.backend.PeerState(peer)
}

type overlapError struct{ peer, own interface{ String() string } }

func (e *overlapError) Error() string {
	return "its subnet " + e.peer.String() + " overlaps this node's subnet " + e.own.String()
}

func (l *syncLoop) desired() network.State {
	d := l.backend.Base()
	for _, st := range l.states {
		d.Merge(st)
	}
	return d
}
