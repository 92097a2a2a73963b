package wireguard

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// peerFamily is a peer in one address family, with its WireGuard data.
type peerFamily struct {
	backend.Family
	key  kernel.WGKey
	port int
}

// parseData reads a peer's backend data of one family. A missing Port is
// this node's port for the family (upstream's nodes advertise none and
// listen where every node does).
func parseData(name string, f backend.Family, ownPort int) (kernel.WGKey, int, error) {
	field := "backend-data"
	if f.IPv6 {
		field = "backend-v6-data"
	}
	var d Data
	if err := json.Unmarshal(f.BackendData, &d); err != nil {
		return kernel.WGKey{}, 0, fmt.Errorf("%w: peer %s has malformed %s %s: %v", backend.ErrPeerData, name, field, subnet.Quote(string(f.BackendData)), err)
	}
	key, err := kernel.ParseWGKey(d.PublicKey)
	if err != nil || key.IsZero() {
		return kernel.WGKey{}, 0, fmt.Errorf("%w: peer %s has a bad PublicKey %s in %s", backend.ErrPeerData, name, subnet.Quote(d.PublicKey), field)
	}
	port := d.Port
	switch {
	case port == 0:
		port = ownPort
	case port < 0 || port > 65535:
		return kernel.WGKey{}, 0, fmt.Errorf("%w: peer %s has Port %d in %s, out of range 1..65535", backend.ErrPeerData, name, d.Port, field)
	}
	return key, port, nil
}

// parsePeer validates a peer's lease and returns it per address family
// both sides use.
func (b *Backend) parsePeer(peer subnet.Lease) ([]peerFamily, error) {
	if err := backend.CheckType(peer, Type); err != nil {
		return nil, err
	}
	fams, err := backend.PeerFamilies(peer, b.network.IsValid(), b.net6.IsValid())
	if err != nil {
		return nil, err
	}
	out := make([]peerFamily, 0, len(fams))
	for _, f := range fams {
		key, port, err := parseData(peer.Name, f, b.deviceFor(f.IPv6).port)
		if err != nil {
			return nil, err
		}
		if key == b.public {
			return nil, fmt.Errorf("%w: peer %s advertises this node's own public key %s", backend.ErrPeerData, peer.Name, key)
		}
		out = append(out, peerFamily{Family: f, key: key, port: port})
	}
	return out, nil
}

// PeerState implements backend.Backend: one WireGuard peer per device the
// peer is reached through, its subnets as allowed IPs.
func (b *Backend) PeerState(peer subnet.Lease) (network.State, error) {
	fams, err := b.parsePeer(peer)
	if err != nil {
		return network.State{}, err
	}
	var st network.State
	if b.opts.Mode == ModeSeparate {
		for _, f := range fams {
			st.WGPeers = append(st.WGPeers, b.wgPeer(b.deviceFor(f.IPv6), f, f.Subnet))
		}
		return st, nil
	}
	ep, err := b.endpointFamily(peer.Name, fams)
	if err != nil {
		return network.State{}, err
	}
	var subnets []netip.Prefix
	for _, f := range fams {
		if f.key != ep.key {
			return network.State{}, fmt.Errorf("%w: peer %s advertises different public keys in backend-data and backend-v6-data, which one device cannot use", backend.ErrPeerData, peer.Name)
		}
		subnets = append(subnets, f.Subnet)
	}
	st.WGPeers = []kernel.WGPeer{b.wgPeer(b.devs[0], ep, subnets...)}
	return st, nil
}

// endpointFamily picks the family of a peer's endpoint in the
// single-device modes.
func (b *Backend) endpointFamily(name string, fams []peerFamily) (peerFamily, error) {
	var v4, v6 *peerFamily
	for i := range fams {
		if fams[i].IPv6 {
			v6 = &fams[i]
		} else {
			v4 = &fams[i]
		}
	}
	switch {
	case b.opts.Mode == ModeIPv4 && v4 == nil:
		return peerFamily{}, fmt.Errorf("%w: peer %s has no IPv4 public-ip for Mode ipv4", backend.ErrPeerData, name)
	case b.opts.Mode == ModeIPv6 && v6 == nil:
		return peerFamily{}, fmt.Errorf("%w: peer %s has no IPv6 public-ipv6 for Mode ipv6", backend.ErrPeerData, name)
	case b.opts.Mode == ModeIPv6, v4 == nil:
		return *v6, nil
	// auto, as upstream: IPv4 when the peer's IPv4 address is public, else
	// IPv6 when both the peer's and this node's IPv6 addresses are, else
	// IPv4.
	case b.opts.Mode == ModeAuto && v6 != nil && v4.PublicIP.IsPrivate() && !v6.PublicIP.IsPrivate() &&
		b.ext.ExtV6Addr.IsValid() && !b.ext.ExtV6Addr.IsPrivate():
		return *v6, nil
	}
	return *v4, nil
}

// wgPeer is the WireGuard peer on dev for a peer reached at f's endpoint.
func (b *Backend) wgPeer(dev *device, f peerFamily, allowed ...netip.Prefix) kernel.WGPeer {
	return kernel.WGPeer{
		LinkIndex:  dev.linkIndex,
		PublicKey:  f.key,
		Endpoint:   netip.AddrPortFrom(f.PublicIP, uint16(f.port)),
		AllowedIPs: kernel.NewPrefixSet(allowed...),
		Keepalive:  b.opts.PersistentKeepaliveInterval,
		PSK:        b.opts.psk,
	}
}
