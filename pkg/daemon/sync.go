package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/health"
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
	*admission
	peers   *subnet.Peers
	own     subnet.Lease
	resync  time.Duration
	status  *health.Status
	metrics *metrics.Metrics
	// prepared is closed once the rest of the node is prepared (the
	// firewall rules, subnet.env): until then the loop programs peers but
	// does not report the node ready. nil: prepared (run sets it to nil
	// once it is closed).
	prepared <-chan struct{}
	// onReady is called when the node becomes ready: after the first
	// successful full pass, and again after recovering from failures.
	onReady func()
	// event posts an Event on the node's object (warning, reason, message).
	event func(warning bool, reason, message string)
	// localAddrs returns the addresses (with their prefixes) of the
	// external interface, for the peer rules; nil leaves them as given.
	localAddrs func() ([]netip.Prefix, error)
	// extMTU is the external interface's MTU as last notified (written by
	// the kernel watch); underlayMTU the one the backend was last sized
	// for. onMTU is called when the MTU pods must use changed.
	extMTU      atomic.Int64
	underlayMTU int
	onMTU       func(mtu int)

	// drift is signalled (coalesced) when the kernel reports that
	// something flanneld owns changed; fullWanted when that needs a full
	// pass, not only the entries the reconciler noted.
	drift      chan struct{}
	fullWanted atomic.Bool

	base network.State

	mu    sync.Mutex
	owned []int // the backend's owned links, read by the drift watcher
}

func newSyncLoop(be backend.Backend, rec *network.Reconciler, peers *subnet.Peers, rules subnet.PeerRules, resync time.Duration, status *health.Status, m *metrics.Metrics) *syncLoop {
	l := &syncLoop{
		admission: newAdmission(be, rec, rules),
		peers:     peers,
		own:       rules.Own,
		resync:    resync,
		status:    status,
		metrics:   m,
		onReady:   func() {},
		onMTU:     func(int) {},
		event:     func(bool, string, string) {},
		drift:     make(chan struct{}, 1),
		owned:     be.Base().OwnedLinks,
	}
	l.admission.report = l.reportSkip
	l.setBase(be.Base())
	return l
}

// reportSkip counts a skipped peer and posts an Event about it, quoting
// at most maxEventBytes.
func (l *syncLoop) reportSkip(name string, reason subnet.SkipReason, err error) {
	l.metrics.PeersRejected.WithLabelValues(string(reason)).Inc()
	event := "PeerSkipped"
	if reason == subnet.SkipUnreachable {
		event = "PeerUnreachable"
	}
	l.event(true, event, truncate(fmt.Sprintf("peer %s skipped: %v", name, err), maxEventBytes))
}

// maxEventBytes bounds the message of an Event flanneld posts.
const maxEventBytes = 1024

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// setBase gives the reconciler the backend's own state (its devices).
func (l *syncLoop) setBase(base network.State) {
	l.reconciler.Update("", l.base, base)
	l.reconciler.SetOwnedLinks(base.OwnedLinks)
	l.base = base
}

// kick asks for a pass because the kernel drifted: an incremental one
// restores the entries the reconciler noted.
func (l *syncLoop) kick() {
	select {
	case l.drift <- struct{}{}:
	default:
	}
}

// kickFull asks for a full pass: the device changed, notifications were
// lost, or what this node reaches may have changed.
func (l *syncLoop) kickFull() {
	l.fullWanted.Store(true)
	l.kick()
}

func (l *syncLoop) ownedLinks() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.owned
}

// loopState is what the sync loop carries from one pass to the next.
type loopState struct {
	full       bool             // the next pass is a full one (so is the first)
	synced     bool             // the lease source has delivered its initial view
	ready      bool             // the node is reported ready
	wait       <-chan time.Time // a retry, or a rate-limited repair
	retryDelay time.Duration
}

