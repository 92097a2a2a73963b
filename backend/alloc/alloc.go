// Package alloc is the alloc backend (upstream's "alloc"): the node leases a
// subnet and advertises it, and nothing is programmed: no device, no route,
// nothing per peer. Something else (or nothing) carries the pods' traffic.
package alloc

import (
	"fmt"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/subnet"
)

// Type is the backend's name in net-conf.json and in the backend-type annotation.
const Type = "alloc"

// Backend is the alloc backend: a lease, and nothing programmed.
type Backend struct {
	backend.Deviceless
}

var (
	_ backend.Backend     = (*Backend)(nil)
	_ backend.MTUFollower = (*Backend)(nil)
)

// New returns the backend; alloc has no options.
func New(p backend.Params) (backend.Backend, error) {
	if p.ExtIface == nil {
		return nil, fmt.Errorf("alloc: no external interface")
	}
	return &Backend{Deviceless: backend.NewDeviceless(Type, p)}, nil
}

// PeerState implements backend.Backend: nothing for any peer, whatever its
// backend (upstream's alloc ignores peers altogether).
func (b *Backend) PeerState(subnet.Lease) (network.State, error) { return network.State{}, nil }
