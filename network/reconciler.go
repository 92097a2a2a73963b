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

// Reconciler applies State to the kernel. It remembers what took effect, so
// an incremental pass applies only the difference to the last pass and
// retries only what failed; a full pass compares with what the kernel
// actually has, repairs drift and prunes stale entries flanneld owns.
type Reconciler struct {
	k  kernel.Interface
	mu sync.Mutex

	// applied is what the kernel had after the last pass, as far as
	// flanneld knows.
	routes map[kernel.RouteKey]kernel.Route
	neighs map[kernel.NeighKey]kernel.Neigh
	fdbs   map[kernel.FDBKey]kernel.FDB
}

// NewReconciler returns a Reconciler programming k.
func NewReconciler(k kernel.Interface) *Reconciler {
	return &Reconciler{
		k:      k,
		routes: map[kernel.RouteKey]kernel.Route{},
		neighs: map[kernel.NeighKey]kernel.Neigh{},
		fdbs:   map[kernel.FDBKey]kernel.FDB{},
	}
}

// table is one kind of kernel entry as the generic diff sees it.
type table[K comparable, V any] struct {
	kind    string
	applied map[K]V
	set     func(V) error
	del     func(V) error
	equal   func(a, b V) bool
}

// sortedKeys gives a deterministic apply order (and stable test output).
func sortedKeys[K comparable, V any](m map[K]V, less func(a, b K) int) []K {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, less)
	return keys
}

// add makes the kernel hold every desired entry. actual is nil for an
// incremental pass (compare with what was applied), else the kernel's view.
func (t *table[K, V]) add(desired, actual map[K]V, less func(a, b K) int, res *Result) error {
	var errs []error
	for _, k := range sortedKeys(desired, less) {
		want := desired[k]
		have, ok := t.applied[k]
		if actual != nil {
			kernelHas, inKernel := actual[k]
			if inKernel && t.equal(kernelHas, want) {
				t.applied[k] = want
				continue
			}
			if ok && t.equal(have, want) {
				// We had installed exactly this and the kernel lost it.
				reason := "missing"
				if inKernel {
					reason = fmt.Sprintf("changed to %v", kernelHas)
				}
				res.repaired(t.kind, fmt.Sprintf("%v: %s", want, reason))
			}
		} else if ok && t.equal(have, want) {
			continue
		}
		if err := t.set(want); err != nil {
			delete(t.applied, k)
			errs = append(errs, err)
			continue
		}
		t.applied[k] = want
		res.Added++
		klog.V(4).InfoS("Programmed", "kind", t.kind, "entry", want)
	}
	return errors.Join(errs...)
}

// remove deletes what is not desired: every applied entry on an incremental
// pass, every owned kernel entry on a full pass.
func (t *table[K, V]) remove(desired, actual map[K]V, less func(a, b K) int, res *Result) error {
	stale := t.applied
	if actual != nil {
		stale = actual
	}
	var errs []error
	for _, k := range sortedKeys(stale, less) {
		if _, ok := desired[k]; ok {
			continue
		}
		err := t.del(stale[k])
		if err != nil && !errors.Is(err, kernel.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		delete(t.applied, k)
		if err == nil {
			res.Removed++
			klog.V(4).InfoS("Removed", "kind", t.kind, "entry", stale[k])
		}
	}
	if actual != nil {
		// Forget applied entries the kernel no longer has and nobody wants.
		for k := range t.applied {
			if _, ok := desired[k]; !ok {
				delete(t.applied, k)
			}
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

// Sync makes the kernel match desired. With full set it reads the kernel
// first, repairing drift and pruning flanneld's stale entries; otherwise it
// applies only the difference to the previous pass. A full pass must only be
// run once every input has synced, or it would prune live peers.
//
// Entries are added before stale ones are removed, and for each peer the
// neighbour and FDB entry go in before the route that uses them.
func (r *Reconciler) Sync(desired State, full bool) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()

	for i := range desired.Routes {
		desired.Routes[i].Protocol = kernel.RouteProtocol
	}
	wantRoutes := make(map[kernel.RouteKey]kernel.Route, len(desired.Routes))
	for _, rt := range desired.Routes {
		wantRoutes[rt.Key()] = rt
	}
	wantNeighs := make(map[kernel.NeighKey]kernel.Neigh, len(desired.Neighs))
	for _, n := range desired.Neighs {
		wantNeighs[n.Key()] = n
	}
	wantFDBs := make(map[kernel.FDBKey]kernel.FDB, len(desired.FDBs))
	for _, f := range desired.FDBs {
		wantFDBs[f.Key()] = f
	}

	var haveRoutes map[kernel.RouteKey]kernel.Route
	var haveNeighs map[kernel.NeighKey]kernel.Neigh
	var haveFDBs map[kernel.FDBKey]kernel.FDB
	if full {
		snap, err := ReadOwned(r.k, desired.OwnedLinks)
		if err != nil {
			return Result{}, err
		}
		haveRoutes, haveNeighs, haveFDBs = snap.Routes, snap.Neighs, snap.FDBs
	}

	routes := table[kernel.RouteKey, kernel.Route]{kind: "route", applied: r.routes,
		set: r.k.SetRoute, del: r.k.DelRoute, equal: func(a, b kernel.Route) bool { return a == b }}
	neighs := table[kernel.NeighKey, kernel.Neigh]{kind: "neighbour", applied: r.neighs,
		set: r.k.SetNeigh, del: r.k.DelNeigh, equal: func(a, b kernel.Neigh) bool { return a == b }}
	fdbs := table[kernel.FDBKey, kernel.FDB]{kind: "fdb", applied: r.fdbs,
		set: r.k.SetFDB, del: r.k.DelFDB, equal: func(a, b kernel.FDB) bool { return a == b }}

	var res Result
	errs := []error{
		neighs.add(wantNeighs, haveNeighs, neighLess, &res),
		fdbs.add(wantFDBs, haveFDBs, fdbLess, &res),
		routes.add(wantRoutes, haveRoutes, routeLess, &res),
		routes.remove(wantRoutes, haveRoutes, routeLess, &res),
		fdbs.remove(wantFDBs, haveFDBs, fdbLess, &res),
		neighs.remove(wantNeighs, haveNeighs, neighLess, &res),
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
		have, ok := r.routes[ev.Route.Key()]
		return ok && (ev.Deleted || *ev.Route != have)
	case ev.Neigh != nil:
		have, ok := r.neighs[ev.Neigh.Key()]
		return ok && (ev.Deleted || *ev.Neigh != have)
	case ev.FDB != nil:
		have, ok := r.fdbs[ev.FDB.Key()]
		return ok && (ev.Deleted || *ev.FDB != have)
	}
	return false
}

// protoKernel is RTPROT_KERNEL: routes the kernel adds for addresses.
const protoKernel = 2
