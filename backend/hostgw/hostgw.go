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
	"github.com/flanneld/flanneld/subnet"
)

// Type is the backend's name in net-conf.json and in the backend-type annotation.
const Type = "host-gw"

// Backend is the host-gw backend, for IPv4, IPv6 or both.
type Backend struct {
	ext        *ip.ExternalInterface
	reach      ip.Reachability
	ipv4, ipv6 bool
	mtu        int // the external interface's
}

var (
	_ backend.Backend     = (*Backend)(nil)
	_ backend.MTUFollower = (*Backend)(nil)
)

// New returns the backend; host-gw has no options.
func New(p backend.Params) (backend.Backend, error) {
	b := &Backend{ext: p.ExtIface, reach: p.Reach, ipv4: p.Config.EnableIPv4, ipv6: p.Config.EnableIPv6, mtu: p.ExtIface.MTU}
	if b.ipv4 && !p.ExtIface.IfaceAddr.IsValid() {
		return nil, fmt.Errorf("host-gw: interface %s has no IPv4 address", p.ExtIface.Name)
	}
	if b.ipv6 && !p.ExtIface.IfaceV6Addr.IsValid() {
		return nil, fmt.Errorf("host-gw: interface %s has no global IPv6 address", p.ExtIface.Name)
	}
	if p.Reach == nil {
		return nil, fmt.Errorf("host-gw: no reachability check")
	}
	return b, nil
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

// Attach implements backend.Backend: there is no device.
func (b *Backend) Attach() error { return nil }

// Configure implements backend.Backend: nothing to configure.
func (b *Backend) Configure(context.Context, subnet.Lease) error { return nil }

// MTU implements backend.Backend: no encapsulation, the external MTU.
func (b *Backend) MTU() int { return b.mtu }

// SetUnderlayMTU implements backend.MTUFollower.
func (b *Backend) SetUnderlayMTU(ext int) error {
	b.mtu = ext
	return nil
}

// Base implements backend.Backend: host-gw owns no device.
func (b *Backend) Base() network.State { return network.State{} }

// PeerState implements backend.Backend: per address family both sides
// have, a route to the peer's subnet via its public IP, if that is on this
// node's segment.
func (b *Backend) PeerState(peer subnet.Lease) (network.State, error) {
	if err := backend.CheckType(peer, Type); err != nil {
		return network.State{}, err
	}
	fams, err := backend.PeerFamilies(peer, b.ipv4, b.ipv6)
	if err != nil {
		return network.State{}, err
	}
	var st network.State
	for _, f := range fams {
		rt, err := backend.DirectRoute(b.reach, b.ext, peer.Name, f.Subnet, f.PublicIP)
		if err != nil {
			return network.State{}, err
		}
		st.Routes = append(st.Routes, rt)
	}
	return st, nil
}
