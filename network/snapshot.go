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
	var out []string
	want := map[kernel.RouteKey]bool{}
	for _, r := range desired.Routes {
		want[r.Key()] = true
	}
	for k, r := range s.Routes {
		if !want[k] {
			out = append(out, "route "+r.String())
		}
	}
	wantN := map[kernel.NeighKey]bool{}
	for _, n := range desired.Neighs {
		wantN[n.Key()] = true
	}
	for k, n := range s.Neighs {
		if !wantN[k] {
			out = append(out, "neighbour "+n.String())
		}
	}
	wantF := map[kernel.FDBKey]bool{}
	for _, f := range desired.FDBs {
		wantF[f.Key()] = true
	}
	for k, f := range s.FDBs {
		if !wantF[k] {
			out = append(out, "fdb "+f.String())
		}
	}
	wantW := map[kernel.WGPeerKey]bool{}
	for _, p := range desired.WGPeers {
		wantW[p.Key()] = true
	}
	for k, p := range s.WGPeers {
		if !wantW[k] {
			out = append(out, "wgpeer "+p.String())
		}
	}
	slices.Sort(out)
	return out
}
