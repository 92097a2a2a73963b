package kernel

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
)

// Event is a change the kernel reported. Exactly one of Route, Neigh, FDB,
// Link, Addr is set, unless Lost is: then notifications were lost (the socket
// overflowed) and the receiver must assume anything changed.
type Event struct {
	// Deleted is set when the entry was removed. A neighbour or FDB entry
	// that stopped being permanent counts as removed.
	Deleted bool
	Route   *Route
	Neigh   *Neigh
	FDB     *FDB
	Link    *LinkEvent
	Addr    *AddrEvent
	Lost    bool
}

// AddrEvent is an address added to (or, with Deleted, removed from) a link.
type AddrEvent struct {
	LinkIndex int
	Addr      netip.Prefix
}

// LinkEvent describes a link's state after a change.
type LinkEvent struct {
	Index   int
	Name    string
	Up      bool
	Deleted bool
	MTU     int
}

// socketBuffer is the receive buffer of the notification sockets: large
// enough for the notifications of programming thousands of peers at once,
// so the kernel does not drop them (forced past net.core.rmem_max, which
// needs CAP_NET_ADMIN, which flanneld has).
const socketBuffer = 16 << 20

// eventBuffer is the capacity of the channels between the netlink readers
// and the receiver. Bursts queue in the socket buffers above (kernel
// memory), not here: each buffered route update holds a whole
// netlink.Route, and 8,192 of them cost about 4 MiB of heap.
const eventBuffer = 256

// Subscribe delivers the route, neighbour, FDB, link and address changes
// of the network namespace ns (nil: the current one) to fn, from the
// calling goroutine, until ctx ends; it returns only when every goroutine
// it started has ended. When a subscription fails it reports
// Event{Lost: true} and subscribes again.
func Subscribe(ctx context.Context, ns *netns.NsHandle, fn func(Event)) {
	for ctx.Err() == nil {
		subscribeOnce(ctx, ns, fn)
		if ctx.Err() != nil {
			return
		}
		fn(Event{Lost: true})
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// drain receives from ch until it is closed: a netlink subscription's
// reader closes its channel when its socket is closed, but only after any
// send it is blocked in has been received.
func drain[T any](ch <-chan T) {
	for range ch {
	}
}

// subscribeOnce runs one set of subscriptions until ctx ends or one fails.
// On return every subscription's socket is closed and its reader has
// ended.
func subscribeOnce(ctx context.Context, ns *netns.NsHandle, fn func(Event)) {
	done := make(chan struct{})
	var drains []func()
	defer func() {
		close(done)
		for _, d := range drains {
			d()
		}
	}()
	failed := make(chan error, 4)
	onErr := func(err error) {
		select {
		case failed <- err:
		default:
		}
	}
	routes := make(chan netlink.RouteUpdate, eventBuffer)
	neighs := make(chan netlink.NeighUpdate, eventBuffer)
	links := make(chan netlink.LinkUpdate, eventBuffer)
	addrs := make(chan netlink.AddrUpdate, eventBuffer)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: ns, ErrorCallback: onErr, ReceiveBufferSize: socketBuffer, ReceiveBufferForceSize: true}); err != nil {
		klog.ErrorS(err, "Subscribe to route changes")
		return
	}
	drains = append(drains, func() { drain(routes) })
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{Namespace: ns, ErrorCallback: onErr, ReceiveBufferSize: socketBuffer, ReceiveBufferForceSize: true}); err != nil {
		klog.ErrorS(err, "Subscribe to neighbour changes")
		return
	}
	drains = append(drains, func() { drain(neighs) })
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: ns, ErrorCallback: onErr, ReceiveBufferSize: socketBuffer, ReceiveBufferForceSize: true}); err != nil {
		klog.ErrorS(err, "Subscribe to link changes")
		return
	}
	drains = append(drains, func() { drain(links) })
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: ns, ErrorCallback: onErr, ReceiveBufferSize: socketBuffer, ReceiveBufferForceSize: true}); err != nil {
		klog.ErrorS(err, "Subscribe to address changes")
		return
	}
	drains = append(drains, func() { drain(addrs) })
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-failed:
			klog.ErrorS(err, "Kernel change notifications failed; resubscribing")
			return
		case u, ok := <-routes:
			if !ok {
				return
			}
			if ev, ok := routeEvent(u); ok {
				fn(ev)
			}
		case u, ok := <-neighs:
			if !ok {
				return
			}
			if ev, ok := neighEvent(u); ok {
				fn(ev)
			}
		case u, ok := <-addrs:
			if !ok {
				return
			}
			fn(Event{Addr: &AddrEvent{LinkIndex: u.LinkIndex, Addr: ip.PrefixFromIPNet(&u.LinkAddress)}, Deleted: !u.NewAddr})
		case u, ok := <-links:
			if !ok {
				return
			}
			fn(Event{Link: &LinkEvent{Index: u.Attrs().Index, Name: u.Attrs().Name, MTU: u.Attrs().MTU,
				Up: u.Attrs().Flags&net.FlagUp != 0, Deleted: u.Header.Type == unix.RTM_DELLINK}})
		}
	}
}

// routeEvent converts a route notification: a main-table unicast route,
// or the deletion of any other main-table route (another agent's blackhole
// or unreachable route is gone: a route of flanneld's it was in the way of
// can go in).
func routeEvent(u netlink.RouteUpdate) (Event, bool) {
	deleted := u.Type == unix.RTM_DELROUTE
	if rt, ok := routeFromNetlink(u.Route); ok {
		return Event{Route: &rt, Deleted: deleted}, true
	}
	if deleted && (u.Table == 0 || u.Table == unix.RT_TABLE_MAIN) && u.Dst != nil {
		return Event{Route: &Route{Dst: ip.PrefixFromIPNet(u.Dst), Protocol: int(u.Protocol)}, Deleted: true}, true
	}
	return Event{}, false
}

func neighEvent(u netlink.NeighUpdate) (Event, bool) {
	n := u.Neigh
	if n.IP == nil {
		return Event{}, false
	}
	mac, err := MACFromHardwareAddr(n.HardwareAddr)
	deleted := u.Type == unix.RTM_DELNEIGH || n.State&netlink.NUD_PERMANENT == 0
	if n.Family == unix.AF_BRIDGE {
		if err != nil {
			return Event{}, false
		}
		return Event{FDB: &FDB{LinkIndex: n.LinkIndex, MAC: mac, Dst: addrFromIP(n.IP)}, Deleted: deleted}, true
	}
	if err != nil {
		// A neighbour without a usable MAC is not the permanent entry
		// flanneld installs for this address.
		deleted = true
	}
	return Event{Neigh: &Neigh{LinkIndex: n.LinkIndex, IP: addrFromIP(n.IP), MAC: mac}, Deleted: deleted}, true
}
