// Package wireguard is the wireguard backend, compatible with upstream
// flannel's: a WireGuard device flannel-wg (and flannel-wg-v6 in the
// default "separate" mode with IPv6) holding the node's subnet address and
// one route for the whole Network, and per peer a WireGuard peer whose
// allowed IPs are its subnets, so cryptokey routing picks the peer. The
// peers are entries of network.State like routes, owned and repaired by
// the reconciler. The device is the kernel's where the kernel has the
// wireguard link type, else a userspace one (wireguard-go) inside
// flanneld; both are configured through wgctrl.
package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
)

// Type is the backend's name in net-conf.json and in the backend-type annotation.
const Type = "wireguard"

// Device names, as upstream's.
const (
	DeviceName   = "flannel-wg"
	DeviceNameV6 = "flannel-wg-v6"
)

// Implementations of the device, the values of the metrics' label.
const (
	ImplKernel    = "kernel"
	ImplUserspace = "userspace"
)

// device is one WireGuard device: the families it carries, its port, and
// its kernel index once set up.
type device struct {
	name       string
	port       int
	ipv4, ipv6 bool
	linkIndex  int
	user       *userDevice // the userspace device flanneld runs, if it runs one
}

// Backend is the wireguard backend.
type Backend struct {
	opts    Options
	ext     *ip.ExternalInterface
	h       *netlink.Handle
	wg      *kernel.WGClient
	keyFile string
	mtu     int
	network netip.Prefix // IPv4 Network (invalid when IPv4 is off)
	net6    netip.Prefix // IPv6Network (invalid when IPv6 is off)
	devs    []*device    // IPv4 (or the single device) first

	private, public kernel.WGKey // loaded by Setup

	// mu guards the devices' userspace parts and the peers' keys, shared
	// by the sync loop (Setup, SetPeer) and Run.
	mu sync.Mutex
	// known are the public keys of the programmed peers, by name;
	// unprimed those not yet primed on the userspace devices (see prime).
	known, unprimed map[string][]primeTarget
	// primeWake wakes Run when peers are to be primed.
	primeWake chan struct{}
	// changed reports someone else's changes to a userspace device.
	changed chan struct{}
}

var (
	_ backend.Backend        = (*Backend)(nil)
	_ backend.MTUFollower    = (*Backend)(nil)
	_ backend.Runner         = (*Backend)(nil)
	_ backend.PeerTracker    = (*Backend)(nil)
	_ backend.ChangeNotifier = (*Backend)(nil)
)

// Changed implements backend.ChangeNotifier: a value arrives after another
// process changed a userspace device's configuration (kernel devices have
// no such notification; full passes repair them).
func (b *Backend) Changed() <-chan struct{} { return b.changed }

func (b *Backend) notifyChanged() {
	select {
	case b.changed <- struct{}{}:
	default:
	}
}

