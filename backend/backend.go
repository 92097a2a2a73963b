// Package backend defines what a flannel backend is: something that sets up
// the node's device and turns peer leases into desired kernel state. The
// backends themselves (backend/vxlan, ...) are registered explicitly by the
// daemon through a Registry; nothing registers itself from init().
package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// Backend is one datapath implementation.
type Backend interface {
	// Setup creates or reuses the backend's device before the node's lease
	// is known, and returns the attributes to advertise to peers. prev is
	// what the node advertised before (nil if nothing), so the backend can
	// keep its identity (the VTEP MAC) stable.
	Setup(ctx context.Context, prev *subnet.LeaseAttrs) (subnet.LeaseAttrs, error)
	// Configure applies the node's own lease to the device (address, up).
	Configure(ctx context.Context, own subnet.Lease) error
	// Attach finds the backend's existing device without changing anything,
	// so that Base and PeerState describe the kernel as it is (for
	// `flanneld diagnose`). It fails when the device does not exist.
	Attach() error
	// MTU is the MTU pods must use (FLANNEL_MTU).
	MTU() int
	// Base is the state the backend wants regardless of peers: the devices
	// it owns, and any routes of its own.
	Base() network.State
	// PeerState computes the desired kernel entries for one peer. An error
	// means the peer's lease is unusable and the peer is skipped.
	PeerState(peer subnet.Lease) (network.State, error)
}

// PeerTracker is implemented by a backend that needs the programmed peers
// themselves (udp, whose datapath runs in flanneld): the sync loop calls
// SetPeer with a peer's lease when it programs the peer, and with nil when
// it drops it. SetPeer is called from the sync loop only.
type PeerTracker interface {
	SetPeer(name string, lease *subnet.Lease)
}

// Forwarder is implemented by a backend whose datapath runs in flanneld
// rather than in the kernel (udp). The daemon runs Forward after Configure
// until ctx ends; that datapath stops with flanneld.
type Forwarder interface {
	// Forward moves packets until ctx ends. An error means the datapath
	// broke down and flanneld must exit.
	Forward(ctx context.Context) error
	// Dropped returns the packets dropped so far, by reason; every reason
	// of the backend's fixed set is present.
	Dropped() map[string]uint64
}

// Runner is implemented by a backend that runs something inside flanneld
// for as long as flanneld runs (wireguard's userspace device). The daemon
// runs Run from before Setup until ctx ends; what it runs stops with
// flanneld. An error means the backend broke down and flanneld must exit.
type Runner interface {
	Run(ctx context.Context) error
}

// ChangeNotifier is implemented by a backend that learns when someone else
// changes state of its device that no kernel notification reports (the
// peers of a userspace WireGuard device, changed through its UAPI
// socket): the daemon runs a full pass, which puts the state right, on
// each value received.
type ChangeNotifier interface {
	Changed() <-chan struct{}
}

// Implementation is implemented by a backend that tells where its
// datapath runs ("kernel" or "userspace"), for the flanneld_backend_info
// metric. Without it, a Forwarder's is "userspace", any other "kernel".
type Implementation interface {
	Implementation() string
}

// ImplementationOf returns where be's datapath runs.
func ImplementationOf(be Backend) string {
	if i, ok := be.(Implementation); ok {
		return i.Implementation()
	}
	if _, ok := be.(Forwarder); ok {
		return "userspace"
	}
	return "kernel"
}

// MTUFollower is implemented by a backend whose MTU follows the external
// interface's: when the underlay's MTU changes, the daemon calls
// SetUnderlayMTU from the sync loop, then Setup, which gives the devices
// their new MTU. An explicit MTU in the backend's options is kept. An
// error (the new MTU leaves too little for pods) leaves the MTU as it was.
type MTUFollower interface {
	SetUnderlayMTU(mtu int) error
}

// Params is what every backend is built from.
type Params struct {
	// Config is the validated network configuration; Config.Backend holds
	// the backend's own JSON options.
	Config *subnet.Config
	// ExtIface is the underlay interface.
	ExtIface *ip.ExternalInterface
	// Handle is the netlink handle of the namespace to program.
	Handle *netlink.Handle
	// Reach tells whether a peer's public IP is on the external
	// interface's L2 segment (host-gw, DirectRouting).
	Reach ip.Reachability
}

// ErrPeerData is wrapped by every error about a peer lease a backend cannot
// use; the peer is skipped.
var ErrPeerData = errors.New("unusable peer lease")

// ErrUnreachable is wrapped by the error for a peer whose public IP is not on
// this node's L2 segment, when the backend needs it to be (host-gw).
var ErrUnreachable = fmt.Errorf("%w: unreachable without a gateway", ErrPeerData)

// DirectRoute returns the route to a peer's subnet sn through its public IP
// (of sn's address family) on the external interface, or an error wrapping
// ErrUnreachable when the public IP is not on that interface's L2 segment,
// or the kernel has no route to it at all (this node has no address of
// that family at the moment).
func DirectRoute(reach ip.Reachability, ext *ip.ExternalInterface, peerName string, sn netip.Prefix, publicIP netip.Addr) (kernel.Route, error) {
	direct, gw, err := reach.Direct(publicIP, ext.Index)
	if err != nil {
		return kernel.Route{}, fmt.Errorf("%w: peer %s at %s: %w", ErrUnreachable, peerName, publicIP, err)
	}
	if !direct {
		how := "not through " + ext.Name
		if gw.IsValid() {
			how = "only through the gateway " + gw.String()
		}
		return kernel.Route{}, fmt.Errorf("%w: peer %s at %s is not on this node's L2 segment (reached %s)",
			ErrUnreachable, peerName, publicIP, how)
	}
	return kernel.Route{Dst: sn.Masked(), Gw: publicIP, LinkIndex: ext.Index}, nil
}

