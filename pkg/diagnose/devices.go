package diagnose

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

func (b *builder) devices() {
	if !b.attached() {
		b.r.Devices = append(b.r.Devices, DeviceReport{Status: StatusMissing, Detail: b.in.AttachErr.Error()})
		b.problem("device: %v", b.in.AttachErr)
		return
	}
	for _, d := range b.in.Devices {
		b.r.Devices = append(b.r.Devices, b.device(d))
	}
}

// device compares one device with what the backend gives the device of
// its address family: MTU, up, and the lease's address of that family.
func (b *builder) device(d Device) DeviceReport {
	ipv6 := deviceIPv6(d, b.in.Config)
	want := b.deviceAddress(ipv6)
	dr := DeviceReport{
		Name: d.Name, Type: d.Type, VNI: d.VNI, MAC: d.MAC, MTU: d.MTU, Up: d.Up, Addresses: []string{},
		Local: ip.Text(d.Local), WantMTU: b.deviceMTU(ipv6), WantAddress: ip.Text(want), Status: StatusOK,
	}
	for _, a := range d.Addresses {
		dr.Addresses = append(dr.Addresses, a.String())
	}
	var diffs []string
	if d.MTU != dr.WantMTU {
		diffs = append(diffs, fmt.Sprintf("MTU %d, want %d", d.MTU, dr.WantMTU))
	}
	if !d.Up {
		diffs = append(diffs, "down")
	}
	// Without a subnet of the family the lease check reports the problem.
	if want.IsValid() && (len(d.Addresses) != 1 || d.Addresses[0] != want) {
		diffs = append(diffs, fmt.Sprintf("addresses [%s], want %s", strings.Join(dr.Addresses, " "), want))
	}
	if len(diffs) > 0 {
		dr.Status, dr.Detail = StatusDiffers, strings.Join(diffs, "; ")
		b.problem("device %s: %s", d.Name, dr.Detail)
	}
	return dr
}

// deviceIPv6 tells whether d is the device of the IPv6 pods: a VXLAN
// device by the family of the underlay address it sends from
// (flannel-v6.<VNI> sends from an IPv6 address); a device without one
// (the udp backend's TUN, IPv4 only) serves IPv4 unless only IPv6 is
// enabled.
func deviceIPv6(d Device, cfg *subnet.Config) bool {
	if d.Local.IsValid() {
		return d.Local.Unmap().Is6()
	}
	return !cfg.EnableIPv4
}

// deviceAddress is the address the backend gives its device of the
// family: the network address of the lease's subnet of the family, as a
// /32 (/128). Invalid when the lease has no such subnet.
func (b *builder) deviceAddress(ipv6 bool) netip.Prefix {
	sn := b.in.Own.Subnet
	if ipv6 {
		sn = b.in.Own.IPv6Subnet
	}
	if !sn.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(sn.Masked().Addr(), sn.Addr().BitLen())
}

// ipv6HeaderExtra is how much longer an IPv6 header (40 bytes) is than an
// IPv4 one (20): what encapsulation over IPv6 costs more than over IPv4.
const ipv6HeaderExtra = 40 - 20

// deviceMTU is the MTU the backend gives its device of the family. The
// Backend interface tells only the pods' MTU (MTU(), for subnet.env): the
// smaller of its devices' MTUs. That is the MTU of a backend's only
// device; with a device per family (vxlan dual stack: flannel.1 at the
// external MTU - 50, flannel-v6.1 at - 70) it is the IPv6 device's, and
// the IPv4 device has the 20 bytes of the longer outer IPv6 header more.
// Derived here rather than added to the Backend interface.
func (b *builder) deviceMTU(ipv6 bool) int {
	mtu := b.in.Backend.MTU()
	cfg := b.in.Config
	if !ipv6 && cfg.EnableIPv4 && cfg.EnableIPv6 && len(b.ownedLinks()) > 1 {
		mtu += ipv6HeaderExtra
	}
	return mtu
}
