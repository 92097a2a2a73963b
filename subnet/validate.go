package subnet

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/flanneld/flanneld/ip"
)

// Peer data is untrusted: another node (or whoever can write its Node object
// or its etcd key) chooses it. These bounds keep one peer from flooding logs,
// Events and memory.
const (
	// MaxAnnotationBytes is the largest annotation value flanneld reads of
	// a peer's Node (backend-data is some 50 bytes for vxlan); a larger one
	// makes the peer malformed.
	MaxAnnotationBytes = 4096
	// MaxLeaseValueBytes is the largest etcd lease value flanneld reads.
	MaxLeaseValueBytes = 16384
	// MaxQuoteBytes is how much of a peer's value a log line or an Event
	// quotes.
	MaxQuoteBytes = 200
	// MaxNameBytes is the longest peer name (a Node name is at most 253
	// bytes; an etcd lease key's last element is far shorter).
	MaxNameBytes = 256
)

// Quote returns s quoted for a log line or an Event, cut to MaxQuoteBytes
// with the original length appended when it is longer.
func Quote(s string) string {
	if len(s) <= MaxQuoteBytes {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:MaxQuoteBytes]) + "...(" + strconv.Itoa(len(s)) + " bytes)"
}

// SkipReason says, in a word, why a peer is not programmed. The set is
// fixed: it is a metric label.
type SkipReason string

// The reasons a peer is skipped.
const (
	// SkipMalformed: its data cannot be read (bad syntax, too large).
	SkipMalformed SkipReason = "malformed"
	// SkipSubnet: its subnet is outside the Network, reserved, or this
	// node's.
	SkipSubnet SkipReason = "subnet"
	// SkipPublicIP: its public IP is not a unicast address another node
	// can be reached at.
	SkipPublicIP SkipReason = "public_ip"
	// SkipBackend: its backend type or backend data do not fit this node's.
	SkipBackend SkipReason = "backend"
	// SkipUnreachable: its public IP is not on this node's L2 segment where
	// the backend needs it (host-gw, DirectRouting).
	SkipUnreachable SkipReason = "unreachable"
	// SkipConflict: its subnet overlaps another peer's, or it wants a kernel
	// entry another peer holds (the same VtepMAC).
	SkipConflict SkipReason = "conflict"
)

// SkipReasons lists every SkipReason.
var SkipReasons = []SkipReason{SkipMalformed, SkipSubnet, SkipPublicIP, SkipBackend, SkipUnreachable, SkipConflict}

// PeerError is why a peer lease is refused.
type PeerError struct {
	Reason SkipReason
	Err    error
}

func (e *PeerError) Error() string { return e.Err.Error() }
func (e *PeerError) Unwrap() error { return e.Err }

// Refuse returns a *PeerError.
func Refuse(reason SkipReason, format string, a ...any) error {
	return &PeerError{Reason: reason, Err: fmt.Errorf(format, a...)}
}

// ReasonOf returns the SkipReason of err: that of the *PeerError it wraps,
// else def.
func ReasonOf(err error, def SkipReason) SkipReason {
	var pe *PeerError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	return def
}

// PeerRules is what a peer's lease must satisfy on this node before any of
// it reaches a backend. Both lease sources, the sync loop and `flanneld
// diagnose` use it.
type PeerRules struct {
	// Config is the network configuration (Network, IPv6Network, the
	// enabled families).
	Config *Config
	// Own is this node's lease.
	Own Lease
	// Local are this node's own addresses (on the external interface, and
	// the public IPs it advertises).
	Local []netip.Addr
	// Segments are the prefixes of the external interface's addresses:
	// their network and broadcast addresses are no host's.
	Segments []netip.Prefix
}

// reservedV4 are IPv4 ranges that are never a pod subnet or a node's
// public IP, whatever the Network says.
var reservedV4 = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, and the broadcast address
	netip.MustParsePrefix("255.255.255.255/32"),
}

// reservedV6 are the IPv6 counterparts of reservedV4.
var reservedV6 = []netip.Prefix{
	netip.MustParsePrefix("::/96"),         // unspecified, loopback, IPv4-compatible
	netip.MustParsePrefix("::ffff:0:0/96"), // IPv4-mapped
	netip.MustParsePrefix("fe80::/10"),     // link-local
	netip.MustParsePrefix("ff00::/8"),      // multicast
}

