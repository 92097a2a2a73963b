// Package kernel is flanneld's narrow view of the kernel's forwarding state:
// plain values for routes, neighbours, FDB entries and WireGuard peers, the Interface the
// reconciler programs them through, a netlink implementation over a
// *netlink.Handle, and an in-memory Fake for unit tests.
package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// RouteProtocol marks every route flanneld installs (rtm_protocol), so that a
// restarted daemon can prune its own stale routes without ever touching the
// routes of other agents in the same table. 0x66 is not assigned in
// /etc/iproute2/rt_protos; `ip route` shows it as "proto 102".
const RouteProtocol = 0x66

// MAC is a 48-bit Ethernet address. Unlike net.HardwareAddr it is comparable,
// so it can be used in map keys.
type MAC [6]byte

// ParseMAC parses a 48-bit MAC address such as "aa:bb:cc:dd:ee:ff".
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, err
	}
	return MACFromHardwareAddr(hw)
}

// MACFromHardwareAddr converts a 6-byte net.HardwareAddr.
func MACFromHardwareAddr(hw net.HardwareAddr) (MAC, error) {
	var m MAC
	if len(hw) != len(m) {
		return m, fmt.Errorf("MAC address %q is not 6 bytes long", hw.String())
	}
	copy(m[:], hw)
	return m, nil
}

// HardwareAddr returns m as a net.HardwareAddr.
func (m MAC) HardwareAddr() net.HardwareAddr { return append(net.HardwareAddr(nil), m[:]...) }

// String formats m as "aa:bb:cc:dd:ee:ff".
func (m MAC) String() string { return m.HardwareAddr().String() }

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

// IsUnicast reports whether m can be one device's address: not zero, and
// not a group (multicast or broadcast) address.
func (m MAC) IsUnicast() bool { return !m.IsZero() && m[0]&1 == 0 }

// Route is a unicast route in the main table.
type Route struct {
	Dst       netip.Prefix
	Gw        netip.Addr // invalid for a device route
	LinkIndex int
	Onlink    bool
	// Protocol is the rtm_protocol; routes installed by the reconciler
	// always carry RouteProtocol.
	Protocol int
}

// Neigh is a permanent neighbour (ARP/NDP) entry.
type Neigh struct {
	LinkIndex int
	IP        netip.Addr
	MAC       MAC
}

// FDB is a permanent forwarding-database entry on a VXLAN device: frames for
// MAC are sent to the underlay address Dst.
type FDB struct {
	LinkIndex int
	MAC       MAC
	Dst       netip.Addr
}

// RouteKey identifies a route: the kernel keeps one route per destination
// in the main table (flanneld does not use metrics or TOS).
type RouteKey struct{ Dst netip.Prefix }

// Key returns the route's identity.
func (r Route) Key() RouteKey { return RouteKey{r.Dst} }

// NeighKey identifies a neighbour entry.
type NeighKey struct {
	LinkIndex int
	IP        netip.Addr
}

// Key returns the neighbour's identity.
func (n Neigh) Key() NeighKey { return NeighKey{n.LinkIndex, n.IP} }

// FDBKey identifies an FDB entry.
type FDBKey struct {
	LinkIndex int
	MAC       MAC
}

// Key returns the FDB entry's identity.
func (f FDB) Key() FDBKey { return FDBKey{f.LinkIndex, f.MAC} }

func (r Route) String() string {
	s := r.Dst.String()
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	s += fmt.Sprintf(" dev %d", r.LinkIndex)
	if r.Onlink {
		s += " onlink"
	}
	return s
}

func (n Neigh) String() string {
	return fmt.Sprintf("%s lladdr %s dev %d", n.IP, n.MAC, n.LinkIndex)
}

func (f FDB) String() string {
	return fmt.Sprintf("%s dst %s dev %d", f.MAC, f.Dst, f.LinkIndex)
}

// ErrNotFound is returned (wrapped) when an object to delete does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned (wrapped) by AddRoute when the kernel already has a
// route to the destination.
var ErrExists = errors.New("an entry flanneld does not own is in the way")

// Interface is the part of the kernel the reconciler programs. Set calls
// replace an existing entry with the same key; Del calls return an error
// wrapping ErrNotFound when the entry is already gone.
type Interface interface {
	// ListRoutes returns the IPv4 and IPv6 unicast routes of the main table.
	ListRoutes() ([]Route, error)
	// AddRoute adds a route, failing with an error wrapping ErrExists
	// when one to r.Dst exists (it is never replaced).
	AddRoute(Route) error
	SetRoute(Route) error
	DelRoute(Route) error

	// ListNeighs returns the permanent neighbours of a link.
	ListNeighs(linkIndex int) ([]Neigh, error)
	SetNeigh(Neigh) error
	DelNeigh(Neigh) error

	// ListFDB returns the permanent FDB entries of a link that carry a
	// destination address.
	ListFDB(linkIndex int) ([]FDB, error)
	SetFDB(FDB) error
	DelFDB(FDB) error

	// ListWGPeers returns the peers of a WireGuard device, and nothing
	// for a link that is not one.
	ListWGPeers(linkIndex int) ([]WGPeer, error)
	// SetWGPeer adds or updates a peer (its endpoint, allowed IPs,
	// keepalive and pre-shared key replace the device's).
	SetWGPeer(WGPeer) error
	DelWGPeer(WGPeer) error
}
