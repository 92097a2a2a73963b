//go:build linux

package ip

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// EnsureOnlyAddress gives link exactly one address of addr's family, addr
// (IPv6 link-local addresses, which the kernel adds itself, are left
// alone).
func EnsureOnlyAddress(h *netlink.Handle, link netlink.Link, addr netip.Prefix) error {
	family := netlink.FAMILY_V4
	if addr.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := Dump{h}.Addrs(link, family)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	found := false
	for _, a := range addrs {
		p := PrefixFromIPNet(a.IPNet)
		if p == addr {
			found = true
			continue
		}
		if p.Addr().IsLinkLocalUnicast() {
			continue
		}
		klog.InfoS("Removing stale address", "device", link.Attrs().Name, "address", p)
		if err := h.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", p, link.Attrs().Name, err)
		}
	}
	if found {
		return nil
	}
	na := &netlink.Addr{IPNet: IPNetFromPrefix(addr)}
	if addr.Addr().Is6() {
		na.Flags = unix.IFA_F_NODAD // the address is ours alone: no duplicate detection delay
	}
	if err := h.AddrAdd(link, na); err != nil {
		return fmt.Errorf("add address %s to %s: %w", addr, link.Attrs().Name, err)
	}
	return nil
}

// LinkPrefixes returns the IPv4 and IPv6 addresses of the link with index
// linkIndex, each with its prefix length (IPv6 link-local ones left out).
func LinkPrefixes(h *netlink.Handle, linkIndex int) ([]netip.Prefix, error) {
	addrs, err := Dump{h}.Addrs(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: linkIndex}}, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of link %d: %w", linkIndex, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if p := PrefixFromIPNet(a.IPNet); p.IsValid() && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p)
		}
	}
	return out, nil
}