func reservedPrefix(p netip.Prefix) (netip.Prefix, bool) {
	list := reservedV6
	if p.Addr().Is4() {
		list = reservedV4
	}
	for _, r := range list {
		if r.Overlaps(p) {
			return r, true
		}
	}
	return netip.Prefix{}, false
}

// Check returns nil if the peer's lease may be programmed, else a
// *PeerError saying why not. It checks the families this node uses: each
// subnet lies inside Network (IPv6Network), in no reserved range, and does
// not overlap this node's; each public IP is a unicast address that can be
// another host's (see CheckPublicIP). Backend data is the backend's
// business.
func (r *PeerRules) Check(peer Lease) error {
	if peer.Err != nil {
		return peer.Err
	}
	type family struct {
		on                 bool
		sn, own, network   netip.Prefix
		pub                netip.Addr
		networkKey, pubKey string
	}
	for _, f := range []family{
		{r.Config.EnableIPv4, peer.Subnet, r.Own.Subnet, r.Config.Network, peer.Attrs.PublicIP, "Network", "public-ip"},
		{r.Config.EnableIPv6, peer.IPv6Subnet, r.Own.IPv6Subnet, r.Config.IPv6Network, peer.Attrs.PublicIPv6, "IPv6Network", "public-ipv6"},
	} {
		if !f.on || !f.sn.IsValid() {
			continue
		}
		if res, ok := reservedPrefix(f.sn); ok {
			return Refuse(SkipSubnet, "its subnet %s lies in the reserved range %s", f.sn, res)
		}
		if !ip.ContainsPrefix(f.network, f.sn) {
			return Refuse(SkipSubnet, "its subnet %s is outside %s %s", f.sn, f.networkKey, f.network)
		}
		if ip.Overlaps(f.sn, f.own) {
			return Refuse(SkipSubnet, "its subnet %s overlaps this node's subnet %s", f.sn, f.own)
		}
		if f.pub.IsValid() {
			if err := r.CheckPublicIP(f.pub); err != nil {
				return Refuse(SkipPublicIP, "its %s %s %v", f.pubKey, f.pub, err)
			}
		}
	}
	return nil
}

// CheckPublicIP returns nil if a may be another node's underlay address:
// a global or private unicast address, outside the pod networks, not one
// of this node's own, nor the network or broadcast address of the external
// interface's prefix. The error reads well after "its public-ip 1.2.3.4 ".
func (r *PeerRules) CheckPublicIP(a netip.Addr) error {
	switch {
	case a.Zone() != "":
		return errors.New("has a zone")
	case a.IsUnspecified():
		return errors.New("is the unspecified address")
	case a.IsLoopback():
		return errors.New("is a loopback address")
	case a.IsMulticast():
		return errors.New("is a multicast address")
	case a.IsLinkLocalUnicast():
		return errors.New("is a link-local address")
	case a.Is4In6():
		return errors.New("is an IPv4-mapped IPv6 address")
	}
	if res, ok := reservedPrefix(netip.PrefixFrom(a, a.BitLen())); ok {
		return fmt.Errorf("lies in the reserved range %s", res)
	}
	for _, n := range []netip.Prefix{r.Config.Network, r.Config.IPv6Network} {
		if n.IsValid() && n.Contains(a) {
			return fmt.Errorf("lies inside the pod network %s", n)
		}
	}
	if slices.Contains(r.Local, a) {
		return errors.New("is this node's own address")
	}
	for _, seg := range r.Segments {
		if !seg.Contains(a) || seg.Bits() >= a.BitLen()-1 {
			continue // /31, /32 (and IPv6 /127, /128) have no such addresses
		}
		if a == seg.Masked().Addr() {
			return fmt.Errorf("is the network address of the segment %s", seg.Masked())
		}
		if a.Is4() && a == ip.LastAddr(seg) {
			return fmt.Errorf("is the broadcast address of the segment %s", seg.Masked())
		}
	}
	return nil
}
