// Package network turns desired forwarding state into kernel state. The
// Reconciler owns routes, neighbours and FDB entries; the Firewall owns the
// iptables rules. Backends compute State values and never touch the kernel
// themselves.
package network

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/flanneld/flanneld/network/kernel"
)

// State is the forwarding state flanneld wants in the kernel.
type State struct {
	Routes []kernel.Route
	Neighs []kernel.Neigh
	FDBs   []kernel.FDB
	// WGPeers are peers of WireGuard devices.
	WGPeers []kernel.WGPeer
	// OwnedLinks are the devices flanneld owns entirely (flannel.1,
	// flannel-wg): every permanent neighbour and FDB entry on them, every
	// WireGuard peer of them, and every route through them, that is not
	// desired is removed. Elsewhere only routes marked
	// with kernel.RouteProtocol are considered flanneld's.
	OwnedLinks []int
}

// Merge appends o's entries to s.
func (s *State) Merge(o State) {
	s.Routes = append(s.Routes, o.Routes...)
	s.Neighs = append(s.Neighs, o.Neighs...)
	s.FDBs = append(s.FDBs, o.FDBs...)
	s.WGPeers = append(s.WGPeers, o.WGPeers...)
	s.OwnedLinks = append(s.OwnedLinks, o.OwnedLinks...)
}

// Result summarises one reconcile pass.
type Result struct {
	// Added counts entries created or changed, Removed entries deleted.
	Added, Removed int
	// Repaired describes entries flanneld had installed that the kernel had
	// lost or changed (drift), e.g. "route 10.244.2.0/24 ...: missing".
	Repaired []string
	// Kinds counts repairs by kind ("route", "neighbour", "fdb", "wgpeer").
	Kinds map[string]int
	// Failures are the entries that failed for the first time (or with
	// another error than before) in this pass: each is reported once, and
	// retried with backoff while the rest of the state is applied.
	Failures []EntryFailure
	// Recovered are the entries that went in after having failed.
	Recovered []EntryFailure
	// Failing counts the entries that are failing now.
	Failing int
	// RetryAt is when the first failing entry is due to be retried (zero
	// when none is failing): the caller runs a pass then.
	RetryAt time.Time
}

// EntryFailure is one kernel entry that could not be applied.
type EntryFailure struct {
	// Kind is "route", "neighbour", "fdb" or "wgpeer"; Entry describes
	// the entry.
	Kind, Entry string
	// Owner is the peer that wants the entry ("" for the backend's own).
	Owner string
	// Conflict is set when the kernel holds an entry flanneld does not own
	// at the entry's key (another agent's route): it is left alone.
	Conflict bool
	Err      error
}

func (r *Result) repaired(kind, what string) {
	r.Repaired = append(r.Repaired, kind+" "+what)
	if r.Kinds == nil {
		r.Kinds = map[string]int{}
	}
	r.Kinds[kind]++
}

func (r *Result) retryAt(t time.Time) {
	if r.RetryAt.IsZero() || t.Before(r.RetryAt) {
		r.RetryAt = t
	}
}

// Backoff of a failing entry: it is retried after retryMin, doubling up to
// retryMax.
const (
	retryMin = time.Second
	retryMax = 5 * time.Minute
)

// Reconciler applies the desired state to the kernel. The desired state is
// kept here and changed entry by entry (Update), so a change to one peer
// costs work for that peer's entries only, whatever the cluster size.
// It remembers what took effect: an incremental pass applies only the
// entries changed since (and retries those that failed); a full pass
// compares everything with what the kernel actually has, repairs drift and
// prunes stale entries flanneld owns.
//
// Every desired entry has one owner (a peer, or "" for the backend's own
// state). A second owner wanting the same key does not change it: its
// claim waits, and takes over only when the holder lets go, so the holder's
// value is never overwritten and is the one restored. An entry the kernel
// refuses, or whose key the kernel holds for another agent, is skipped and
// retried with backoff; the rest of the pass is applied.
type Reconciler struct {
	k  kernel.Interface
	mu sync.Mutex // held by Update and a whole Apply
	// amu guards what Drifted reads (the tables' applied and failed
	// entries) and retryNow, so that the kernel watch is never held up by
	// a pass's netlink calls.
	amu sync.RWMutex
	// retryNow are failing routes whose way was cleared (the route in
	// their way was deleted): the next pass tries them at once.
	retryNow map[kernel.RouteKey]struct{}
	// now is time.Now, replaced in tests.
	now func() time.Time

	ownedLinks []int
	routes     table[kernel.RouteKey, kernel.Route]
	neighs     table[kernel.NeighKey, kernel.Neigh]
	fdbs       table[kernel.FDBKey, kernel.FDB]
	wgpeers    table[kernel.WGPeerKey, kernel.WGPeer]
}

