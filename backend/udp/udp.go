// Package udp is the udp backend, for kernels without VXLAN: a TUN device
// flannel0 with one route for the whole Network, and a forwarder inside
// flanneld that carries each IPv4 packet in one UDP datagram (port 8285)
// to the peer owning its destination, as upstream flannel's udp backend
// does. Unlike upstream's, the forwarder accepts datagrams only from the
// peers' public IPs, and only packets from the sending peer's subnet to
// this node's subnet.
package udp

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// Type is the backend's name in net-conf.json and in the backend-type annotation.
const Type = "udp"

const (
	// DeviceName is the TUN device, as upstream names it.
	DeviceName = "flannel0"
	// defaultPort is upstream's default.
	defaultPort = 8285
	// overheadIPv4 is the outer IPv4 and UDP headers' size.
	overheadIPv4 = 28
	// minMTU is the least MTU pods may get.
	minMTU = 576
)

// Options are the backend's keys in net-conf.json.
type Options struct {
	Port int
}

// ParseOptions reads and validates the Backend object of net-conf.json.
func ParseOptions(raw json.RawMessage) (Options, error) {
	var o Options
	if err := backend.DecodeOptions(Type, raw, &o); err != nil {
		return o, err
	}
	if o.Port == 0 {
		o.Port = defaultPort
	}
	if o.Port < 1 || o.Port > 65535 {
		return o, fmt.Errorf("udp Port %d is out of range 1..65535", o.Port)
	}
	return o, nil
}

// Backend is the udp backend for IPv4.
type Backend struct {
	opts    Options
	ext     *ip.ExternalInterface
	h       *netlink.Handle
	network netip.Prefix
	mtu     int

	linkIndex int // of flannel0, set by Setup or Attach
	fwd       *forwarder
}

var (
	_ backend.Backend     = (*Backend)(nil)
	_ backend.PeerTracker = (*Backend)(nil)
	_ backend.Forwarder   = (*Backend)(nil)
)

// New validates the options; it does not touch the kernel.
func New(p backend.Params) (backend.Backend, error) {
	opts, err := ParseOptions(p.Config.Backend)
	if err != nil {
		return nil, err
	}
	if !p.ExtIface.IfaceAddr.IsValid() {
		return nil, fmt.Errorf("udp: interface %s has no IPv4 address to send from", p.ExtIface.Name)
	}
	if !p.Config.Network.IsValid() || !p.Config.Network.Addr().Is4() {
		return nil, fmt.Errorf("udp: the backend needs an IPv4 Network")
	}
	if p.Config.EnableIPv6 {
		return nil, fmt.Errorf("udp: the backend carries IPv4 only (as upstream's); use vxlan or host-gw for IPv6")
	}
	mtu := p.ExtIface.MTU - overheadIPv4
	if mtu < minMTU {
		return nil, fmt.Errorf("udp: MTU %d of interface %s leaves only %d bytes for pods", p.ExtIface.MTU, p.ExtIface.Name, mtu)
	}
	return &Backend{
		opts:    opts,
		ext:     p.ExtIface,
		h:       p.Handle,
		network: p.Config.Network.Masked(),
		mtu:     mtu,
		fwd:     newForwarder(opts.Port, mtu),
	}, nil
}

// MTU implements backend.Backend.
func (b *Backend) MTU() int { return b.mtu }

// SetUnderlayMTU implements backend.MTUFollower: the next Setup gives
// flannel0 the MTU for the external interface's new MTU.
func (b *Backend) SetUnderlayMTU(ext int) error {
	mtu := ext - overheadIPv4
	if mtu < minMTU {
		return fmt.Errorf("udp: MTU %d leaves only %d bytes for pods", ext, mtu)
	}
	b.mtu = mtu
	return nil
}

// Base implements backend.Backend: flanneld owns flannel0 and the route of
// the whole Network through it; which peer a packet goes to is the
// forwarder's business, so there is nothing per peer in the kernel.
func (b *Backend) Base() network.State {
	st := network.State{OwnedLinks: []int{b.linkIndex}}
	if b.linkIndex > 0 {
		st.Routes = []kernel.Route{{Dst: b.network, LinkIndex: b.linkIndex}}
	}
	return st
}

// PeerState implements backend.Backend: it checks the peer's lease; the
// peer needs no kernel entries.
func (b *Backend) PeerState(peer subnet.Lease) (network.State, error) {
	return network.State{}, checkPeer(peer)
}

// SetPeer implements backend.PeerTracker: the forwarder sends to, and
// accepts from, exactly the programmed peers.
func (b *Backend) SetPeer(name string, lease *subnet.Lease) {
	b.fwd.peers.set(name, lease)
}

// Dropped implements backend.Forwarder.
func (b *Backend) Dropped() map[string]uint64 { return b.fwd.drops.snapshot() }

// checkPeer validates a peer's lease for this backend.
func checkPeer(peer subnet.Lease) error {
	if err := backend.CheckType(peer, Type); err != nil {
		return err
	}
	if !peer.Subnet.IsValid() || !peer.Subnet.Addr().Is4() {
		return fmt.Errorf("%w: peer %s has no IPv4 subnet", backend.ErrPeerData, peer.Name)
	}
	if !peer.Attrs.PublicIP.IsValid() || !peer.Attrs.PublicIP.Is4() {
		return fmt.Errorf("%w: peer %s has no IPv4 public-ip", backend.ErrPeerData, peer.Name)
	}
	return nil
}
