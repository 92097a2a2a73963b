package network

import (
	"fmt"
	"slices"

	"github.com/flanneld/flanneld/network/kernel"
)

// Snapshot is what the kernel holds of the entries flanneld owns.
type Snapshot struct {
	Routes map[kernel.RouteKey]kernel.Route
	Neighs map[kernel.NeighKey]kernel.Neigh
	FDBs   map[kernel.FDBKey]kernel.FDB
	// WGPeers are the peers of owned WireGuard devices.
	WGPeers map[kernel.WGPeerKey]kernel.WGPeer
}

// ReadOwned reads flanneld's entries from the kernel: routes with its
// protocol or through an owned link, and the permanent neighbour and FDB
// entries and the WireGuard peers of owned links.
func ReadOwned(k kernel.Interface, ownedLinks []int) (Snapshot, error) {
	s := Snapshot{
		Routes:  map[kernel.RouteKey]kernel.Route{},
		Neighs:  map[kernel.NeighKey]kernel.Neigh{},
		FDBs:    map[kernel.FDBKey]kernel.FDB{},
		WGPeers: map[kernel.WGPeerKey]kernel.WGPeer{},
	}
	all, err := k.ListRoutes()
	if err != nil {
		return s, err
	}
	for _, rt := range all {
		if rt.Protocol == kernel.RouteProtocol || (slices.Contains(ownedLinks, rt.LinkIndex) && rt.Protocol != protoKernel) {
			s.Routes[rt.Key()] = rt
		}
	}
	for _, link := range ownedLinks {
		ns, err := k.ListNeighs(link)
		if err != nil {
			return s, err
		}
		for _, n := range ns {
			s.Neighs[n.Key()] = n
		}
		fs, err := k.ListFDB(link)
		if err != nil {
			return s, err
		}
		for _, f := range fs {
			s.FDBs[f.Key()] = f
		}
		ps, err := k.ListWGPeers(link)
		if err != nil {
			return s, err
		}
		for _, p := range ps {
			s.WGPeers[p.Key()] = p
		}
	}
	return s, nil
}

// Entry statuses reported by the Snapshot's status methods.
const (
	StatusOK      = "ok"
	StatusMissing = "missing"
)

// RouteStatus says whether the kernel has the desired route r: "ok",
// "missing", or what it has instead.
func (s Snapshot) RouteStatus(r kernel.Route) string {
	have, ok := s.Routes[r.Key()]
	switch {
	case !ok:
		return StatusMissing
	case have.Dst == r.Dst && have.Gw == r.Gw && have.LinkIndex == r.LinkIndex && have.Onlink == r.Onlink:
		return StatusOK
	}
	return "differs: " + have.String()
}

// NeighStatus is RouteStatus for a neighbour.
func (s Snapshot) NeighStatus(n kernel.Neigh) string {
	return entryStatus(s.Neighs, n.Key(), n)
}

// FDBStatus is RouteStatus for an FDB entry.
func (s Snapshot) FDBStatus(f kernel.FDB) string {
	return entryStatus(s.FDBs, f.Key(), f)
}

// WGPeerStatus is RouteStatus for a WireGuard peer.
func (s Snapshot) WGPeerStatus(p kernel.WGPeer) string {
	return entryStatus(s.WGPeers, p.Key(), p)
}

func entryStatus[K comparable, V comparable](m map[K]V, k K, want V) string {
	have, ok := m[k]
	switch {
	case !ok:
		return StatusMissing
	case have == want:
		return StatusOK
	}
	return fmt.Sprintf("differs: %v", have)
}

// Stale lists the owned entries the kernel has that desired does not
// want: what the next full pass would remove.
func (s Snapshot) Stale(desired State) []string {
	out := staleOf("route", s.Routes, desired.Routes)
	out = append(out, staleOf("neighbour", s.Neighs, desired.Neighs)...)
	out = append(out, staleOf("fdb", s.FDBs, desired.FDBs)...)
	out = append(out, staleOf("wgpeer", s.WGPeers, desired.WGPeers)...)
	slices.Sort(out)
	return out
}

// staleOf describes the entries of one kind in have that desired lacks.
func staleOf[K comparable, E interface {
	Key() K
	String() string
}](kind string, have map[K]E, desired []E) []string {
	want := make(map[K]bool, len(desired))
	for _, e := range desired {
		want[e.Key()] = true
	}
	var out []string
	for k, e := range have {
		if !want[k] {
			out = append(out, kind+" "+e.String())
		}
	}
	return out
}
