package daemon

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// admission decides which peers are programmed, and hands their desired
// state to the reconciler. Peer data is untrusted: a peer is programmed
// only when it passes the rules (subnet.PeerRules), its backend accepts
// its data, and it conflicts with no other peer; otherwise it is skipped
// with one warning per reason, and every other peer keeps working.
//
// Two peers conflict when their subnets overlap, or when they want the
// same kernel entry (the same VtepMAC). The older claim wins
// (subnet.Lease.Created: the Node's creationTimestamp, the etcd key's
// create revision), so a newcomer can never take over a live peer's
// traffic; between claims of equal age the peer programmed first keeps
// it. The loser is re-examined whenever a peer goes away or changes.
type admission struct {
	backend    backend.Backend
	reconciler *network.Reconciler
	rules      subnet.PeerRules

	// states are the programmed peers, recomputed only when their lease
	// changes.
	states map[string]peerEntry
	// conflicting are the peers skipped for a conflict with a programmed
	// peer; unreachable those whose public IP was not directly reachable
	// (host-gw), re-examined on every full pass since what this node
	// reaches can change without their leases changing.
	conflicting map[string]subnet.Lease
	unreachable map[string]subnet.Lease
	// skipped is why each skipped peer was last reported, so a peer is
	// reported once per reason, not on every pass.
	skipped map[string]error
	index   *subnetIndex // the subnets of the programmed peers
	// verbose logs every added peer at the default level (after start-up).
	verbose bool

	// report is called when a peer is skipped for a new reason.
	report func(name string, reason subnet.SkipReason, err error)
	// probes, if set, learns the programmed peers' probe targets.
	probes *prober
}

// peerEntry is a programmed peer: its lease and its desired state.
type peerEntry struct {
	lease subnet.Lease
	st    network.State
}

func newAdmission(be backend.Backend, rec *network.Reconciler, rules subnet.PeerRules) *admission {
	return &admission{
		backend:     be,
		reconciler:  rec,
		rules:       rules,
		states:      map[string]peerEntry{},
		conflicting: map[string]subnet.Lease{},
		unreachable: map[string]subnet.Lease{},
		skipped:     map[string]error{},
		index:       newSubnetIndex(),
		report:      func(string, subnet.SkipReason, error) {},
	}
}

// apply folds changed peers (nil: deleted) into the desired state, in age
// order, so that at start-up the older of two conflicting peers wins
// whatever the event order. With full, the peers skipped as unreachable
// are examined again.
func (a *admission) apply(changed map[string]*subnet.Lease, full bool) {
	var leases []subnet.Lease
	removed := false
	for name, lease := range changed {
		if lease != nil {
			leases = append(leases, *lease)
			if _, ok := a.states[name]; ok {
				removed = true // what it held (a subnet, a MAC) may have blocked another peer
			}
			continue
		}
		if _, ok := a.states[name]; ok {
			klog.InfoS("Removing peer", "node", name)
			removed = true
		}
		a.drop(name)
		delete(a.conflicting, name)
		delete(a.unreachable, name)
		delete(a.skipped, name)
	}
	slices.SortFunc(leases, byAge)
	for _, l := range leases {
		a.update(l)
	}
	if removed {
		for _, l := range slices.SortedFunc(maps.Values(a.conflicting), byAge) {
			a.update(l)
		}
	}
	if full {
		for _, l := range slices.SortedFunc(maps.Values(a.unreachable), byAge) {
			if _, ok := changed[l.Name]; !ok {
				a.update(l)
			}
		}
	}
}

func byAge(a, b subnet.Lease) int {
	switch {
	case a.Older(b):
		return -1
	case b.Older(a):
		return 1
	}
	return 0
}

// update recomputes one peer's desired state, skipping it when it is
// refused.
func (a *admission) update(lease subnet.Lease) {
	name := lease.Name
	st, err := a.admit(lease)
	if err != nil {
		a.skip(lease, err)
		return
	}
	delete(a.conflicting, name)
	delete(a.unreachable, name)
	delete(a.skipped, name)
	verb := "Updating peer"
	if _, ok := a.states[name]; !ok {
		verb = "Adding peer"
	}
	kv := []any{"node", name}
	if lease.Subnet.IsValid() {
		kv = append(kv, "subnet", lease.Subnet, "publicIP", lease.Attrs.PublicIP)
	}
	if lease.IPv6Subnet.IsValid() {
		kv = append(kv, "subnetIPv6", lease.IPv6Subnet, "publicIPv6", lease.Attrs.PublicIPv6)
	}
	if a.verbose {
		klog.InfoS(verb, kv...)
	} else {
		klog.V(2).InfoS(verb, kv...)
	}
	a.set(lease, st)
}

