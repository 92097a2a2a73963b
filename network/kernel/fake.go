package kernel

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory Interface for unit tests. It records every mutating
// call, and lets a test make the next calls for a key fail.
type Fake struct {
	mu     sync.Mutex
	Routes map[RouteKey]Route
	Neighs map[NeighKey]Neigh
	FDBs   map[FDBKey]FDB
	WG     map[WGPeerKey]WGPeer
	// Calls lists the mutating calls in order, e.g. "SetRoute 10.244.2.0/24 via ...".
	Calls []string
	// FailSet, when it returns a non-nil error for a call description,
	// makes that call fail without changing state.
	Fail func(call string) error
}

var _ Interface = (*Fake)(nil)

// NewFake returns an empty Fake.
func NewFake() *Fake {
	return &Fake{Routes: map[RouteKey]Route{}, Neighs: map[NeighKey]Neigh{}, FDBs: map[FDBKey]FDB{}, WG: map[WGPeerKey]WGPeer{}}
}

func (f *Fake) record(call string) error {
	if f.Fail != nil {
		if err := f.Fail(call); err != nil {
			return err
		}
	}
	f.Calls = append(f.Calls, call)
	return nil
}

// ResetCalls forgets the recorded calls.
func (f *Fake) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls = nil
}

// Dump prints the state sorted, one entry a line, for golden comparisons.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for _, r := range f.Routes {
		lines = append(lines, fmt.Sprintf("route %s proto %d", r, r.Protocol))
	}
	for _, n := range f.Neighs {
		lines = append(lines, "neigh "+n.String())
	}
	for _, e := range f.FDBs {
		lines = append(lines, "fdb "+e.String())
	}
	for _, p := range f.WG {
		lines = append(lines, "wgpeer "+p.String())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// ListRoutes implements Interface.
func (f *Fake) ListRoutes() ([]Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Collect(maps.Values(f.Routes)), nil
}

// SetRoute implements Interface.
func (f *Fake) SetRoute(r Route) error { return setEntry(f, f.Routes, "SetRoute", r) }

// AddRoute implements Interface: it fails wrapping ErrExists when a route
// to r.Dst exists.
func (f *Fake) AddRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AddRoute " + r.String()); err != nil {
		return err
	}
	if have, ok := f.Routes[r.Key()]; ok {
		return fmt.Errorf("add route %s: the kernel has %s: %w", r, have, ErrExists)
	}
	f.Routes[r.Key()] = r
	return nil
}

// DelRoute implements Interface.
func (f *Fake) DelRoute(r Route) error { return delEntry(f, f.Routes, "DelRoute", "route", r) }

// ListNeighs implements Interface.
func (f *Fake) ListNeighs(linkIndex int) ([]Neigh, error) {
	return listOn(f, f.Neighs, func(n Neigh) bool { return n.LinkIndex == linkIndex }), nil
}

// SetNeigh implements Interface.
func (f *Fake) SetNeigh(n Neigh) error { return setEntry(f, f.Neighs, "SetNeigh", n) }

// DelNeigh implements Interface.
func (f *Fake) DelNeigh(n Neigh) error { return delEntry(f, f.Neighs, "DelNeigh", "neighbour", n) }

// ListFDB implements Interface.
func (f *Fake) ListFDB(linkIndex int) ([]FDB, error) {
	return listOn(f, f.FDBs, func(e FDB) bool { return e.LinkIndex == linkIndex }), nil
}

// SetFDB implements Interface.
func (f *Fake) SetFDB(e FDB) error { return setEntry(f, f.FDBs, "SetFDB", e) }

// DelFDB implements Interface.
func (f *Fake) DelFDB(e FDB) error { return delEntry(f, f.FDBs, "DelFDB", "FDB entry", e) }

// ListWGPeers implements Interface.
func (f *Fake) ListWGPeers(linkIndex int) ([]WGPeer, error) {
	return listOn(f, f.WG, func(p WGPeer) bool { return p.LinkIndex == linkIndex }), nil
}

// SetWGPeer implements Interface.
func (f *Fake) SetWGPeer(p WGPeer) error { return setEntry(f, f.WG, "SetWGPeer", p) }

// DelWGPeer implements Interface.
func (f *Fake) DelWGPeer(p WGPeer) error { return delEntry(f, f.WG, "DelWGPeer", "WireGuard peer", p) }

// entry is what the Fake keeps of every kind: keyed, and described in
// the recorded calls.
type entry[K comparable] interface {
	Key() K
	String() string
}

// setEntry records the call op and stores e.
func setEntry[K comparable, E entry[K]](f *Fake, m map[K]E, op string, e E) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(op + " " + e.String()); err != nil {
		return err
	}
	m[e.Key()] = e
	return nil
}

// delEntry records the call op and deletes e, failing wrapping
// ErrNotFound when it is not there.
func delEntry[K comparable, E entry[K]](f *Fake, m map[K]E, op, kind string, e E) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(op + " " + e.String()); err != nil {
		return err
	}
	if _, ok := m[e.Key()]; !ok {
		return fmt.Errorf("delete %s %s: %w", kind, e, ErrNotFound)
	}
	delete(m, e.Key())
	return nil
}

// listOn returns the entries of m on a link.
func listOn[K comparable, E any](f *Fake, m map[K]E, onLink func(E) bool) []E {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []E
	for _, e := range m {
		if onLink(e) {
			out = append(out, e)
		}
	}
	return out
}