// NewReconciler returns a Reconciler programming k, with nothing desired.
// Routes are created exclusively (never over another agent's route) unless
// flanneld owns the route already; neighbours and FDB entries live on
// flanneld's own devices and are replaced.
func NewReconciler(k kernel.Interface) *Reconciler {
	r := &Reconciler{k: k, now: time.Now, retryNow: map[kernel.RouteKey]struct{}{}}
	r.routes = newTable("route", &r.amu, k.AddRoute, k.SetRoute, k.DelRoute, routeLess)
	r.neighs = newTable("neighbour", &r.amu, k.SetNeigh, k.SetNeigh, k.DelNeigh, neighLess)
	r.fdbs = newTable("fdb", &r.amu, k.SetFDB, k.SetFDB, k.DelFDB, fdbLess)
	r.wgpeers = newTable("wgpeer", &r.amu, k.SetWGPeer, k.SetWGPeer, k.DelWGPeer, wgPeerLess)
	return r
}

func routeLess(a, b kernel.RouteKey) int {
	if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Dst.Bits(), b.Dst.Bits())
}

func neighLess(a, b kernel.NeighKey) int {
	if c := cmp.Compare(a.LinkIndex, b.LinkIndex); c != 0 {
		return c
	}
	return a.IP.Compare(b.IP)
}

func fdbLess(a, b kernel.FDBKey) int {
	if c := cmp.Compare(a.LinkIndex, b.LinkIndex); c != 0 {
		return c
	}
	return slices.Compare(a.MAC[:], b.MAC[:])
}

func wgPeerLess(a, b kernel.WGPeerKey) int {
	if c := cmp.Compare(a.LinkIndex, b.LinkIndex); c != 0 {
		return c
	}
	return slices.Compare(a.PublicKey[:], b.PublicKey[:])
}

func (r *Reconciler) want(owner string, s State) {
	for _, rt := range s.Routes {
		rt.Protocol = kernel.RouteProtocol
		r.routes.want(owner, rt.Key(), rt)
	}
	for _, n := range s.Neighs {
		r.neighs.want(owner, n.Key(), n)
	}
	for _, f := range s.FDBs {
		r.fdbs.want(owner, f.Key(), f)
	}
	for _, p := range s.WGPeers {
		r.wgpeers.want(owner, p.Key(), p)
	}
}

// unwant lets go of owner's entries of old that keep is not.
func (r *Reconciler) unwant(owner string, old, keep State) {
	for _, rt := range old.Routes {
		if !slices.ContainsFunc(keep.Routes, func(o kernel.Route) bool { return o.Key() == rt.Key() }) {
			r.routes.unwant(owner, rt.Key())
		}
	}
	for _, n := range old.Neighs {
		if !slices.ContainsFunc(keep.Neighs, func(o kernel.Neigh) bool { return o.Key() == n.Key() }) {
			r.neighs.unwant(owner, n.Key())
		}
	}
	for _, f := range old.FDBs {
		if !slices.ContainsFunc(keep.FDBs, func(o kernel.FDB) bool { return o.Key() == f.Key() }) {
			r.fdbs.unwant(owner, f.Key())
		}
	}
	for _, p := range old.WGPeers {
		if !slices.ContainsFunc(keep.WGPeers, func(o kernel.WGPeer) bool { return o.Key() == p.Key() }) {
			r.wgpeers.unwant(owner, p.Key())
		}
	}
}

// Update changes the desired state of owner (a peer's name, or "" for the
// backend's own state) from old to new (either may be empty). It costs
// work for those entries only. A key another owner holds is not taken
// over: see Conflict.
func (r *Reconciler) Update(owner string, old, new State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want(owner, new) // before unwant, so entries in both never leave
	r.unwant(owner, old, new)
}

