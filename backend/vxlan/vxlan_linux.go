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
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// Backend is the VXLAN backend: flannel.<VNI> over an IPv4 underlay for
// IPv4 pods and flannel-v6.<VNI> over an IPv6 underlay for IPv6 pods, one
// or both.
type Backend struct {
	opts  Options
	ext   *ip.ExternalInterface
	h     *netlink.Handle
	reach ip.Reachability

	v4, v6 *vtep // nil when the address family is off
}

// vtep is the device of one address family.
type vtep struct {
	ipv6      bool
	name      string     // flannel.<VNI> or flannel-v6.<VNI>
	mtu       int        // the device's MTU
	local     netip.Addr // underlay address the device sends from
	public    netip.Addr // underlay address advertised to peers
	linkIndex int        // set by Setup
	mac       kernel.MAC
}

var (
	_ backend.Backend     = (*Backend)(nil)
	_ backend.MTUFollower = (*Backend)(nil)
)

// New validates the options; it does not touch the kernel.
func New(p backend.Params) (backend.Backend, error) {
	opts, err := ParseOptions(p.Config.Backend)
	if err != nil {
		return nil, err
	}
	if opts.DirectRouting && p.Reach == nil {
		return nil, errors.New("vxlan: DirectRouting needs a reachability check")
	}
	b := &Backend{opts: opts, ext: p.ExtIface, h: p.Handle, reach: p.Reach}
	underlayMTU := b.underlayMTU(p.ExtIface.MTU)
	newVTEP := func(ipv6 bool, name string, local, public netip.Addr, overhead int) (*vtep, error) {
		family := "IPv4"
		if ipv6 {
			family = "global IPv6"
		}
		if !local.IsValid() {
			return nil, fmt.Errorf("vxlan: interface %s has no %s address to use as the VTEP's local address", p.ExtIface.Name, family)
		}
		mtu, err := vtepMTU(underlayMTU, ipv6)
		if err != nil {
			return nil, fmt.Errorf("vxlan: interface %s: %w", p.ExtIface.Name, err)
		}
		return &vtep{ipv6: ipv6, name: name, mtu: mtu, local: local, public: public}, nil
	}
	if p.Config.EnableIPv4 {
		if b.v4, err = newVTEP(false, fmt.Sprintf("flannel.%d", opts.VNI), p.ExtIface.IfaceAddr, p.ExtIface.ExtAddr, overheadIPv4); err != nil {
			return nil, err
		}
	}
	if p.Config.EnableIPv6 {
		if b.v6, err = newVTEP(true, fmt.Sprintf("flannel-v6.%d", opts.VNI), p.ExtIface.IfaceV6Addr, p.ExtIface.ExtV6Addr, overheadIPv6); err != nil {
			return nil, err
		}
	}
	if b.v4 == nil && b.v6 == nil {
		return nil, errors.New("vxlan: neither IPv4 nor IPv6 is enabled")
	}
	return b, nil
}

// underlayMTU is the MTU the devices are sized for: the MTU option if
// given, else the external interface's, ext.
func (b *Backend) underlayMTU(ext int) int {
	if b.opts.MTU > 0 {
		return b.opts.MTU
	}
	return ext
}

// vtepMTU is the MTU of a device of the family over an underlay MTU.
func vtepMTU(underlay int, ipv6 bool) (int, error) {
	overhead, family := overheadIPv4, "IPv4"
	if ipv6 {
		overhead, family = overheadIPv6, "IPv6"
	}
	if mtu := underlay - overhead; mtu >= 576 {
		return mtu, nil
	}
	return 0, fmt.Errorf("MTU %d leaves only %d bytes for pods after %d bytes of VXLAN over %s", underlay, underlay-overhead, overhead, family)
}

// SetUnderlayMTU implements backend.MTUFollower: the next Setup gives the
// devices MTUs for the external interface's new MTU (unless the MTU option
// fixes it).
func (b *Backend) SetUnderlayMTU(ext int) error {
	mtus := map[*vtep]int{}
	for _, v := range b.vteps() {
		mtu, err := vtepMTU(b.underlayMTU(ext), v.ipv6)
		if err != nil {
			return fmt.Errorf("vxlan: %w", err)
		}
		mtus[v] = mtu
	}
	for v, mtu := range mtus {
		v.mtu = mtu
	}
	return nil
}

// vteps returns the devices in use, IPv4 first.
func (b *Backend) vteps() []*vtep {
	var vs []*vtep
	for _, v := range []*vtep{b.v4, b.v6} {
		if v != nil {
			vs = append(vs, v)
		}
	}
	return vs
}

// MTU implements backend.Backend: pods get one MTU for both families, the
// smaller of the devices'.
func (b *Backend) MTU() int {
	mtu := 0
	for _, v := range b.vteps() {
		if mtu == 0 || v.mtu < mtu {
			mtu = v.mtu
		}
	}
	return mtu
}

// Base implements backend.Backend: flanneld owns the whole VXLAN devices.
func (b *Backend) Base() network.State {
	var st network.State
	for _, v := range b.vteps() {
		st.OwnedLinks = append(st.OwnedLinks, v.linkIndex)
	}
	return st
}

