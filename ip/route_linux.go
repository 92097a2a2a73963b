//go:build linux

package ip

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Reachability tells how the kernel reaches an underlay address.
type Reachability interface {
	// Direct reports whether a is reached through the link with index
	// linkIndex without a gateway (it is on that link's L2 segment), and
	// otherwise the gateway the kernel would use (invalid if none).
	Direct(a netip.Addr, linkIndex int) (direct bool, gateway netip.Addr, err error)
}

// KernelReachability answers with the kernel's route lookup (`ip route get`).
type KernelReachability struct{ H *netlink.Handle }

// Direct implements Reachability.
func (k KernelReachability) Direct(a netip.Addr, linkIndex int) (bool, netip.Addr, error) {
	routes, err := k.H.RouteGet(a.Unmap().AsSlice())
	if err != nil {
		return false, netip.Addr{}, fmt.Errorf("route lookup for %s: %w", a, err)
	}
	if len(routes) == 0 {
		return false, netip.Addr{}, nil
	}
	gw, _ := AddrFromIP(routes[0].Gw)
	return !gw.IsValid() && routes[0].LinkIndex == linkIndex, gw, nil
}
