// Package network turns desired forwarding state into kernel state. The
// Reconciler owns routes, neighbours and FDB entries; the Firewall owns the
// iptables rules. Backends compute State values and never touch the kernel
// themselves.
package network

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/pkg/kernel"
)

// State is the forwarding state flanneld wants in the kernel.
type State struct {
	Routes []kernel.Route
	Neighs []kernel.Neigh
	FDBs   []kernel.FDB
	// OwnedLinks are the devices flanneld owns entirely (flannel.1): every
	// permanent neighbour and FDB entry on them, and every route through
	// them, that is not desired is removed. Elsewhere only routes marked
	// with kernel.RouteProtocol are considered flanneld's.
	OwnedLinks []int
}

// Merge appends o's entries to s.
func (s *State) Merge(o State) {
	s.Routes = append(s.Routes, o.Routes...)
	s.Neighs = append(s.Neighs, o.Neighs...)
	s.FDBs = append(s.FDBs, o.FDBs...)
	s.OwnedLinks = append(s.OwnedLinks, o.OwnedLinks...)
}

// Result summarises one reconcile pass.
type Result struct {
	// Added counts entries created or changed, Removed entries deleted.
	Added, Removed int
	// Repaired describes entries flanneld had installed that the kernel had
	// lost or changed (drift), e.g. "route 10.244.2.0/24 ...: missing".
	Repaired []string
	// Kinds counts repairs by kind ("route", "neighbour", "fdb").
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
	// Kind is "route", "neighbour" or "fdb"; Entry describes the entry.
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

// Changed reports whether the pass changed anything in the kernel.
func (r Result) Changed() bool { return r.Added+r.Removed > 0 }

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
	return r
}

// claim is an owner's wish for a key that another owner holds.
type claim[V any] struct {
	owner string
	v     V
}

// failure is a key whose last kernel call failed.
type failure struct {
	err      string
	attempts int
	next     time.Time
}

// table is one kind of kernel entry: what is desired and by whom, what was
// applied as far as flanneld knows, and which keys changed since the last
// pass.
type table[K comparable, V comparable] struct {
	kind    string
	desired map[K]V
	holder  map[K]string
	// waiting are the claims of other owners on held keys, oldest first
	// (rare: the sync loop keeps peers from sharing keys).
	waiting map[K][]claim[V]
	// applied and failed are read by Drifted while a pass runs: they are
	// written under amu (shared by the tables), read under it by others.
	amu     *sync.RWMutex
	applied map[K]V
	dirty   map[K]struct{}
	failed  map[K]*failure
	// create adds an entry the kernel is not known to hold for flanneld;
	// set replaces one flanneld holds.
	create, set, del func(V) error
	less             func(a, b K) int
}

func newTable[K comparable, V comparable](kind string, amu *sync.RWMutex, create, set, del func(V) error, less func(a, b K) int) table[K, V] {
	return table[K, V]{kind: kind, desired: map[K]V{}, holder: map[K]string{}, waiting: map[K][]claim[V]{},
		amu: amu, applied: map[K]V{}, dirty: map[K]struct{}{}, failed: map[K]*failure{},
		create: create, set: set, del: del, less: less}
}

// setApplied records that the kernel holds v at k.
func (t *table[K, V]) setApplied(k K, v V) {
	t.amu.Lock()
	t.applied[k] = v
	t.amu.Unlock()
}

// forget records that the kernel holds nothing of flanneld's at k.
func (t *table[K, V]) forget(k K) {
	t.amu.Lock()
	delete(t.applied, k)
	t.amu.Unlock()
}

// clearFailure forgets k's failure.
func (t *table[K, V]) clearFailure(k K) {
	t.amu.Lock()
	delete(t.failed, k)
	t.amu.Unlock()
}

// setDesired makes v the desired value of k, held by owner.
func (t *table[K, V]) setDesired(owner string, k K, v V) {
	t.holder[k] = owner
	if cur, ok := t.desired[k]; !ok || cur != v {
		t.desired[k] = v
		t.dirty[k] = struct{}{}
		t.clearFailure(k) // a new value is tried at once
	}
}

func (t *table[K, V]) want(owner string, k K, v V) {
	if h, ok := t.holder[k]; ok && h != owner {
		w := slices.DeleteFunc(t.waiting[k], func(c claim[V]) bool { return c.owner == owner })
		t.waiting[k] = append(w, claim[V]{owner, v})
		return
	}
	t.setDesired(owner, k, v)
}

