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
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/pkg/kernel"
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

// DirectRoute returns the route to a peer's subnet through its public IP on
// the external interface, or an error wrapping ErrPeerData when the public
// IP is not on that interface's L2 segment.
func DirectRoute(reach ip.Reachability, ext *ip.ExternalInterface, peer subnet.Lease) (kernel.Route, error) {
	direct, gw, err := reach.Direct(peer.Attrs.PublicIP, ext.Index)
	if err != nil {
		return kernel.Route{}, err
	}
	if !direct {
		how := "not through " + ext.Name
		if gw.IsValid() {
			how = "only through the gateway " + gw.String()
		}
		return kernel.Route{}, fmt.Errorf("%w: peer %s at %s is not on this node's L2 segment (reached %s)",
			ErrUnreachable, peer.Name, peer.Attrs.PublicIP, how)
	}
	return kernel.Route{Dst: peer.Subnet.Masked(), Gw: peer.Attrs.PublicIP, LinkIndex: ext.Index}, nil
}

// Factory parses and validates the backend's options and returns a Backend.
// It must not touch the kernel: the daemon builds the backend before it
// changes anything, so a bad configuration changes nothing.
type Factory func(p Params) (Backend, error)

// Registry maps backend type names to their factories.
type Registry map[string]Factory

// New builds the backend named by p.Config.BackendType.
func (r Registry) New(p Params) (Backend, error) {
	f, ok := r[p.Config.BackendType]
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
