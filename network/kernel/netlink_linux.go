package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flanneld/flanneld/ip"
)

// Netlink implements Interface over a *netlink.Handle.
type Netlink struct {
	h  *netlink.Handle
	wg *WGClient
}

var _ Interface = (*Netlink)(nil)

// NewNetlink returns an Interface that programs the network namespace h was
// opened in.
func NewNetlink(h *netlink.Handle) *Netlink { return &Netlink{h: h, wg: &WGClient{}} }

// wrapDel maps "already gone" errors of a delete to ErrNotFound.
func wrapDel(what string, obj fmt.Stringer, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete %s %s: %w", what, obj, ErrNotFound)
	}
	return fmt.Errorf("delete %s %s: %w", what, obj, err)
}

// addrFromIP is ip.AddrFromIP for fields where an absent address is the
// zero Addr.
func addrFromIP(a net.IP) netip.Addr {
	addr, _ := ip.AddrFromIP(a)
	return addr
}

// ListRoutes returns the unicast routes of the main table with a
// destination prefix (default routes included) and a single next hop.
func (k *Netlink) ListRoutes() ([]Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	nl, err := ip.Dump{H: k.h}.RoutesFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	out := make([]Route, 0, len(nl))
	for _, r := range nl {
		if rt, ok := routeFromNetlink(r); ok {
			out = append(out, rt)
		}
	}
	return out, nil
}

// routeFromNetlink converts a main-table unicast route with one next hop.
func routeFromNetlink(r netlink.Route) (Route, bool) {
	if r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 || (r.Table != 0 && r.Table != unix.RT_TABLE_MAIN) {
		return Route{}, false
	}
	dst := ip.PrefixFromIPNet(r.Dst)
	if !dst.IsValid() {
		if r.Family == unix.AF_INET6 {
			dst = netip.MustParsePrefix("::/0")
		} else {
			dst = netip.MustParsePrefix("0.0.0.0/0")
		}
	}
	return Route{
		Dst:       dst,
		Gw:        addrFromIP(r.Gw),
		LinkIndex: r.LinkIndex,
		Onlink:    r.Flags&int(netlink.FLAG_ONLINK) != 0,
		Protocol:  int(r.Protocol),
	}, true
}

func toNetlinkRoute(r Route) *netlink.Route {
	nr := &netlink.Route{
		Dst:       ip.IPNetFromPrefix(r.Dst),
		LinkIndex: r.LinkIndex,
		Table:     unix.RT_TABLE_MAIN,
		Protocol:  netlink.RouteProtocol(r.Protocol),
		Type:      unix.RTN_UNICAST,
	}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.Onlink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

// SetRoute adds or replaces the route to r.Dst.
func (k *Netlink) SetRoute(r Route) error {
	if err := k.h.RouteReplace(toNetlinkRoute(r)); err != nil {
		return fmt.Errorf("replace route %s: %w", r, err)
	}
	return nil
}

// AddRoute adds the route to r.Dst unless the kernel has one (of any
// protocol): that is another agent's, or one flanneld does not know it
// installed, and is never replaced.
func (k *Netlink) AddRoute(r Route) error {
	if err := k.h.RouteAdd(toNetlinkRoute(r)); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s: the kernel has another route to %s: %w", r, r.Dst, ErrExists)
		}
		return fmt.Errorf("add route %s: %w", r, err)
	}
	return nil
}

// DelRoute deletes the route to r.Dst.
func (k *Netlink) DelRoute(r Route) error {
	nr := toNetlinkRoute(r)
	nr.Protocol = 0 // match whatever protocol the route carries
	return wrapDel("route", r, k.h.RouteDel(nr))
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// ListNeighs returns the permanent IPv4 and IPv6 neighbours of a link.
func (k *Netlink) ListNeighs(linkIndex int) ([]Neigh, error) {
	var out []Neigh
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		nl, err := ip.Dump{H: k.h}.Neighs(linkIndex, fam)
		if err != nil {
			return nil, fmt.Errorf("list neighbours of link %d: %w", linkIndex, err)
		}
		for _, n := range nl {
			if n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			mac, err := MACFromHardwareAddr(n.HardwareAddr)
			if err != nil {
				continue
			}
			out = append(out, Neigh{LinkIndex: n.LinkIndex, IP: addrFromIP(n.IP), MAC: mac})
		}
	}
	return out, nil
}

func toNetlinkNeigh(n Neigh) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    n.LinkIndex,
		Family:       family(n.IP),
		State:        netlink.NUD_PERMANENT,
		Type:         unix.RTN_UNICAST,
		IP:           n.IP.AsSlice(),
		HardwareAddr: n.MAC.HardwareAddr(),
	}
}

// SetNeigh adds or replaces a permanent neighbour.
func (k *Netlink) SetNeigh(n Neigh) error {
	if err := k.h.NeighSet(toNetlinkNeigh(n)); err != nil {
		return fmt.Errorf("set neighbour %s: %w", n, err)
	}
	return nil
}

// DelNeigh deletes a neighbour.
func (k *Netlink) DelNeigh(n Neigh) error {
	return wrapDel("neighbour", n, k.h.NeighDel(toNetlinkNeigh(n)))
}

// ListFDB returns the permanent FDB entries of a link that have a
// destination address.
func (k *Netlink) ListFDB(linkIndex int) ([]FDB, error) {
	nl, err := ip.Dump{H: k.h}.Neighs(linkIndex, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("list FDB of link %d: %w", linkIndex, err)
	}
	var out []FDB
	for _, n := range nl {
		if n.State&netlink.NUD_PERMANENT == 0 || n.IP == nil {
			continue
		}
		mac, err := MACFromHardwareAddr(n.HardwareAddr)
		if err != nil {
			continue
		}
		out = append(out, FDB{LinkIndex: n.LinkIndex, MAC: mac, Dst: addrFromIP(n.IP)})
	}
	return out, nil
}

func toNetlinkFDB(f FDB) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    f.LinkIndex,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT,
		Flags:        netlink.NTF_SELF,
		IP:           f.Dst.AsSlice(),
		HardwareAddr: f.MAC.HardwareAddr(),
	}
}

// SetFDB adds or replaces an FDB entry.
func (k *Netlink) SetFDB(f FDB) error {
	if err := k.h.NeighSet(toNetlinkFDB(f)); err != nil {
		return fmt.Errorf("set FDB entry %s: %w", f, err)
	}
	return nil
}

// DelFDB deletes an FDB entry.
func (k *Netlink) DelFDB(f FDB) error {
	return wrapDel("FDB entry", f, k.h.NeighDel(toNetlinkFDB(f)))
}
