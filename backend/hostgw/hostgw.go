// Package hostgw is the host-gw backend: no device and no encapsulation; each
// peer's subnet is routed through the peer's public IP on the external
// interface. All nodes must share one L2 segment.
package hostgw

import (
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
	backend.Deviceless
	reach ip.Reachability
}

var (
	_ backend.Backend     = (*Backend)(nil)
	_ backend.MTUFollower = (*Backend)(nil)
)

// New returns the backend; host-gw has no options.
func New(p backend.Params) (backend.Backend, error) {
	b := &Backend{Deviceless: backend.NewDeviceless(Type, p), reach: p.Reach}
	if b.IPv4 && !p.ExtIface.IfaceAddr.IsValid() {
		return nil, fmt.Errorf("host-gw: interface %s has no IPv4 address", p.ExtIface.Name)
	}
	if b.IPv6 && !p.ExtIface.IfaceV6Addr.IsValid() {
		return nil, fmt.Errorf("host-gw: interface %s has no global IPv6 address", p.ExtIface.Name)
	}
	if p.Reach == nil {
		return nil, fmt.Errorf("host-gw: no reachability check")
	}
	return b, nil
}

// PeerState implements backend.Backend: per address family both sides
// have, a route to the peer's subnet via its public IP, if that is on this
// node's segment.
func (b *Backend) PeerState(peer subnet.Lease) (network.State, error) {
	if err := backend.CheckType(peer, Type); err != nil {
		return network.State{}, err
	}
	fams, err := backend.PeerFamilies(peer, b.IPv4, b.IPv6)
	if err != nil {
		return network.State{}, err
	}
	var st network.State
	for _, f := range fams {
		rt, err := backend.DirectRoute(b.reach, b.Ext, peer.Name, f.Subnet, f.PublicIP)
		if err != nil {
			return network.State{}, err
		}
		st.Routes = append(st.Routes, rt)
	}
	return st, nil
}
