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
}

func (r *Result) repaired(kind, what string) {
	r.Repaired = append(r.Repaired, kind+" "+what)
	if r.Kinds == nil {
		r.Kinds = map[string]int{}
	}
	r.Kinds[kind]++
}

// Changed reports whether the pass changed anything in the kernel.
func (r Result) Changed() bool { return r.Added+r.Removed > 0 }

// Reconciler applies the desired state to the kernel. The desired state is
// kept here and changed entry by entry (Update), so a change to one peer
// costs work for that peer's entries only, whatever the cluster size.
// It remembers what took effect: an incremental pass applies only the
// entries changed since (and retries those that failed); a full pass
// compares everything with what the kernel actually has, repairs drift and
// prunes stale entries flanneld owns.
type Reconciler struct {
	k  kernel.Interface
	mu sync.Mutex

	ownedLinks []int
	routes     table[kernel.RouteKey, kernel.Route]
	neighs     table[kernel.NeighKey, kernel.Neigh]
	fdbs       table[kernel.FDBKey, kernel.FDB]
}

// NewReconciler returns a Reconciler programming k, with nothing desired.
func NewReconciler(k kernel.Interface) *Reconciler {
	return &Reconciler{
		k:      k,
		routes: newTable("route", k.SetRoute, k.DelRoute, routeLess),
		neighs: newTable("neighbour", k.SetNeigh, k.DelNeigh, neighLess),
		fdbs:   newTable("fdb", k.SetFDB, k.DelFDB, fdbLess),
	}
}

// table is one kind of kernel entry: what is desired, what was applied as
// far as flanneld knows, and which keys changed since the last pass.
type table[K comparable, V comparable] struct {
	kind    string
	desired map[K]V
	// refs counts the peers that want a desired key, for the rare keys
	// wanted more than once (absent means once); an entry stays desired
	// until the last of them lets go.
	refs    map[K]int
	applied map[K]V
	dirty   map[K]struct{}
	set     func(V) error
	del     func(V) error
	less    func(a, b K) int
}

func newTable[K comparable, V comparable](kind string, set, del func(V) error, less func(a, b K) int) table[K, V] {
	return table[K, V]{kind: kind, desired: map[K]V{}, refs: map[K]int{}, applied: map[K]V{},
		dirty: map[K]struct{}{}, set: set, del: del, less: less}
}

func (t *table[K, V]) want(k K, v V) {
	cur, ok := t.desired[k]
	if ok {
		t.refs[k] = max(t.refs[k], 1) + 1
	}
	if !ok || cur != v {
		t.desired[k] = v
		t.dirty[k] = struct{}{}
	}
}

func (t *table[K, V]) unwant(k K) {
	if n, ok := t.refs[k]; ok {
		if n > 2 {
			t.refs[k] = n - 1
		} else {
			delete(t.refs, k)
		}
		return
	}
	if _, ok := t.desired[k]; ok {
		delete(t.desired, k)
		t.dirty[k] = struct{}{}
	}
}

func (t *table[K, V]) clearDesired() {
	for k := range t.desired {
		t.dirty[k] = struct{}{}
	}
	clear(t.desired)
	clear(t.refs)
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

// add makes the kernel hold every desired entry among keys. actual is nil
// for an incremental pass (compare with what was applied), else the
// kernel's view of what flanneld owns.
func (t *table[K, V]) add(keys []K, actual map[K]V, res *Result) error {
	var errs []error
	for _, k := range keys {
		want, ok := t.desired[k]
		if !ok {
			continue
		}
		have, applied := t.applied[k]
		if actual != nil {
			kernelHas, inKernel := actual[k]
			if inKernel && kernelHas == want {
				t.applied[k] = want
				delete(t.dirty, k)
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
		if err := t.set(want); err != nil {
			delete(t.applied, k)
			t.dirty[k] = struct{}{}
			errs = append(errs, err)
			continue
		}
		t.applied[k] = want
		delete(t.dirty, k)
		res.Added++
		klog.V(4).InfoS("Programmed", "kind", t.kind, "entry", want)
	}
	return errors.Join(errs...)
}

// remove deletes the entries among keys that are not desired: those
// applied (incremental pass) or, on a full pass, those the kernel has.
func (t *table[K, V]) remove(keys []K, actual map[K]V, res *Result) error {
	var errs []error
	for _, k := range keys {
		if _, ok := t.desired[k]; ok {
			continue
		}
		stale, ok := t.applied[k]
		if actual != nil {
			stale, ok = actual[k]
		}
		if !ok {
			delete(t.applied, k)
			delete(t.dirty, k)
			continue
		}
		err := t.del(stale)
		if err != nil && !errors.Is(err, kernel.ErrNotFound) {
			t.dirty[k] = struct{}{}
			errs = append(errs, err)
			continue
		}
		delete(t.applied, k)
		delete(t.dirty, k)
		if err == nil {
			res.Removed++
			klog.V(4).InfoS("Removed", "kind", t.kind, "entry", stale)
		}
	}
	return errors.Join(errs...)
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

func (r *Reconciler) want(s State) {
	for _, rt := range s.Routes {
		rt.Protocol = kernel.RouteProtocol
		r.routes.want(rt.Key(), rt)
	}
	for _, n := range s.Neighs {
		r.neighs.want(n.Key(), n)
	}
	for _, f := range s.FDBs {
		r.fdbs.want(f.Key(), f)
	}
}

func (r *Reconciler) unwant(s State) {
	for _, rt := range s.Routes {
		r.routes.unwant(rt.Key())
	}
	for _, n := range s.Neighs {
		r.neighs.unwant(n.Key())
	}
	for _, f := range s.FDBs {
		r.fdbs.unwant(f.Key())
	}
}

// Replace makes desired the whole desired state (OwnedLinks included).
func (r *Reconciler) Replace(desired State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes.clearDesired()
	r.neighs.clearDesired()
	r.fdbs.clearDesired()
	r.ownedLinks = slices.Clone(desired.OwnedLinks)
	r.want(desired)
}

// Update changes the desired state of one peer from old to new (either
// may be empty). It costs work for those entries only.
func (r *Reconciler) Update(old, new State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want(new) // before unwant, so entries in both never leave
	r.unwant(old)
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
// neighbour and FDB entry go in before the route that uses them.
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
	errs := []error{
		r.neighs.add(neighKeys, snap.Neighs, &res),
		r.fdbs.add(fdbKeys, snap.FDBs, &res),
		r.routes.add(routeKeys, snap.Routes, &res),
		r.routes.remove(routeKeys, snap.Routes, &res),
		r.fdbs.remove(fdbKeys, snap.FDBs, &res),
		r.neighs.remove(neighKeys, snap.Neighs, &res),
	}
	return res, errors.Join(errs...)
}

// Drifted reports whether a kernel change notification contradicts what
// the reconciler applied: an entry it installed was deleted or changed by
// someone else. Notifications of its own changes are not drift.
func (r *Reconciler) Drifted(ev kernel.Event) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case ev.Route != nil:
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