// New validates the options; it does not touch the kernel.
func New(p backend.Params) (backend.Backend, error) {
	opts, err := ParseOptions(p.Config.Backend)
	if err != nil {
		return nil, err
	}
	ipv4, ipv6 := p.Config.EnableIPv4, p.Config.EnableIPv6
	if !ipv4 && !ipv6 {
		return nil, errors.New("wireguard: neither IPv4 nor IPv6 is enabled")
	}
	if ipv4 && !p.ExtIface.ExtAddr.IsValid() {
		return nil, fmt.Errorf("wireguard: interface %s has no IPv4 address to advertise", p.ExtIface.Name)
	}
	if ipv6 && !p.ExtIface.ExtV6Addr.IsValid() {
		return nil, fmt.Errorf("wireguard: interface %s has no global IPv6 address to advertise", p.ExtIface.Name)
	}
	switch {
	case opts.Mode == ModeIPv4 && !ipv4:
		return nil, errors.New(`wireguard: Mode "ipv4" needs IPv4 (EnableIPv4) for the tunnel endpoints`)
	case opts.Mode == ModeIPv6 && !ipv6:
		return nil, errors.New(`wireguard: Mode "ipv6" needs IPv6 (EnableIPv6) for the tunnel endpoints`)
	}
	mtu, err := deviceMTU(underlayMTU(opts, p.ExtIface.MTU))
	if err != nil {
		return nil, fmt.Errorf("wireguard: interface %s: %w", p.ExtIface.Name, err)
	}
	b := &Backend{opts: opts, ext: p.ExtIface, h: p.Handle, wg: &kernel.WGClient{}, keyFile: KeyFile(), mtu: mtu,
		known: map[string][]primeTarget{}, unprimed: map[string][]primeTarget{}, primeWake: make(chan struct{}, 1),
		changed: make(chan struct{}, 1)}
	if ipv4 {
		b.network = p.Config.Network.Masked()
	}
	if ipv6 {
		b.net6 = p.Config.IPv6Network.Masked()
	}
	if opts.Mode == ModeSeparate {
		if ipv4 {
			b.devs = append(b.devs, &device{name: DeviceName, port: opts.ListenPort, ipv4: true})
		}
		if ipv6 {
			b.devs = append(b.devs, &device{name: DeviceNameV6, port: opts.ListenPortV6, ipv6: true})
		}
	} else {
		b.devs = []*device{{name: DeviceName, port: opts.ListenPort, ipv4: ipv4, ipv6: ipv6}}
	}
	return b, nil
}

// underlayMTU is the MTU the devices are sized for: the MTU option if
// given, else the external interface's, ext.
func underlayMTU(o Options, ext int) int {
	if o.MTU > 0 {
		return o.MTU
	}
	return ext
}

// deviceMTU is the devices' MTU over an underlay MTU: 80 bytes less, for
// both address families, as upstream.
func deviceMTU(underlay int) (int, error) {
	if mtu := underlay - overhead; mtu >= minMTU {
		return mtu, nil
	}
	return 0, fmt.Errorf("MTU %d leaves only %d bytes for pods after %d bytes of WireGuard overhead", underlay, underlay-overhead, overhead)
}

// SetUnderlayMTU implements backend.MTUFollower.
func (b *Backend) SetUnderlayMTU(ext int) error {
	mtu, err := deviceMTU(underlayMTU(b.opts, ext))
	if err != nil {
		return fmt.Errorf("wireguard: %w", err)
	}
	b.mtu = mtu
	return nil
}

// MTU implements backend.Backend.
func (b *Backend) MTU() int { return b.mtu }

// Base implements backend.Backend: flanneld owns the WireGuard devices
// (every peer on them not desired goes) and one route per Network through
// the device carrying its family.
func (b *Backend) Base() network.State {
	var st network.State
	for _, d := range b.devs {
		st.OwnedLinks = append(st.OwnedLinks, d.linkIndex)
		if d.linkIndex <= 0 {
			continue
		}
		if d.ipv4 && b.network.IsValid() {
			st.Routes = append(st.Routes, kernel.Route{Dst: b.network, LinkIndex: d.linkIndex})
		}
		if d.ipv6 && b.net6.IsValid() {
			st.Routes = append(st.Routes, kernel.Route{Dst: b.net6, LinkIndex: d.linkIndex})
		}
	}
	return st
}

// deviceFor returns the device carrying the address family.
func (b *Backend) deviceFor(ipv6 bool) *device {
	for _, d := range b.devs {
		if (ipv6 && d.ipv6) || (!ipv6 && d.ipv4) {
			return d
		}
	}
	return nil
}

// advertised returns the backend data of the device carrying the family.
func (b *Backend) advertised(ipv6 bool) (json.RawMessage, error) {
	d := b.deviceFor(ipv6)
	if d == nil {
		return nil, nil
	}
	return json.Marshal(Data{PublicKey: b.public.String(), Port: d.port})
}