func (l *syncLoop) run(ctx context.Context) {
	resync := time.NewTicker(l.resync)
	defer resync.Stop()
	limiter := rate.NewLimiter(rate.Every(repairInterval), repairBurst)
	s := &loopState{full: true, retryDelay: time.Second}
	l.status.Beat()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.prepared:
			l.prepared = nil
		case <-l.peers.Changed():
		case <-resync.C:
			s.full = true
		case <-l.drift:
			s.full = s.full || l.fullWanted.Swap(false)
			if d := limiter.Reserve().Delay(); d > 0 {
				klog.V(2).InfoS("Rate-limiting drift repair", "delay", d)
				s.wait = time.After(d)
				continue
			}
		case <-s.wait:
			s.wait = nil
		}
		if !l.pass(ctx, s) {
			continue
		}
		// Bound the pass rate: events arriving meanwhile are coalesced.
		select {
		case <-ctx.Done():
			return
		case <-time.After(minSyncInterval):
		}
	}
}

// pass runs one pass, full or incremental, and reports whether it
// succeeded. Before the lease source has synced it programs nothing.
func (l *syncLoop) pass(ctx context.Context, s *loopState) bool {
	if s.full {
		if err := l.ensureDevice(ctx); err != nil {
			l.failed(s, "Device check", err)
			return false
		}
		l.refreshRules()
	}
	s.synced = l.drain(s.full) || s.synced
	if !s.synced {
		// Never program, let alone prune, before every peer is known.
		l.status.Beat()
		return false
	}
	res, err := l.reconcile(s.full)
	if err != nil {
		l.failed(s, "Sync", err)
		return false
	}
	if !res.RetryAt.IsZero() && s.wait == nil {
		// Entries that failed are retried with backoff; the node is ready
		// with the rest.
		s.wait = time.After(time.Until(res.RetryAt))
	}
	s.full, s.retryDelay = false, time.Second
	l.verbose = true
	l.status.Beat()
	l.metrics.LastSync.SetToCurrentTime()
	if l.prepared != nil {
		l.status.SetReady(false, "waiting for the firewall rules and the subnet file")
	} else if !s.ready {
		s.ready = true
		l.status.SetReady(true, "")
		l.onReady()
	}
	return true
}

// reconcile lets the reconciler apply the desired state, and logs and
// counts what it did.
func (l *syncLoop) reconcile(full bool) (network.Result, error) {
	kind := "incremental"
	if full {
		kind = "full"
	}
	start := time.Now()
	res, err := l.reconciler.Apply(full)
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
	l.metrics.PeersProgrammed.Set(float64(len(l.states)))
	l.reportEntries(res)
	if err == nil {
		klog.V(2).InfoS("Synced peers", "peers", len(l.states), "kind", kind,
			"added", res.Added, "removed", res.Removed, "duration", elapsed)
	}
	return res, err
}

// failed reports a failed pass: the node is not ready until a pass
// succeeds, which is retried with backoff.
func (l *syncLoop) failed(s *loopState, what string, err error) {
	klog.ErrorS(err, what+" failed; retrying", "retryIn", s.retryDelay)
	l.metrics.SyncErrors.Inc()
	if s.ready {
		s.ready = false
		l.status.SetReady(false, what+" failed: "+err.Error())
	}
	s.wait = time.After(s.retryDelay)
	s.retryDelay = min(2*s.retryDelay, maxRetryDelay)
}

