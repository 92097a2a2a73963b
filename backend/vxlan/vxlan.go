// Package vxlan is the VXLAN backend: one flannel.<VNI> device per node, and
// per peer a permanent neighbour, an FDB entry and an onlink route.
package vxlan

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// Type is the backend's name in net-conf.json and in the backend-type annotation.
const Type = "vxlan"

const (
	// defaultPort is the port the Linux kernel has always used for VXLAN.
	defaultPort = 8472
	// overheadIPv4 is the outer Ethernet+IPv4+UDP+VXLAN headers' size;
	// overheadIPv6 the same with an outer IPv6 header.
	overheadIPv4 = 50
	overheadIPv6 = 70
	maxVNI       = 1<<24 - 1
)

// Options are the backend's keys in net-conf.json.
type Options struct {
	VNI           int
	Port          int
	MTU           int
	GBP           bool
	Learning      bool
	DirectRouting bool
}

// ParseOptions reads and validates the Backend object of net-conf.json.
func ParseOptions(raw json.RawMessage) (Options, error) {
	o := Options{VNI: 1}
	if err := backend.DecodeOptions(Type, raw, &o); err != nil {
		return o, err
	}
	if o.VNI < 0 || o.VNI > maxVNI {
		return o, fmt.Errorf("vxlan VNI %d is out of range 0..%d", o.VNI, maxVNI)
	}
	if o.Port == 0 {
		o.Port = defaultPort
	}
	if o.Port < 1 || o.Port > 65535 {
		return o, fmt.Errorf("vxlan Port %d is out of range 1..65535", o.Port)
	}
	if o.MTU < 0 || (o.MTU > 0 && o.MTU-overheadIPv4 < 576) {
		return o, fmt.Errorf("vxlan MTU %d is too small: pods would get less than 576 bytes after %d bytes of VXLAN overhead", o.MTU, overheadIPv4)
	}
	return o, nil
}

// Data is the backend-data annotation: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
type Data struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// peerData is Data as read from a peer, with VNI optional so a missing one
// is told apart from 0.
type peerData struct {
	VNI     *int   `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// ErrPeerData is wrapped by every error about a peer's unusable lease.
var ErrPeerData = backend.ErrPeerData

// peerVTEP is a peer's VTEP in one address family.
type peerVTEP struct {
	backend.Family
	MAC kernel.MAC
}

// parsePeer validates a peer's lease for this backend and returns its VTEPs
// in the address families both sides use (ipv4, ipv6 are this node's).
func parsePeer(peer subnet.Lease, vni int, ipv4, ipv6 bool) ([]peerVTEP, error) {
	if err := backend.CheckType(peer, Type); err != nil {
		return nil, err
	}
	fams, err := backend.PeerFamilies(peer, ipv4, ipv6)
	if err != nil {
		return nil, err
	}
	vteps := make([]peerVTEP, 0, len(fams))
	for _, f := range fams {
		mac, err := parseData(peer.Name, f, vni)
		if err != nil {
			return nil, err
		}
		vteps = append(vteps, peerVTEP{Family: f, MAC: mac})
	}
	return vteps, nil
}

// parseData reads the VTEP MAC from a peer's backend-data (or
// backend-v6-data) and checks its VNI.
func parseData(name string, f backend.Family, vni int) (kernel.MAC, error) {
	key := "backend-data"
	if f.IPv6 {
		key = "backend-v6-data"
	}
	var d peerData
	if err := json.Unmarshal(f.BackendData, &d); err != nil {
		return kernel.MAC{}, fmt.Errorf("%w: peer %s has malformed %s %s: %v", ErrPeerData, name, key, subnet.Quote(string(f.BackendData)), err)
	}
	if d.VNI == nil {
		return kernel.MAC{}, fmt.Errorf("%w: peer %s %s has no VNI", ErrPeerData, name, key)
	}
	if *d.VNI != vni {
		return kernel.MAC{}, fmt.Errorf("%w: peer %s uses VNI %d, this node uses %d", ErrPeerData, name, *d.VNI, vni)
	}
	mac, err := kernel.ParseMAC(d.VtepMAC)
	if err != nil {
		return kernel.MAC{}, fmt.Errorf("%w: peer %s has a bad VtepMAC %s", ErrPeerData, name, subnet.Quote(d.VtepMAC))
	}
	if !mac.IsUnicast() {
		return kernel.MAC{}, fmt.Errorf("%w: peer %s has VtepMAC %s, which is not a unicast address", ErrPeerData, name, mac)
	}
	return mac, nil
}

// peerState is the kernel state for a peer reached through the VXLAN
// device linkIndex: neighbour, FDB entry and onlink route.
func peerState(linkIndex int, sn netip.Prefix, publicIP netip.Addr, mac kernel.MAC) network.State {
	gw := sn.Masked().Addr()
	return network.State{
		Neighs: []kernel.Neigh{{LinkIndex: linkIndex, IP: gw, MAC: mac}},
		FDBs:   []kernel.FDB{{LinkIndex: linkIndex, MAC: mac, Dst: publicIP}},
		Routes: []kernel.Route{{Dst: sn.Masked(), Gw: gw, LinkIndex: linkIndex, Onlink: true}},
	}
}