func (t *table[K, V]) unwant(owner string, k K) {
	if h, ok := t.holder[k]; !ok || h != owner {
		if w := slices.DeleteFunc(t.waiting[k], func(c claim[V]) bool { return c.owner == owner }); len(w) > 0 {
			t.waiting[k] = w
		} else {
			delete(t.waiting, k)
		}
		return
	}
	if w := t.waiting[k]; len(w) > 0 {
		if len(w) == 1 {
			delete(t.waiting, k)
		} else {
			t.waiting[k] = w[1:]
		}
		t.setDesired(w[0].owner, k, w[0].v)
		return
	}
	delete(t.desired, k)
	delete(t.holder, k)
	t.clearFailure(k)
	t.dirty[k] = struct{}{}
}

func (t *table[K, V]) clearDesired() {
	for k := range t.desired {
		t.dirty[k] = struct{}{}
	}
	clear(t.desired)
	clear(t.holder)
	clear(t.waiting)
	t.amu.Lock()
	clear(t.failed)
	t.amu.Unlock()
}

// keys returns the keys a pass looks at, sorted: the dirty ones for an
// incremental pass; for a full pass every key desired, applied or in the
// kernel.
func (t *table[K, V]) keys(actual map[K]V) []K {
	if actual == nil {
		return slices.SortedFunc(maps.Keys(t.dirty), t.less)
	}
	all := maps.Clone(t.dirty)
	for k := range t.desired {
		all[k] = struct{}{}
	}
	for k := range t.applied {
		all[k] = struct{}{}
	}
	for k := range actual {
		all[k] = struct{}{}
	}
	return slices.SortedFunc(maps.Keys(all), t.less)
}

// due reports whether a failing key may be tried now; if not, it stays
// dirty and res learns when it is due.
func (t *table[K, V]) due(k K, now time.Time, res *Result) bool {
	f := t.failed[k]
	if f == nil || !now.Before(f.next) {
		return true
	}
	t.dirty[k] = struct{}{}
	res.retryAt(f.next)
	return false
}

// fail records a failed kernel call for k: the key stays dirty and is
// retried with backoff; a new failure (or a new error) is reported once.
func (t *table[K, V]) fail(k K, v V, err error, now time.Time, res *Result) {
	f := t.failed[k]
	if f == nil {
		f = &failure{}
		t.amu.Lock()
		t.failed[k] = f
		t.amu.Unlock()
	}
	if f.attempts == 0 || f.err != err.Error() {
		res.Failures = append(res.Failures, EntryFailure{Kind: t.kind, Entry: fmt.Sprint(v), Owner: t.holder[k],
			Conflict: errors.Is(err, kernel.ErrExists), Err: err})
	}
	f.attempts++
	f.err = err.Error()
	f.next = now.Add(min(retryMin<<min(f.attempts-1, 20), retryMax))
	t.dirty[k] = struct{}{}
	res.retryAt(f.next)
}

// succeeded forgets k's failure, if any, reporting the recovery.
func (t *table[K, V]) succeeded(k K, v V, res *Result) {
	if _, ok := t.failed[k]; ok {
		t.clearFailure(k)
		res.Recovered = append(res.Recovered, EntryFailure{Kind: t.kind, Entry: fmt.Sprint(v), Owner: t.holder[k]})
	}
}

// add makes the kernel hold every desired entry among keys. actual is nil
// for an incremental pass (compare with what was applied), else the
// kernel's view of what flanneld owns.
func (t *table[K, V]) add(keys []K, actual map[K]V, now time.Time, res *Result) {
	for _, k := range keys {
		want, ok := t.desired[k]
		if !ok {
			continue
		}
		have, applied := t.applied[k]
		kernelHas, inKernel := actual[k] // flanneld's own entry at k, full passes only
		if actual != nil {
			if inKernel && kernelHas == want {
				t.setApplied(k, want)
				delete(t.dirty, k)
				t.succeeded(k, want, res)
				continue
			}
			if applied && have == want {
				// flanneld had installed exactly this and the kernel lost it.
				reason := "missing"
				if inKernel {
					reason = fmt.Sprintf("changed to %v", kernelHas)
				}
				res.repaired(t.kind, fmt.Sprintf("%v: %s", want, reason))
			}
		} else if applied && have == want {
			delete(t.dirty, k)
			continue
		}
		if !t.due(k, now, res) {
			continue
		}
		apply := t.create
		if applied || inKernel {
			apply = t.set // flanneld's own entry: replace it
		}
		if err := apply(want); err != nil {
			t.forget(k)
			t.fail(k, want, err, now, res)
			continue
		}
		t.setApplied(k, want)
		delete(t.dirty, k)
		t.succeeded(k, want, res)
		res.Added++
		klog.V(4).InfoS("Programmed", "kind", t.kind, "entry", want)
	}
}