// CheckType returns an error wrapping ErrPeerData unless the peer uses the
// backend typ.
func CheckType(peer subnet.Lease, typ string) error {
	if peer.Attrs.BackendType != typ {
		return fmt.Errorf("%w: peer %s uses backend %s, this node uses %q", ErrPeerData, peer.Name, subnet.Quote(peer.Attrs.BackendType), typ)
	}
	return nil
}

// Family is one address family of a peer's lease: its pod subnet, its
// public IP and its backend data in that family.
type Family struct {
	IPv6        bool
	Subnet      netip.Prefix
	PublicIP    netip.Addr
	BackendData json.RawMessage
}

// PeerFamilies returns the address families in which this node (ipv4,
// ipv6) and the peer can talk: those the peer has a subnet and a public IP
// of. A family the peer has a subnet of but no public IP of is left out
// with a log line, so long as another family remains: that is a peer whose
// flanneld runs without the family, e.g. while IPv6 is being enabled node
// by node in a cluster whose Nodes already have IPv6 podCIDRs (upstream
// drops such a peer altogether, cutting it off over IPv4 too). A peer with
// no usable family in common is an error (wrapping ErrPeerData).
func PeerFamilies(peer subnet.Lease, ipv4, ipv6 bool) ([]Family, error) {
	var fams []Family
	var unusable []string // families with a subnet but no public IP
	if ipv4 && peer.Subnet.IsValid() && peer.Subnet.Addr().Is4() {
		if peer.Attrs.PublicIP.Is4() {
			fams = append(fams, Family{Subnet: peer.Subnet.Masked(), PublicIP: peer.Attrs.PublicIP, BackendData: peer.Attrs.BackendData})
		} else {
			unusable = append(unusable, "IPv4 public-ip")
		}
	}
	if ipv6 && peer.IPv6Subnet.IsValid() && peer.IPv6Subnet.Addr().Is6() {
		if pub := peer.Attrs.PublicIPv6; pub.Is6() && !pub.Is4In6() {
			fams = append(fams, Family{IPv6: true, Subnet: peer.IPv6Subnet.Masked(), PublicIP: pub, BackendData: peer.Attrs.BackendV6Data})
		} else {
			unusable = append(unusable, "IPv6 public-ipv6")
		}
	}
	switch {
	case len(fams) > 0 && len(unusable) > 0:
		klog.InfoS("Peer has a subnet but no public IP of an address family (does its flanneld run without it?); programming the other family only",
			"node", peer.Name, "missing", strings.Join(unusable, ", "))
	case len(unusable) > 0:
		return nil, &subnet.PeerError{Reason: subnet.SkipPublicIP,
			Err: fmt.Errorf("%w: peer %s has no %s", ErrPeerData, peer.Name, strings.Join(unusable, " and no "))}
	case len(fams) == 0:
		want := "IPv4"
		switch {
		case ipv4 && ipv6:
			want = "IPv4 or IPv6"
		case ipv6:
			want = "IPv6"
		}
		return nil, fmt.Errorf("%w: peer %s has no %s subnet", ErrPeerData, peer.Name, want)
	}
	return fams, nil
}

// Factory parses and validates the backend's options and returns a Backend.
// It must not touch the kernel: the daemon builds the backend before it
// changes anything, so a bad configuration changes nothing.
type Factory func(p Params) (Backend, error)

// Registry maps backend type names to their factories.
type Registry map[string]Factory

// Unsupported are upstream's backend types this flanneld does not
// implement, with the reason.
var Unsupported = map[string]string{
	"ipip":  "it needs the kernel's ipip link type, which the kernels this flanneld is built and tested on lack; use vxlan (or host-gw on one L2 segment)",
	"ipsec": "it needs strongSwan's charon daemon next to flanneld; use wireguard for encryption",
}

// New builds the backend named by p.Config.BackendType.
func (r Registry) New(p Params) (Backend, error) {
	f, ok := r[p.Config.BackendType]
	if why, unsupported := Unsupported[p.Config.BackendType]; !ok && unsupported {
		return nil, fmt.Errorf("backend type %q is not supported by this flanneld: %s (supported: %s)", p.Config.BackendType, why,
			strings.Join(slices.Sorted(maps.Keys(r)), ", "))
	}
	if !ok {
		return nil, fmt.Errorf("unknown backend type %q (known: %s)", p.Config.BackendType,
			strings.Join(slices.Sorted(maps.Keys(r)), ", "))
	}
	return f(p)
}

// DecodeOptions decodes a backend's JSON options into v. Unknown keys are
// ignored, as upstream does; a value of the wrong type is an error naming
// the backend.
func DecodeOptions(backendType string, raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("invalid %s backend options: %w", backendType, err)
	}
	return nil
}
