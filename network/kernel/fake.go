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
func (f *Fake) SetRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("SetRoute " + r.String()); err != nil {
		return err
	}
	f.Routes[r.Key()] = r
	return nil
}

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
func (f *Fake) DelRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DelRoute " + r.String()); err != nil {
		return err
	}
	if _, ok := f.Routes[r.Key()]; !ok {
		return fmt.Errorf("delete route %s: %w", r, ErrNotFound)
	}
	delete(f.Routes, r.Key())
	return nil
}

// ListNeighs implements Interface.
func (f *Fake) ListNeighs(linkIndex int) ([]Neigh, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Neigh
	for _, n := range f.Neighs {
		if n.LinkIndex == linkIndex {
			out = append(out, n)
		}
	}
	return out, nil
}

// SetNeigh implements Interface.
func (f *Fake) SetNeigh(n Neigh) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("SetNeigh " + n.String()); err != nil {
		return err
	}
	f.Neighs[n.Key()] = n
	return nil
}

// DelNeigh implements Interface.
func (f *Fake) DelNeigh(n Neigh) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DelNeigh " + n.String()); err != nil {
		return err
	}
	if _, ok := f.Neighs[n.Key()]; !ok {
		return fmt.Errorf("delete neighbour %s: %w", n, ErrNotFound)
	}
	delete(f.Neighs, n.Key())
	return nil
}

// ListFDB implements Interface.
func (f *Fake) ListFDB(linkIndex int) ([]FDB, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []FDB
	for _, e := range f.FDBs {
		if e.LinkIndex == linkIndex {
			out = append(out, e)
		}
	}
	return out, nil
}

// SetFDB implements Interface.
func (f *Fake) SetFDB(e FDB) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("SetFDB " + e.String()); err != nil {
		return err
	}
	f.FDBs[e.Key()] = e
	return nil
}

// DelFDB implements Interface.
func (f *Fake) DelFDB(e FDB) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DelFDB " + e.String()); err != nil {
		return err
	}
	if _, ok := f.FDBs[e.Key()]; !ok {
		return fmt.Errorf("delete FDB entry %s: %w", e, ErrNotFound)
	}
	delete(f.FDBs, e.Key())
	return nil
}

// ListWGPeers implements Interface.
func (f *Fake) ListWGPeers(linkIndex int) ([]WGPeer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []WGPeer
	for _, p := range f.WG {
		if p.LinkIndex == linkIndex {
			out = append(out, p)
		}
	}
	return out, nil
}

// SetWGPeer implements Interface.
func (f *Fake) SetWGPeer(p WGPeer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("SetWGPeer " + p.String()); err != nil {
		return err
	}
	f.WG[p.Key()] = p
	return nil
}

// DelWGPeer implements Interface.
func (f *Fake) DelWGPeer(p WGPeer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DelWGPeer " + p.String()); err != nil {
		return err
	}
	if _, ok := f.WG[p.Key()]; !ok {
		return fmt.Errorf("delete WireGuard peer %s: %w", p, ErrNotFound)
	}
	delete(f.WG, p.Key())
	return nil
}
