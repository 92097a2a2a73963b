package vxlan

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/pkg/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// Backend is the VXLAN backend for IPv4.
type Backend struct {
	opts  Options
	ext   *ip.ExternalInterface
	h     *netlink.Handle
	reach ip.Reachability

	name      string // flannel.<VNI>
	mtu       int
	linkIndex int // set by Setup
	mac       kernel.MAC
}

var _ backend.Backend = (*Backend)(nil)

// New validates the options; it does not touch the kernel.
func New(p backend.Params) (backend.Backend, error) {
	opts, err := ParseOptions(p.Config.Backend)
	if err != nil {
		return nil, err
	}
	if !p.ExtIface.IfaceAddr.IsValid() {
		return nil, fmt.Errorf("vxlan: interface %s has no IPv4 address to use as the VTEP's local address", p.ExtIface.Name)
	}
	if opts.DirectRouting && p.Reach == nil {
		return nil, errors.New("vxlan: DirectRouting needs a reachability check")
	}
	underlayMTU := p.ExtIface.MTU
	if opts.MTU > 0 {
		underlayMTU = opts.MTU
	}
	mtu := underlayMTU - overheadIPv4
	if mtu < 576 {
		return nil, fmt.Errorf("vxlan: MTU %d of interface %s leaves only %d bytes for pods", underlayMTU, p.ExtIface.Name, mtu)
	}
	return &Backend{
		opts:  opts,
		ext:   p.ExtIface,
		h:     p.Handle,
		reach: p.Reach,
		name:  fmt.Sprintf("flannel.%d", opts.VNI),
		mtu:   mtu,
	}, nil
}

// MTU implements backend.Backend.
func (b *Backend) MTU() int { return b.mtu }

// Base implements backend.Backend: flanneld owns the whole VXLAN device.
func (b *Backend) Base() network.State { return network.State{OwnedLinks: []int{b.linkIndex}} }

// PeerState implements backend.Backend. With DirectRouting, a peer on
// this node's L2 segment gets a plain route through its public IP instead
// of the VXLAN entries.
func (b *Backend) PeerState(peer subnet.Lease) (network.State, error) {
	mac, err := parsePeer(peer, b.opts.VNI)
	if err != nil {
		return network.State{}, err
	}
	if b.opts.DirectRouting {
		rt, err := backend.DirectRoute(b.reach, b.ext, peer)
		if err == nil {
			return network.State{Routes: []kernel.Route{rt}}, nil
		}
		klog.V(2).InfoS("Peer is not directly reachable; using VXLAN", "node", peer.Name, "reason", err.Error())
	}
	return peerState(b.linkIndex, peer.Subnet, peer.Attrs.PublicIP, mac), nil
}

// previousMAC returns the VTEP MAC this node advertised before, if it used
// the same backend and VNI.
func (b *Backend) previousMAC(prev *subnet.LeaseAttrs) net.HardwareAddr {
	if prev == nil || prev.BackendType != Type {
		return nil
	}
	var d Data
	if json.Unmarshal(prev.BackendData, &d) != nil || d.VNI != b.opts.VNI {
		return nil
	}
	mac, err := kernel.ParseMAC(d.VtepMAC)
	if err != nil || mac.IsZero() || mac[0]&1 == 1 {
		return nil
	}
	return mac.HardwareAddr()
}

// Setup implements backend.Backend: it creates flannel.<VNI>, or reuses a
// compatible existing one with its MAC, and returns the attributes to
// advertise.
func (b *Backend) Setup(_ context.Context, prev *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	// At start-up an existing device keeps its MAC and a new one gets the
	// MAC advertised before; afterwards the MAC advertised now is enforced.
	mac, enforceMAC := b.previousMAC(prev), !b.mac.IsZero()
	if enforceMAC {
		mac = b.mac.HardwareAddr()
	}
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         b.name,
			MTU:          b.mtu,
			HardwareAddr: mac,
		},
		VxlanId:      b.opts.VNI,
		VtepDevIndex: b.ext.Index,
		SrcAddr:      b.ext.IfaceAddr.AsSlice(),
		Port:         b.opts.Port,
		Learning:     b.opts.Learning,
		GBP:          b.opts.GBP,
	}
	link, err := ensureDevice(b.h, want, enforceMAC)
	if err != nil {
		return subnet.LeaseAttrs{}, err
	}
	devMAC, err := kernel.MACFromHardwareAddr(link.Attrs().HardwareAddr)
	if err != nil {
		return subnet.LeaseAttrs{}, fmt.Errorf("vxlan device %s: %w", b.name, err)
	}
	b.linkIndex, b.mac = link.Attrs().Index, devMAC
	data, err := json.Marshal(Data{VNI: b.opts.VNI, VtepMAC: devMAC.String()})
	if err != nil {
		return subnet.LeaseAttrs{}, err
	}
	return subnet.LeaseAttrs{PublicIP: b.ext.ExtAddr, BackendType: Type, BackendData: data}, nil
}