// Conflict returns another owner that holds one of the entries of st, and
// that entry, if any.
func (r *Reconciler) Conflict(owner string, st State) (other, entry string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rt := range st.Routes {
		if h, ok := r.routes.conflict(owner, rt.Key()); ok {
			return h, "route " + rt.String(), true
		}
	}
	for _, n := range st.Neighs {
		if h, ok := r.neighs.conflict(owner, n.Key()); ok {
			return h, "neighbour " + n.String(), true
		}
	}
	for _, f := range st.FDBs {
		if h, ok := r.fdbs.conflict(owner, f.Key()); ok {
			return h, "fdb entry for " + f.MAC.String(), true
		}
	}
	for _, p := range st.WGPeers {
		if h, ok := r.wgpeers.conflict(owner, p.Key()); ok {
			return h, "WireGuard peer with public key " + p.PublicKey.String(), true
		}
	}
	return "", "", false
}

// SetOwnedLinks sets the devices flanneld owns entirely.
func (r *Reconciler) SetOwnedLinks(links []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ownedLinks = slices.Clone(links)
}

// Apply makes the kernel match the desired state. With full set it reads
// the kernel first, repairing drift and pruning flanneld's stale entries;
// otherwise it applies only what changed since the previous pass, and
// retries what failed. A full pass must only be run once every input has
// synced, or it would prune live peers.
//
// Entries are added before stale ones are removed, and for each peer the
// WireGuard peer, neighbour and FDB entry go in before the route that uses
// them. WireGuard peers have no change notifications: a full pass repairs
// them. An entry
// that fails is reported in the Result and retried with backoff; the error
// is only for what stops the whole pass (the kernel cannot be read).
func (r *Reconciler) Apply(full bool) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()

	var snap Snapshot
	if full {
		var err error
		if snap, err = ReadOwned(r.k, r.ownedLinks); err != nil {
			return Result{}, err
		}
	}
	r.takeNotes(full)
	routeKeys, neighKeys, fdbKeys := r.routes.keys(snap.Routes), r.neighs.keys(snap.Neighs), r.fdbs.keys(snap.FDBs)
	wgKeys := r.wgpeers.keys(snap.WGPeers)

	var res Result
	now := r.now()
	r.wgpeers.add(wgKeys, snap.WGPeers, now, &res)
	r.neighs.add(neighKeys, snap.Neighs, now, &res)
	r.fdbs.add(fdbKeys, snap.FDBs, now, &res)
	r.routes.add(routeKeys, snap.Routes, now, &res)
	r.routes.remove(routeKeys, snap.Routes, now, &res)
	r.fdbs.remove(fdbKeys, snap.FDBs, now, &res)
	r.neighs.remove(neighKeys, snap.Neighs, now, &res)
	r.wgpeers.remove(wgKeys, snap.WGPeers, now, &res)
	res.Failing = len(r.routes.failed) + len(r.neighs.failed) + len(r.fdbs.failed) + len(r.wgpeers.failed)
	return res, nil
}

// takeNotes folds what Drifted noted into the pass about to start:
// drifted entries to restore, failing routes to retry at once.
func (r *Reconciler) takeNotes(full bool) {
	r.amu.Lock()
	defer r.amu.Unlock()
	r.routes.takeSuspects(full)
	r.neighs.takeSuspects(full)
	r.fdbs.takeSuspects(full)
	r.wgpeers.takeSuspects(full)
	for k := range r.retryNow {
		if f := r.routes.failed[k]; f != nil {
			f.next = time.Time{}
		}
		r.routes.dirty[k] = struct{}{}
	}
	clear(r.retryNow)
}

// Drifted reports whether a kernel change notification contradicts what
// the reconciler applied: an entry it installed was deleted or changed by
// someone else. Notifications of its own changes are not drift. The entry
// is noted, and the next pass, incremental or full, restores it (logged in
// Result.Repaired). The deletion of a route whose key a failing entry wants
// (another agent's route was in the way) makes that entry due at once.
func (r *Reconciler) Drifted(ev kernel.Event) bool {
	r.amu.Lock()
	defer r.amu.Unlock()
	switch {
	case ev.Route != nil:
		if _, failing := r.routes.failed[ev.Route.Key()]; failing && ev.Deleted {
			r.retryNow[ev.Route.Key()] = struct{}{}
			return true
		}
		return r.routes.noteDrift(ev.Route.Key(), *ev.Route, ev.Deleted)
	case ev.Neigh != nil:
		return r.neighs.noteDrift(ev.Neigh.Key(), *ev.Neigh, ev.Deleted)
	case ev.FDB != nil:
		return r.fdbs.noteDrift(ev.FDB.Key(), *ev.FDB, ev.Deleted)
	}
	return false
}

// protoKernel is RTPROT_KERNEL: routes the kernel adds for addresses.
const protoKernel = 2
