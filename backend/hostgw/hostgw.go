// Package hostgw is the host-gw backend: no device and no encapsulation; each
// peer's subnet is routed through the peer's public IP on the external
// interface. All nodes must share one L2 segment.
package hostgw

import (
	"context"
	"fmt"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/pkg/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// Type is the backend's name in net-conf.json and in the backend-type annotation.
const Type = "host-gw"

// Backend is the host-gw backend for IPv4.
type Backend struct {
	ext   *ip.ExternalInterface
	reach ip.Reachability
}

var _ backend.Backend = (*Backend)(nil)

// New returns the backend; host-gw has no options.
func New(p backend.Params) (backend.Backend, error) {
	if !p.ExtIface.IfaceAddr.IsValid() {
		return nil, fmt.Errorf("host-gw: interface %s has no IPv4 address", p.ExtIface.Name)
	}
	if p.Reach == nil {
		return nil, fmt.Errorf("host-gw: no reachability check")
	}
	return &Backend{ext: p.ExtIface, reach: p.Reach}, nil
}

// Setup implements backend.Backend: there is no device; the node
// advertises its public IP and no backend data.
func (b *Backend) Setup(context.Context, *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	return subnet.LeaseAttrs{PublicIP: b.ext.ExtAddr, BackendType: Type}, nil
}

// Attach implements backend.Backend: there is no device.
func (b *Backend) Attach() error { return nil }

// Configure implements backend.Backend: nothing to configure.
func (b *Backend) Configure(context.Context, subnet.Lease) error { return nil }

// MTU implements backend.Backend: no encapsulation, the external MTU.
func (b *Backend) MTU() int { return b.ext.MTU }

// Base implements backend.Backend: host-gw owns no device.
func (b *Backend) Base() network.State { return network.State{} }

// PeerState implements backend.Backend: a route to the peer's subnet via
// its public IP, if that is on this node's segment.
func (b *Backend) PeerState(peer subnet.Lease) (network.State, error) {
	if peer.Attrs.BackendType != Type {
		return network.State{}, fmt.Errorf("%w: peer %s uses backend %q, this node uses %q", backend.ErrPeerData, peer.Name, peer.Attrs.BackendType, Type)
	}
	if !peer.Subnet.IsValid() || !peer.Subnet.Addr().Is4() {
		return network.State{}, fmt.Errorf("%w: peer %s has no IPv4 subnet", backend.ErrPeerData, peer.Name)
	}
	if !peer.Attrs.PublicIP.Is4() {
		return network.State{}, fmt.Errorf("%w: peer %s has no IPv4 public-ip", backend.ErrPeerData, peer.Name)
	}
	rt, err := backend.DirectRoute(b.reach, b.ext, peer)
	if err != nil {
		return network.State{}, err
	}
	return network.State{Routes: []kernel.Route{rt}}, nil
}