// Attach implements backend.Backend.
func (b *Backend) Attach() error {
	link, err := b.h.LinkByName(b.name)
	if err != nil {
		return fmt.Errorf("vxlan device %s: %w", b.name, err)
	}
	mac, err := kernel.MACFromHardwareAddr(link.Attrs().HardwareAddr)
	if err != nil {
		return fmt.Errorf("vxlan device %s: %w", b.name, err)
	}
	b.linkIndex, b.mac = link.Attrs().Index, mac
	return nil
}

// Configure implements backend.Backend: the device gets the network address
// of the node's subnet as a /32, and is brought up.
func (b *Backend) Configure(_ context.Context, own subnet.Lease) error {
	link, err := b.h.LinkByIndex(b.linkIndex)
	if err != nil {
		return fmt.Errorf("vxlan device %s: %w", b.name, err)
	}
	addr := netip.PrefixFrom(own.Subnet.Masked().Addr(), 32)
	if err := ensureOnlyAddress(b.h, link, addr); err != nil {
		return err
	}
	if link.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := b.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", b.name, err)
	}
	return nil
}

// compatible reports whether an existing device can be reused for want.
// The MTU is not compared: it is fixed in place.
func compatible(have netlink.Link, want *netlink.Vxlan) (bool, string) {
	v, ok := have.(*netlink.Vxlan)
	switch {
	case !ok:
		return false, fmt.Sprintf("it is a %s device", have.Type())
	case v.VxlanId != want.VxlanId:
		return false, fmt.Sprintf("its VNI is %d, want %d", v.VxlanId, want.VxlanId)
	case v.VtepDevIndex != want.VtepDevIndex:
		return false, fmt.Sprintf("its underlay device index is %d, want %d", v.VtepDevIndex, want.VtepDevIndex)
	case !v.SrcAddr.Equal(want.SrcAddr):
		return false, fmt.Sprintf("its local address is %s, want %s", v.SrcAddr, net.IP(want.SrcAddr))
	case v.Port != want.Port:
		return false, fmt.Sprintf("its port is %d, want %d", v.Port, want.Port)
	case v.Learning != want.Learning || v.GBP != want.GBP:
		return false, "its learning or GBP setting differs"
	}
	return true, ""
}

// ensureDevice returns the VXLAN device want describes, reusing a
// compatible existing device and replacing an incompatible one. A reused
// device keeps its MAC unless enforceMAC is set.
func ensureDevice(h *netlink.Handle, want *netlink.Vxlan, enforceMAC bool) (netlink.Link, error) {
	name := want.Name
	have, err := h.LinkByName(name)
	if err == nil {
		ok, why := compatible(have, want)
		if ok {
			if have.Attrs().MTU == want.MTU && (!enforceMAC || bytes.Equal(have.Attrs().HardwareAddr, want.HardwareAddr)) {
				klog.V(4).InfoS("VXLAN device is as expected", "device", name)
				return have, nil
			}
			if have.Attrs().MTU != want.MTU {
				klog.InfoS("Fixing MTU of VXLAN device", "device", name, "mtu", have.Attrs().MTU, "want", want.MTU)
				if err := h.LinkSetMTU(have, want.MTU); err != nil {
					return nil, fmt.Errorf("set MTU of %s to %d: %w", name, want.MTU, err)
				}
			}
			if enforceMAC && !bytes.Equal(have.Attrs().HardwareAddr, want.HardwareAddr) {
				klog.InfoS("Restoring the advertised MAC of VXLAN device", "device", name, "mac", have.Attrs().HardwareAddr, "want", want.HardwareAddr)
				if err := h.LinkSetHardwareAddr(have, want.HardwareAddr); err != nil {
					return nil, fmt.Errorf("set MAC of %s to %s: %w", name, want.HardwareAddr, err)
				}
			}
			return h.LinkByName(name)
		}
		klog.InfoS("Replacing incompatible VXLAN device", "device", name, "reason", why)
		if want.HardwareAddr == nil {
			want.HardwareAddr = have.Attrs().HardwareAddr
		}
		if err := h.LinkDel(have); err != nil {
			return nil, fmt.Errorf("delete incompatible device %s: %w", name, err)
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	if err := h.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("create VXLAN device %s: %w", name, err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up created device %s: %w", name, err)
	}
	klog.InfoS("Created VXLAN device", "device", name, "vni", want.VxlanId, "mac", link.Attrs().HardwareAddr, "mtu", want.MTU)
	return link, nil
}

// ensureOnlyAddress gives link exactly one IPv4 address, addr.
func ensureOnlyAddress(h *netlink.Handle, link netlink.Link, addr netip.Prefix) error {
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	found := false
	for _, a := range addrs {
		p := ip.PrefixFromIPNet(a.IPNet)
		if p == addr {
			found = true
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
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ip.IPNetFromPrefix(addr)}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", addr, link.Attrs().Name, err)
	}
	return nil
}