// PeerState implements backend.Backend: the VXLAN entries of each address
// family both sides use. With DirectRouting, a peer on this node's L2
// segment gets a plain route through its public IP instead.
func (b *Backend) PeerState(peer subnet.Lease) (network.State, error) {
	vteps, err := parsePeer(peer, b.opts.VNI, b.v4 != nil, b.v6 != nil)
	if err != nil {
		return network.State{}, err
	}
	var st network.State
	for _, pv := range vteps {
		if b.opts.DirectRouting {
			rt, err := backend.DirectRoute(b.reach, b.ext, peer.Name, pv.Subnet, pv.PublicIP)
			if err == nil {
				st.Routes = append(st.Routes, rt)
				continue
			}
			klog.V(2).InfoS("Peer is not directly reachable; using VXLAN", "node", peer.Name, "reason", err.Error())
		}
		dev := b.v4
		if pv.IPv6 {
			dev = b.v6
		}
		st.Merge(peerState(dev.linkIndex, pv.Subnet, pv.PublicIP, pv.MAC))
	}
	return st, nil
}

// previousMAC returns the VTEP MAC this node advertised before for the
// address family, if it used the same backend and VNI.
func (b *Backend) previousMAC(ipv6 bool, prev *subnet.LeaseAttrs) net.HardwareAddr {
	if prev == nil || prev.BackendType != Type {
		return nil
	}
	raw := prev.BackendData
	if ipv6 {
		raw = prev.BackendV6Data
	}
	var d Data
	if json.Unmarshal(raw, &d) != nil || d.VNI != b.opts.VNI {
		return nil
	}
	mac, err := kernel.ParseMAC(d.VtepMAC)
	if err != nil || !mac.IsUnicast() {
		return nil
	}
	return mac.HardwareAddr()
}

// Setup implements backend.Backend: it creates the devices, or reuses
// compatible existing ones with their MACs, and returns the attributes to
// advertise.
func (b *Backend) Setup(_ context.Context, prev *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	attrs := subnet.LeaseAttrs{BackendType: Type}
	for _, v := range b.vteps() {
		data, err := b.setupVTEP(v, prev)
		if err != nil {
			return subnet.LeaseAttrs{}, err
		}
		if v.ipv6 {
			attrs.PublicIPv6, attrs.BackendV6Data = v.public, data
		} else {
			attrs.PublicIP, attrs.BackendData = v.public, data
		}
	}
	return attrs, nil
}

// setupVTEP ensures one device and returns its backend data.
func (b *Backend) setupVTEP(v *vtep, prev *subnet.LeaseAttrs) (json.RawMessage, error) {
	// At start-up an existing device keeps its MAC and a new one gets the
	// MAC advertised before; afterwards the MAC advertised now is enforced.
	mac, enforceMAC := b.previousMAC(v.ipv6, prev), !v.mac.IsZero()
	if enforceMAC {
		mac = v.mac.HardwareAddr()
	}
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         v.name,
			MTU:          v.mtu,
			HardwareAddr: mac,
		},
		VxlanId:      b.opts.VNI,
		VtepDevIndex: b.ext.Index,
		SrcAddr:      v.local.AsSlice(),
		Port:         b.opts.Port,
		Learning:     b.opts.Learning,
		GBP:          b.opts.GBP,
	}
	link, err := ensureDevice(b.h, want, enforceMAC)
	if err != nil {
		return nil, err
	}
	devMAC, err := kernel.MACFromHardwareAddr(link.Attrs().HardwareAddr)
	if err != nil {
		return nil, fmt.Errorf("vxlan device %s: %w", v.name, err)
	}
	v.linkIndex, v.mac = link.Attrs().Index, devMAC
	return json.Marshal(Data{VNI: b.opts.VNI, VtepMAC: devMAC.String()})
}

// Attach implements backend.Backend.
func (b *Backend) Attach() error {
	for _, v := range b.vteps() {
		link, err := b.h.LinkByName(v.name)
		if err != nil {
			return fmt.Errorf("vxlan device %s: %w", v.name, err)
		}
		mac, err := kernel.MACFromHardwareAddr(link.Attrs().HardwareAddr)
		if err != nil {
			return fmt.Errorf("vxlan device %s: %w", v.name, err)
		}
		v.linkIndex, v.mac = link.Attrs().Index, mac
	}
	return nil
}

// Configure implements backend.Backend: each device gets the network
// address of the node's subnet of its family as a /32 (/128), and is
// brought up.
func (b *Backend) Configure(_ context.Context, own subnet.Lease) error {
	for _, v := range b.vteps() {
		sn := own.Subnet
		if v.ipv6 {
			sn = own.IPv6Subnet
		}
		if !sn.IsValid() {
			return fmt.Errorf("vxlan device %s: this node's lease has no subnet of its address family", v.name)
		}
		link, err := b.h.LinkByIndex(v.linkIndex)
		if err != nil {
			return fmt.Errorf("vxlan device %s: %w", v.name, err)
		}
		addr := netip.PrefixFrom(sn.Masked().Addr(), sn.Addr().BitLen())
		if err := ip.EnsureOnlyAddress(b.h, link, addr); err != nil {
			return err
		}
		if link.Attrs().Flags&net.FlagUp != 0 {
			continue
		}
		if err := b.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", v.name, err)
		}
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