// skip drops a refused peer's state and reports it once per reason.
func (a *admission) skip(lease subnet.Lease, err error) {
	name := lease.Name
	reason := subnet.ReasonOf(err, subnet.SkipBackend)
	if errors.Is(err, backend.ErrUnreachable) {
		reason = subnet.SkipUnreachable
	}
	a.drop(name)
	delete(a.conflicting, name)
	delete(a.unreachable, name)
	switch reason {
	case subnet.SkipConflict:
		a.conflicting[name] = lease
	case subnet.SkipUnreachable:
		a.unreachable[name] = lease
	}
	if prev, ok := a.skipped[name]; ok && prev.Error() == err.Error() {
		return
	}
	a.skipped[name] = err
	klog.InfoS("Skipping peer", "node", name, "reason", err.Error(), "rule", string(reason))
	a.report(name, reason, err)
}

// admit checks a peer against the rules and its backend, then resolves
// its conflicts with the programmed peers: the older claim wins, so a
// programmed peer younger than this one is displaced (and re-examined
// when this one leaves).
func (a *admission) admit(peer subnet.Lease) (network.State, error) {
	if err := a.rules.Check(peer); err != nil {
		return network.State{}, err
	}
	st, err := a.backend.PeerState(peer)
	if err != nil {
		return network.State{}, err
	}
	for {
		other, what, ok := a.conflict(peer, st)
		if !ok {
			return st, nil
		}
		holder, isPeer := a.states[other]
		if !isPeer {
			return network.State{}, subnet.Refuse(subnet.SkipConflict, "%s, which this node's own device state holds", what)
		}
		if holder.lease.Created <= peer.Created {
			return network.State{}, subnet.Refuse(subnet.SkipConflict, "it conflicts with the older peer %s: %s", other, what)
		}
		a.skip(holder.lease, subnet.Refuse(subnet.SkipConflict, "it conflicts with the older peer %s: %s", peer.Name, what))
	}
}

// conflict returns what peer conflicts with: a programmed peer, or the
// backend's own state (""), and what they both want.
func (a *admission) conflict(peer subnet.Lease, st network.State) (string, string, bool) {
	for _, sn := range []netip.Prefix{peer.Subnet, peer.IPv6Subnet} {
		if other, osn, ok := a.index.overlapping(peer.Name, sn); ok {
			return other, fmt.Sprintf("subnet %s of %s overlaps subnet %s of %s", sn, peer.Name, osn, other), true
		}
	}
	if other, entry, ok := a.reconciler.Conflict(peer.Name, st); ok {
		return other, "both want the " + entry, true
	}
	return "", "", false
}

// set records a peer's desired state and hands the change to the
// reconciler (and the peer to a backend that tracks peers itself).
func (a *admission) set(lease subnet.Lease, st network.State) {
	name := lease.Name
	old := a.states[name]
	a.index.remove(name, old.lease.Subnet, old.lease.IPv6Subnet)
	a.reconciler.Update(name, old.st, st)
	a.index.add(name, lease.Subnet, lease.IPv6Subnet)
	a.states[name] = peerEntry{lease: lease, st: st}
	if t, ok := a.backend.(backend.PeerTracker); ok {
		t.SetPeer(name, &lease)
	}
	if a.probes != nil {
		a.probes.setTarget(name, probeTarget(a.rules.Config.BackendType, lease))
	}
}

// drop forgets a peer's desired state.
func (a *admission) drop(name string) {
	if old, ok := a.states[name]; ok {
		a.reconciler.Update(name, old.st, network.State{})
		a.index.remove(name, old.lease.Subnet, old.lease.IPv6Subnet)
		delete(a.states, name)
		if t, ok := a.backend.(backend.PeerTracker); ok {
			t.SetPeer(name, nil)
		}
		if a.probes != nil {
			a.probes.setTarget(name, netip.Addr{})
		}
	}
}

// Admit decides, as the daemon does at start-up, which of peers are
// programmed on a node with these rules and backend: it returns the
// desired state of each programmed peer and why each other one is
// skipped. It changes nothing (for `flanneld diagnose`).
func Admit(rules subnet.PeerRules, be backend.Backend, peers []subnet.Lease) (map[string]network.State, map[string]error) {
	a := newAdmission(be, network.NewReconciler(kernel.NewFake()), rules)
	skipped := map[string]error{}
	a.report = func(name string, _ subnet.SkipReason, err error) { skipped[name] = err }
	changed := make(map[string]*subnet.Lease, len(peers))
	for i := range peers {
		changed[peers[i].Name] = &peers[i]
	}
	a.apply(changed, false)
	states := make(map[string]network.State, len(a.states))
	for name, e := range a.states {
		states[name] = e.st
	}
	return states, maps.Clone(a.skipped)
}