// remove deletes the entries among keys that are not desired: those
// applied (incremental pass) or, on a full pass, those the kernel has.
func (t *table[K, V]) remove(keys []K, actual map[K]V, now time.Time, res *Result) {
	for _, k := range keys {
		if _, ok := t.desired[k]; ok {
			continue
		}
		stale, ok := t.applied[k]
		if actual != nil {
			stale, ok = actual[k]
		}
		if !ok {
			t.forget(k)
			delete(t.dirty, k)
			t.clearFailure(k)
			continue
		}
		if !t.due(k, now, res) {
			continue
		}
		err := t.del(stale)
		if err != nil && !errors.Is(err, kernel.ErrNotFound) {
			t.fail(k, stale, err, now, res)
			continue
		}
		t.forget(k)
		delete(t.dirty, k)
		t.clearFailure(k)
		if err == nil {
			res.Removed++
			klog.V(4).InfoS("Removed", "kind", t.kind, "entry", stale)
		}
	}
}

// conflict returns the owner other than owner that holds k.
func (t *table[K, V]) conflict(owner string, k K) (string, bool) {
	h, ok := t.holder[k]
	return h, ok && h != owner
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
}

// Replace makes desired the whole desired state (OwnedLinks included),
// held by the owner "".
func (r *Reconciler) Replace(desired State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes.clearDesired()
	r.neighs.clearDesired()
	r.fdbs.clearDesired()
	r.ownedLinks = slices.Clone(desired.OwnedLinks)
	r.want("", desired)
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
	return "", "", false
}

// SetOwnedLinks sets the devices flanneld owns entirely.
func (r *Reconciler) SetOwnedLinks(links []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ownedLinks = slices.Clone(links)
}

// Sync replaces the desired state and applies it; see Apply.
func (r *Reconciler) Sync(desired State, full bool) (Result, error) {
	r.Replace(desired)
	return r.Apply(full)
}

// Apply makes the kernel match the desired state. With full set it reads
// the kernel first, repairing drift and pruning flanneld's stale entries;
// otherwise it applies only what changed since the previous pass, and
// retries what failed. A full pass must only be run once every input has
// synced, or it would prune live peers.
//
// Entries are added before stale ones are removed, and for each peer the
// neighbour and FDB entry go in before the route that uses them. An entry
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
	routeKeys, neighKeys, fdbKeys := r.routes.keys(snap.Routes), r.neighs.keys(snap.Neighs), r.fdbs.keys(snap.FDBs)

	var res Result
	now := r.now()
	r.amu.Lock()
	for k := range r.retryNow {
		if f := r.routes.failed[k]; f != nil {
			f.next = time.Time{}
		}
		r.routes.dirty[k] = struct{}{}
	}
	clear(r.retryNow)
	r.amu.Unlock()
	r.neighs.add(neighKeys, snap.Neighs, now, &res)
	r.fdbs.add(fdbKeys, snap.FDBs, now, &res)
	r.routes.add(routeKeys, snap.Routes, now, &res)
	r.routes.remove(routeKeys, snap.Routes, now, &res)
	r.fdbs.remove(fdbKeys, snap.FDBs, now, &res)
	r.neighs.remove(neighKeys, snap.Neighs, now, &res)
	res.Failing = len(r.routes.failed) + len(r.neighs.failed) + len(r.fdbs.failed)
	return res, nil
}

// Drifted reports whether a kernel change notification contradicts what
// the reconciler applied: an entry it installed was deleted or changed by
// someone else. Notifications of its own changes are not drift. The
// deletion of a route whose key a failing entry wants (another agent's
// route was in the way) makes that entry due at once.
func (r *Reconciler) Drifted(ev kernel.Event) bool {
	r.amu.Lock()
	defer r.amu.Unlock()
	switch {
	case ev.Route != nil:
		if _, failing := r.routes.failed[ev.Route.Key()]; failing && ev.Deleted {
			r.retryNow[ev.Route.Key()] = struct{}{}
			return true
		}
		have, ok := r.routes.applied[ev.Route.Key()]
		return ok && (ev.Deleted || *ev.Route != have)
	case ev.Neigh != nil:
		have, ok := r.neighs.applied[ev.Neigh.Key()]
		return ok && (ev.Deleted || *ev.Neigh != have)
	case ev.FDB != nil:
		have, ok := r.fdbs.applied[ev.FDB.Key()]
		return ok && (ev.Deleted || *ev.FDB != have)
	}
	return false
}

// protoKernel is RTPROT_KERNEL: routes the kernel adds for addresses.
const protoKernel = 2
