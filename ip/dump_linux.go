//go:build linux

package ip

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// dumpAttempts bounds how often a netlink dump interrupted by a concurrent
// change is tried.
const dumpAttempts = 5

// Dump runs netlink dumps (lists of links, addresses, routes, neighbours)
// on a handle. The kernel may interrupt a dump with a concurrent change
// (its results would be inconsistent): every dump is tried again then. All
// of flanneld's dumps go through Dump, so that none can forget it
// (TestNoRawDumps checks).
type Dump struct{ H *netlink.Handle }

// Links lists the links.
func (d Dump) Links() ([]netlink.Link, error) { return retryDump(d.H.LinkList) }

// Addrs lists the addresses of link (nil: of every link) of family.
func (d Dump) Addrs(link netlink.Link, family int) ([]netlink.Addr, error) {
	return retryDump(func() ([]netlink.Addr, error) { return d.H.AddrList(link, family) })
}

// Routes lists the routes of link (nil: of every link) of family.
func (d Dump) Routes(link netlink.Link, family int) ([]netlink.Route, error) {
	return retryDump(func() ([]netlink.Route, error) { return d.H.RouteList(link, family) })
}

// RoutesFiltered lists the routes of family that match filter on mask.
func (d Dump) RoutesFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return retryDump(func() ([]netlink.Route, error) { return d.H.RouteListFiltered(family, filter, mask) })
}

// Neighs lists the neighbours (family AF_BRIDGE: FDB entries) of a link.
func (d Dump) Neighs(linkIndex, family int) ([]netlink.Neigh, error) {
	return retryDump(func() ([]netlink.Neigh, error) { return d.H.NeighList(linkIndex, family) })
}

// retryDump calls dump again when the kernel reports that the dump was
// interrupted. After dumpAttempts interrupted dumps it gives up with an
// error wrapping netlink.ErrDumpInterrupted and no results.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpAttempts {
		if v, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	var zero T
	return zero, fmt.Errorf("netlink dump interrupted %d times: %w", dumpAttempts, err)
}
