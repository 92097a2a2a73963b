package network

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/network/kernel"
)

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
	// suspect are applied keys the kernel reported deleted or changed
	// (under amu), with what it reported; drifted are those the next pass
	// restores, taken from suspect when it starts.
	suspect map[K]string
	drifted map[K]string
	// create adds an entry the kernel is not known to hold for flanneld;
	// set replaces one flanneld holds.
	create, set, del func(V) error
	less             func(a, b K) int
}

func newTable[K comparable, V comparable](kind string, amu *sync.RWMutex, create, set, del func(V) error, less func(a, b K) int) table[K, V] {
	return table[K, V]{kind: kind, desired: map[K]V{}, holder: map[K]string{}, waiting: map[K][]claim[V]{},
		amu: amu, applied: map[K]V{}, dirty: map[K]struct{}{}, failed: map[K]*failure{},
		suspect: map[K]string{}, drifted: map[K]string{},
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
			reason, drifted := t.drifted[k]
			if !drifted {
				delete(t.dirty, k)
				continue
			}
			res.repaired(t.kind, fmt.Sprintf("%v: %s", want, reason))
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
		delete(t.drifted, k)
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

// noteDrift records, amu held, that the kernel reported the entry at k
// deleted or changed to have, when that contradicts what was applied; it
// reports whether it did.
func (t *table[K, V]) noteDrift(k K, have V, deleted bool) bool {
	applied, ok := t.applied[k]
	if !ok || (!deleted && have == applied) {
		return false
	}
	reason := "missing"
	if !deleted {
		reason = fmt.Sprintf("changed to %v", have)
	}
	t.suspect[k] = reason
	return true
}

// takeSuspects starts a pass, amu held: an incremental pass restores the
// suspect entries; a full pass compares every entry with the kernel anyway.
func (t *table[K, V]) takeSuspects(full bool) {
	if full {
		clear(t.drifted)
	} else {
		for k, reason := range t.suspect {
			t.drifted[k] = reason
			t.dirty[k] = struct{}{}
		}
	}
	clear(t.suspect)
}

// conflict returns the owner other than owner that holds k.
func (t *table[K, V]) conflict(owner string, k K) (string, bool) {
	h, ok := t.holder[k]
	return h, ok && h != owner
}
