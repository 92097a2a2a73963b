package subnet

import (
	"context"
	"net/netip"
	"slices"
	"sync"
)

// Source is where leases come from: the Kubernetes Node objects or etcd.
type Source interface {
	// Start begins watching the cluster's leases into peers (never this
	// node's own) and returns; everything stops with ctx. peers is marked
	// synced once the source has delivered its complete initial view.
	Start(ctx context.Context, peers *Peers) error
	// PreviousAttrs waits for the source's initial view and returns what
	// this node advertised before (nil if nothing), so a backend can keep
	// its identity (the VTEP MAC) stable across restarts.
	PreviousAttrs(ctx context.Context) (*LeaseAttrs, error)
	// AcquireLease waits for this node's lease, publishes attrs with it and
	// returns it. The returned attributes are those actually advertised (an
	// operator's public-ip-overwrite wins, for example).
	AcquireLease(ctx context.Context, attrs LeaseAttrs) (Lease, error)
	// ReportReady tells the cluster that this node's network is up.
	ReportReady(ctx context.Context) error
}

// What a Source may do besides, discovered by type assertion (as
// backend.Forwarder is): the daemon uses each when the source has it.
type (
	// EventPoster posts Events about this node (Kubernetes).
	EventPoster interface {
		Event(warning bool, reason, message string)
	}
	// PublicIPSetter finds this node's lease by its public IPs (etcd), so
	// it must learn them once the external interface is known, before
	// PreviousAttrs.
	PublicIPSetter interface {
		SetPublicIPs(v4, v6 netip.Addr)
	}
	// Failer reports the failures the source cannot recover from (its
	// lease lost for good).
	Failer interface {
		Errors() <-chan error
	}
)

// Peers is the set of peer leases, written by a lease source and read by
// the sync loop. Writers only record what changed and wake the reader; the
// reader drains the changes at its own pace, so a burst of events costs one
// sync and never queues without bound.
type Peers struct {
	mu      sync.Mutex
	leases  map[string]Lease
	dirty   map[string]struct{}
	synced  bool
	changed chan struct{}
}

// NewPeers returns an empty set.
func NewPeers() *Peers {
	return &Peers{leases: map[string]Lease{}, dirty: map[string]struct{}{}, changed: make(chan struct{}, 1)}
}

func (p *Peers) wake() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// Set adds or updates a peer's lease. An identical lease is not a change.
func (p *Peers) Set(l Lease) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.leases[l.Name]; ok && old.Equal(l) {
		return
	}
	p.leases[l.Name] = l
	p.dirty[l.Name] = struct{}{}
	p.wake()
}

// Delete removes a peer; deleting an unknown peer is not a change.
func (p *Peers) Delete(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.leases[name]; !ok {
		return
	}
	delete(p.leases, name)
	p.dirty[name] = struct{}{}
	p.wake()
}

// MarkSynced records that the source has delivered its complete initial
// view: from now on a peer missing from the set is really gone.
func (p *Peers) MarkSynced() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.synced {
		p.synced = true
		p.wake()
	}
}

// MarkAllDirty makes the next Drain return every peer, for when something
// all peers' state depends on changed (the backend's device was recreated).
func (p *Peers) MarkAllDirty() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range p.leases {
		p.dirty[name] = struct{}{}
	}
	p.wake()
}

// Changed is signalled (level-triggered, coalesced) after any change.
func (p *Peers) Changed() <-chan struct{} { return p.changed }

// Len returns the number of peers.
func (p *Peers) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.leases)
}

// Drain returns the peers changed since the last Drain: the current lease,
// or nil for a deleted peer, and whether the source has synced.
func (p *Peers) Drain() (changed map[string]*Lease, synced bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	changed = make(map[string]*Lease, len(p.dirty))
	for name := range p.dirty {
		if l, ok := p.leases[name]; ok {
			changed[name] = &l
		} else {
			changed[name] = nil
		}
	}
	clear(p.dirty)
	return changed, p.synced
}

// Equal reports whether two leases are the same in every field (errors by
// their message).
func (l Lease) Equal(o Lease) bool {
	return l.Name == o.Name && l.Subnet == o.Subnet && l.IPv6Subnet == o.IPv6Subnet && l.Created == o.Created &&
		errString(l.Err) == errString(o.Err) && l.Attrs.Equal(o.Attrs)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Older reports whether l's claim precedes o's: it was created earlier.
// Leases of equal age are ordered by name, for a start-up order that does
// not depend on event order.
func (l Lease) Older(o Lease) bool {
	if l.Created != o.Created {
		return l.Created < o.Created
	}
	return l.Name < o.Name
}

// Equal reports whether two attribute sets are the same.
func (a LeaseAttrs) Equal(o LeaseAttrs) bool {
	return a.PublicIP == o.PublicIP && a.PublicIPv6 == o.PublicIPv6 && a.BackendType == o.BackendType &&
		slices.Equal(a.BackendData, o.BackendData) && slices.Equal(a.BackendV6Data, o.BackendV6Data)
}
