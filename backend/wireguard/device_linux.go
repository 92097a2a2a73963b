package wireguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// Setup implements backend.Backend: it loads (or creates) the private
// key, creates the devices, or reuses the existing ones (a kernel device
// survives a restart with its peers), gives them the key and their listen
// port, and returns the attributes to advertise.
func (b *Backend) Setup(_ context.Context, _ *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	if b.private.IsZero() {
		key, err := loadOrCreateKey(b.keyFile)
		if err != nil {
			return subnet.LeaseAttrs{}, err
		}
		b.private, b.public = key, publicKey(key)
	}
	for _, d := range b.devs {
		if err := b.ensureDevice(d); err != nil {
			return subnet.LeaseAttrs{}, err
		}
		if err := b.configureDevice(d); err != nil {
			return subnet.LeaseAttrs{}, err
		}
	}
	attrs := subnet.LeaseAttrs{BackendType: Type}
	var err error
	if b.network.IsValid() {
		attrs.PublicIP = b.ext.ExtAddr
		if attrs.BackendData, err = b.advertised(false); err != nil {
			return subnet.LeaseAttrs{}, err
		}
	}
	if b.net6.IsValid() {
		attrs.PublicIPv6 = b.ext.ExtV6Addr
		if attrs.BackendV6Data, err = b.advertised(true); err != nil {
			return subnet.LeaseAttrs{}, err
		}
	}
	return attrs, nil
}

// ensureDevice sets d.linkIndex to the device's, creating the device when
// it is missing: a kernel WireGuard device if the kernel has the link
// type, else a userspace one run by flanneld.
func (b *Backend) ensureDevice(d *device) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d.user != nil {
		if link, err := b.h.LinkByIndex(d.user.index); err == nil && d.user.alive() && link.Attrs().Name == d.name {
			d.linkIndex = d.user.index
			return b.fixMTU(link)
		}
		klog.InfoS("Userspace WireGuard device is gone; recreating it", "device", d.name, "index", d.user.index)
		d.user.close()
		d.user = nil
	}
	link, err := b.h.LinkByName(d.name)
	switch {
	case err == nil && link.Type() == "wireguard":
		d.linkIndex = link.Attrs().Index
		return b.fixMTU(link)
	case err == nil && link.Type() == "tuntap":
		// The persistent TUN of the userspace device of a flanneld that
		// stopped: run the device on it again, with its address and routes.
		err := b.runUserDevice(d, true)
		if err == nil {
			return nil
		}
		klog.InfoS("Could not attach to the TUN device; replacing it", "device", d.name, "err", err)
		if err := b.h.LinkDel(link); err != nil {
			return fmt.Errorf("remove %s: %w", d.name, err)
		}
	case err == nil:
		klog.InfoS("Removing a device in the way of the WireGuard device", "device", d.name, "type", link.Type())
		if err := b.h.LinkDel(link); err != nil {
			return fmt.Errorf("remove %s: %w", d.name, err)
		}
	case !errors.As(err, new(netlink.LinkNotFoundError)):
		return fmt.Errorf("look up %s: %w", d.name, err)
	}
	err = b.h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: d.name, MTU: b.mtu}})
	if err == nil {
		if link, err = b.h.LinkByName(d.name); err != nil {
			return fmt.Errorf("look up created device %s: %w", d.name, err)
		}
		d.linkIndex = link.Attrs().Index
		klog.InfoS("Created WireGuard device", "device", d.name, "implementation", ImplKernel, "mtu", b.mtu)
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("create WireGuard device %s: %w", d.name, err)
	}
	if err := b.runUserDevice(d, false); err != nil {
		return fmt.Errorf("the kernel has no WireGuard, and the userspace device failed: %w", err)
	}
	return nil
}

// runUserDevice runs the userspace device d on a new TUN, or on the one
// the previous flanneld left (attach). Callers hold b.mu.
func (b *Backend) runUserDevice(d *device, attach bool) error {
	u, err := newUserDevice(d.name, b.mtu, b.notifyChanged)
	if err != nil {
		return err
	}
	d.user, d.linkIndex = u, u.index
	b.reprimeAll()
	msg := "Created WireGuard device"
	if attach {
		msg = "Running WireGuard device on the TUN the previous flanneld left"
	}
	klog.InfoS(msg, "device", d.name, "implementation", ImplUserspace, "mtu", b.mtu,
		"reason", "the kernel has no wireguard link type; flanneld runs the device (its TUN stays while flanneld restarts)")
	return nil
}

// fixMTU gives an existing device the MTU it must have.
func (b *Backend) fixMTU(link netlink.Link) error {
	if link.Attrs().MTU == b.mtu {
		return nil
	}
	klog.InfoS("Fixing MTU of WireGuard device", "device", link.Attrs().Name, "mtu", link.Attrs().MTU, "want", b.mtu)
	if err := b.h.LinkSetMTU(link, b.mtu); err != nil {
		return fmt.Errorf("set MTU of %s to %d: %w", link.Attrs().Name, b.mtu, err)
	}
	return nil
}

// configureDevice gives the device the node's private key and its listen
// port, unless it has them.
func (b *Backend) configureDevice(d *device) error {
	have, err := b.wg.Device(d.name)
	if err == nil && have.PrivateKey == b.private && have.ListenPort == d.port {
		return nil
	}
	return b.wg.Configure(d.name, b.private, d.port)
}

// Attach implements backend.Backend.
func (b *Backend) Attach() error {
	for _, d := range b.devs {
		link, err := b.h.LinkByName(d.name)
		if err != nil {
			return fmt.Errorf("WireGuard device %s: %w", d.name, err)
		}
		d.linkIndex = link.Attrs().Index
	}
	if b.private.IsZero() {
		if dev, err := b.wg.Device(b.devs[0].name); err == nil {
			b.private, b.public = dev.PrivateKey, dev.PublicKey
		}
	}
	return nil
}

// Configure implements backend.Backend: each device gets the network
// address of the node's subnet of each family it carries, as a /32
// (/128), and is brought up.
func (b *Backend) Configure(_ context.Context, own subnet.Lease) error {
	for _, d := range b.devs {
		link, err := b.h.LinkByIndex(d.linkIndex)
		if err != nil {
			return fmt.Errorf("WireGuard device %s: %w", d.name, err)
		}
		for _, fam := range []struct {
			on bool
			sn netip.Prefix
		}{{d.ipv4, own.Subnet}, {d.ipv6, own.IPv6Subnet}} {
			if !fam.on {
				continue
			}
			if !fam.sn.IsValid() {
				return fmt.Errorf("WireGuard device %s: this node's lease has no subnet of an address family it carries", d.name)
			}
			addr := netip.PrefixFrom(fam.sn.Masked().Addr(), fam.sn.Addr().BitLen())
			if err := ip.EnsureOnlyAddress(b.h, link, addr); err != nil {
				return err
			}
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			if err := b.h.LinkSetUp(link); err != nil {
				return fmt.Errorf("set %s up: %w", d.name, err)
			}
		}
	}
	return nil
}

// Implementation tells where the devices run: "kernel", or "userspace"
// when flanneld runs them.
func (b *Backend) Implementation() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, d := range b.devs {
		if d.user != nil {
			return ImplUserspace
		}
	}
	return ImplKernel
}
