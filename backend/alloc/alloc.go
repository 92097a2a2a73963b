// Package alloc is the alloc backend (upstream's "alloc"): the node leases a
// subnet and advertises it, and nothing is programmed: no device, no route,
// nothing per peer. Something else (or nothing) carries the pods' traffic.
package alloc

import (
	"context"
	"fmt"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/subnet"
)

// Type is the backend's name in net-conf.json and in the backend-type annotation.
const Type = "alloc"

// Backend is the alloc backend.
type Backend struct {
	ext        *ip.ExternalInterface
	ipv4, ipv6 bool
	mtu        int // the external interface's
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
	return &Backend{ext: p.ExtIface, ipv4: p.Config.EnableIPv4, ipv6: p.Config.EnableIPv6, mtu: p.ExtIface.MTU}, nil
}

// Setup implements backend.Backend: there is no device; the node
// advertises its public IPs and no backend data.
func (b *Backend) Setup(context.Context, *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	attrs := subnet.LeaseAttrs{BackendType: Type}
	if b.ipv4 {
		attrs.PublicIP = b.ext.ExtAddr
	}
	if b.ipv6 {
		attrs.PublicIPv6 = b.ext.ExtV6Addr
	}
	return attrs, nil
}

// Configure implements backend.Backend: nothing to configure.
func (b *Backend) Configure(context.Context, subnet.Lease) error { return nil }

// Attach implements backend.Backend: there is no device.
func (b *Backend) Attach() error { return nil }

// MTU implements backend.Backend: the external interface's MTU.
func (b *Backend) MTU() int { return b.mtu }

// SetUnderlayMTU implements backend.MTUFollower.
func (b *Backend) SetUnderlayMTU(ext int) error {
	b.mtu = ext
	return nil
}

// Base implements backend.Backend: alloc owns nothing.
func (b *Backend) Base() network.State { return network.State{} }

// PeerState implements backend.Backend: nothing for any peer, whatever its
// backend (upstream's alloc ignores peers altogether).
func (b *Backend) PeerState(subnet.Lease) (network.State, error) { return network.State{}, nil }