// watchKernel turns the kernel's change notifications into full passes,
// until ctx ends:
// when an entry flanneld installed is deleted or changed, when its device is
// deleted or set down, when the underlay link comes back up, and when
// notifications were lost.
func (l *syncLoop) watchKernel(ctx context.Context, extIndex int) {
	extUp := true
	kernel.Subscribe(ctx, nil, func(ev kernel.Event) {
		switch {
		case ev.Lost:
			l.kickFull()
		case ev.Link != nil:
			if slices.Contains(l.ownedLinks(), ev.Link.Index) {
				// Deleted, set down, or changed (another MAC, MTU): the
				// device check of a full pass puts it right. (Rate-limited,
				// as flanneld's own changes notify too.)
				if ev.Link.Deleted || !ev.Link.Up {
					klog.InfoS("Device changed; repairing", "device", ev.Link.Name, "deleted", ev.Link.Deleted, "up", ev.Link.Up)
				}
				l.kickFull()
			}
			if ev.Link.Index == extIndex {
				if ev.Link.MTU > 0 && int64(ev.Link.MTU) != l.extMTU.Swap(int64(ev.Link.MTU)) {
					l.kickFull() // the overlay MTU follows
				}
				if ev.Link.Up && !extUp {
					klog.InfoS("External interface is up again; resyncing", "interface", ev.Link.Name)
					l.peers.MarkAllDirty() // reachability may have changed
					l.kickFull()
				}
				extUp = ev.Link.Up
			}
		case ev.Addr != nil:
			// A peer skipped as unreachable may be reachable now (an
			// IPv6 address often returns after its link is up).
			if ev.Addr.LinkIndex == extIndex && !ev.Deleted {
				klog.V(2).InfoS("External interface got an address; resyncing", "address", ev.Addr.Addr)
				l.kickFull()
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
	podMTU := l.backend.MTU()
	l.followUnderlayMTU()
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
	if mtu := l.backend.MTU(); mtu != podMTU {
		l.onMTU(mtu)
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

// followUnderlayMTU resizes the backend for the external interface's MTU
// when the kernel reported a new one (the backend's Setup then gives its
// devices their new MTU).
func (l *syncLoop) followUnderlayMTU() {
	ext := int(l.extMTU.Load())
	f, ok := l.backend.(backend.MTUFollower)
	if !ok || ext == 0 || ext == l.underlayMTU {
		return
	}
	klog.InfoS("The external interface's MTU changed", "mtu", ext, "was", l.underlayMTU)
	if err := f.SetUnderlayMTU(ext); err != nil {
		klog.ErrorS(err, "Keeping the overlay MTU", "mtu", l.backend.MTU())
		l.event(true, "MTUTooSmall", truncate(err.Error(), maxEventBytes))
	}
	l.underlayMTU = ext
}

// drain folds the changed peers into the desired state, and reports
// whether the lease source has synced. With full (a full pass), the peers
// skipped as unreachable are examined again.
func (l *syncLoop) drain(full bool) bool {
	changed, synced := l.peers.Drain()
	l.apply(changed, full)
	return synced
}

// refreshRules re-reads the external interface's addresses for the peer
// rules; when they changed, every peer is examined again.
func (l *syncLoop) refreshRules() {
	if l.localAddrs == nil {
		return
	}
	prefixes, err := l.localAddrs()
	if err != nil {
		klog.ErrorS(err, "Could not read the external interface's addresses; keeping the previous ones")
		return
	}
	local := []netip.Addr{l.own.Attrs.PublicIP, l.own.Attrs.PublicIPv6}
	for _, p := range prefixes {
		local = append(local, p.Addr())
	}
	local = slices.DeleteFunc(local, func(a netip.Addr) bool { return !a.IsValid() })
	if slices.Equal(local, l.rules.Local) && slices.Equal(prefixes, l.rules.Segments) {
		return
	}
	l.rules.Local, l.rules.Segments = local, prefixes
	l.peers.MarkAllDirty()
}

// reportEntries logs, counts and posts an Event for each kernel entry that
// failed for the first time, and logs those that recovered.
func (l *syncLoop) reportEntries(res network.Result) {
	for _, f := range res.Failures {
		reason, event, msg := "refused", "EntryRefused", "Kernel refused entry; retrying with backoff"
		if f.Conflict {
			reason, event, msg = "conflict", "EntryConflict", "Kernel entry conflicts with one flanneld does not own; leaving it alone"
		}
		klog.InfoS(msg, "kind", f.Kind, "entry", f.Entry, "peer", f.Owner, "err", f.Err)
		l.metrics.EntryFailures.WithLabelValues(f.Kind, reason).Inc()
		l.event(true, event, truncate(fmt.Sprintf("%s %s of peer %s: %v", f.Kind, f.Entry, f.Owner, f.Err), maxEventBytes))
	}
	for _, f := range res.Recovered {
		klog.InfoS("Programmed entry that had failed", "kind", f.Kind, "entry", f.Entry, "peer", f.Owner)
	}
	l.metrics.EntriesFailing.Set(float64(res.Failing))
}
