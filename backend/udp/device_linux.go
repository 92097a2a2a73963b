package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// Setup implements backend.Backend: it binds the UDP port (once), and
// creates flannel0, or recreates it when it is gone; otherwise it only
// fixes its MTU. The node advertises its public IP and no backend data,
// as upstream's udp nodes do.
func (b *Backend) Setup(_ context.Context, _ *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	if b.fwd.conn == nil {
		addr := netip.AddrPortFrom(b.ext.IfaceAddr, uint16(b.opts.Port))
		if err := b.fwd.open(addr); err != nil {
			return subnet.LeaseAttrs{}, err
		}
		klog.InfoS("Listening for the udp backend's datagrams", "address", addr, "gso", b.fwd.conn.gso.Load(), "gro", b.fwd.conn.gro)
	}
	index, err := b.ensureDevice()
	if err != nil {
		return subnet.LeaseAttrs{}, err
	}
	b.linkIndex = index
	return subnet.LeaseAttrs{PublicIP: b.ext.ExtAddr, BackendType: Type}, nil
}

// ensureDevice returns the index of flannel0, creating the TUN device
// when flanneld holds none or the one it holds was deleted.
func (b *Backend) ensureDevice() (int, error) {
	if cur := b.fwd.device(); cur != nil {
		link, err := b.h.LinkByIndex(cur.index)
		switch {
		case err == nil && link.Attrs().Name == DeviceName:
			if link.Attrs().MTU != b.mtu {
				klog.InfoS("Fixing MTU of TUN device", "device", DeviceName, "mtu", link.Attrs().MTU, "want", b.mtu)
				if err := b.h.LinkSetMTU(link, b.mtu); err != nil {
					return 0, fmt.Errorf("set MTU of %s to %d: %w", DeviceName, b.mtu, err)
				}
			}
			return cur.index, nil
		case err == nil || errors.As(err, new(netlink.LinkNotFoundError)):
			klog.InfoS("TUN device is gone; recreating it", "device", DeviceName, "index", cur.index)
		default:
			return 0, fmt.Errorf("look up %s: %w", DeviceName, err)
		}
	}
	// A flannel0 flanneld does not hold: the TUN the previous flanneld left
	// (persistent, with its address and route) is attached to; anything
	// else is in the way: the name is flannel's.
	created := "Created TUN device"
	var dev *tunDevice
	if link, err := b.h.LinkByName(DeviceName); err == nil {
		if link.Type() == "tuntap" {
			if dev, err = openTUN(DeviceName); err == nil {
				created = "Attached to the TUN device the previous flanneld left"
			} else {
				klog.InfoS("Could not attach to the TUN device; replacing it", "device", DeviceName, "err", err)
			}
		}
		if dev == nil {
			klog.InfoS("Removing a device in the way of the TUN device", "device", DeviceName, "type", link.Type())
			if err := b.h.LinkDel(link); err != nil {
				return 0, fmt.Errorf("remove %s: %w", DeviceName, err)
			}
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return 0, fmt.Errorf("look up %s: %w", DeviceName, err)
	}
	if dev == nil {
		var err error
		if dev, err = openTUN(DeviceName); err != nil {
			return 0, fmt.Errorf("create TUN device %s: %w", DeviceName, err)
		}
	}
	link, err := b.h.LinkByName(DeviceName)
	if err == nil {
		dev.index = link.Attrs().Index
		err = b.h.LinkSetMTU(link, b.mtu)
	}
	if err != nil {
		unix.Close(dev.fd)
		return 0, fmt.Errorf("set up created device %s: %w", DeviceName, err)
	}
	b.fwd.setDevice(dev)
	klog.InfoS(created, "device", DeviceName, "index", dev.index, "mtu", b.mtu)
	return dev.index, nil
}

// Attach implements backend.Backend.
func (b *Backend) Attach() error {
	link, err := b.h.LinkByName(DeviceName)
	if err != nil {
		return fmt.Errorf("TUN device %s: %w", DeviceName, err)
	}
	b.linkIndex = link.Attrs().Index
	return nil
}

// Configure implements backend.Backend: flannel0 gets the network address
// of the node's subnet as a /32, loses IPv6 (the kernel's IPv6 chatter
// would only be dropped) and goes up; the forwarder learns the node's
// subnet.
func (b *Backend) Configure(_ context.Context, own subnet.Lease) error {
	if !own.Subnet.IsValid() || !own.Subnet.Addr().Is4() {
		return fmt.Errorf("udp backend: this node's lease has no IPv4 subnet")
	}
	link, err := b.h.LinkByIndex(b.linkIndex)
	if err != nil {
		return fmt.Errorf("TUN device %s: %w", DeviceName, err)
	}
	addr := netip.PrefixFrom(own.Subnet.Masked().Addr(), 32)
	if err := ip.EnsureOnlyAddress(b.h, link, addr); err != nil {
		return err
	}
	disableIPv6(DeviceName)
	b.fwd.local.Store(newLocalNet(own.Subnet))
	if link.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := b.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", DeviceName, err)
	}
	return nil
}

// disableIPv6 turns IPv6 off on dev, if the kernel has IPv6 at all.
func disableIPv6(dev string) {
	path := "/proc/sys/net/ipv6/conf/" + dev + "/disable_ipv6"
	cur, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(cur)) == "1" {
		return
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		klog.V(2).InfoS("Could not disable IPv6 on the TUN device", "device", dev, "err", err)
	}
}
