package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flanneld/flanneld/ip"
)

// WGSocketDir is where userspace WireGuard devices listen for their
// configuration (the UAPI sockets wg(8) and wgctrl use).
const WGSocketDir = "/var/run/wireguard"

// WGClient configures WireGuard devices through wgctrl, which talks to
// both implementations the same way: the kernel's (generic netlink) and a
// userspace device's (its UAPI socket in WGSocketDir). It is opened on
// first use, so nodes without WireGuard never open it.
type WGClient struct {
	mu sync.Mutex
	c  *wgctrl.Client
}

// WGDevice is a WireGuard device's own configuration.
type WGDevice struct {
	PrivateKey, PublicKey WGKey
	ListenPort            int
}

func (w *WGClient) client() (*wgctrl.Client, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.c == nil {
		c, err := wgctrl.New()
		if err != nil {
			return nil, fmt.Errorf("open WireGuard control: %w", err)
		}
		w.c = c
	}
	return w.c, nil
}

// device reads a device; the error wraps os.ErrNotExist when name is not
// a WireGuard device.
func (w *WGClient) device(name string) (*wgtypes.Device, error) {
	c, err := w.client()
	if err != nil {
		return nil, err
	}
	d, err := c.Device(name)
	if err != nil {
		return nil, fmt.Errorf("read WireGuard device %s: %w", name, err)
	}
	return d, nil
}

// Device returns the configuration of the WireGuard device name.
func (w *WGClient) Device(name string) (WGDevice, error) {
	d, err := w.device(name)
	if err != nil {
		return WGDevice{}, err
	}
	return WGDevice{PrivateKey: WGKey(d.PrivateKey), PublicKey: WGKey(d.PublicKey), ListenPort: d.ListenPort}, nil
}

// Configure sets the device's private key and listen port, leaving its
// peers alone.
func (w *WGClient) Configure(name string, private WGKey, port int) error {
	c, err := w.client()
	if err != nil {
		return err
	}
	key := wgtypes.Key(private)
	if err := c.ConfigureDevice(name, wgtypes.Config{PrivateKey: &key, ListenPort: &port}); err != nil {
		return fmt.Errorf("configure WireGuard device %s: %w", name, err)
	}
	return nil
}

// Peers returns the peers of the device name, whose index is linkIndex.
func (w *WGClient) Peers(name string, linkIndex int) ([]WGPeer, error) {
	d, err := w.device(name)
	if err != nil {
		return nil, err
	}
	out := make([]WGPeer, 0, len(d.Peers))
	for _, p := range d.Peers {
		out = append(out, peerFromWgtypes(linkIndex, p))
	}
	return out, nil
}

func peerFromWgtypes(linkIndex int, p wgtypes.Peer) WGPeer {
	prefixes := make([]netip.Prefix, 0, len(p.AllowedIPs))
	for _, n := range p.AllowedIPs {
		prefixes = append(prefixes, ip.PrefixFromIPNet(&n))
	}
	var ep netip.AddrPort
	if p.Endpoint != nil {
		ep = p.Endpoint.AddrPort()
		ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	}
	return WGPeer{
		LinkIndex:  linkIndex,
		PublicKey:  WGKey(p.PublicKey),
		Endpoint:   ep,
		AllowedIPs: NewPrefixSet(prefixes...),
		Keepalive:  int(p.PersistentKeepaliveInterval / time.Second),
		PSK:        WGKey(p.PresharedKey),
	}
}

// SetPeer adds or updates a peer of the device name.
func (w *WGClient) SetPeer(name string, p WGPeer) error {
	c, err := w.client()
	if err != nil {
		return err
	}
	psk := wgtypes.Key(p.PSK)
	keepalive := time.Duration(p.Keepalive) * time.Second
	pc := wgtypes.PeerConfig{
		PublicKey:                   wgtypes.Key(p.PublicKey),
		PresharedKey:                &psk,
		PersistentKeepaliveInterval: &keepalive,
		ReplaceAllowedIPs:           true,
	}
	if p.Endpoint.IsValid() {
		pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
	}
	for _, pr := range p.AllowedIPs.Prefixes() {
		pc.AllowedIPs = append(pc.AllowedIPs, *ip.IPNetFromPrefix(pr))
	}
	if err := c.ConfigureDevice(name, wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}); err != nil {
		return fmt.Errorf("set WireGuard peer %s on %s: %w", p, name, err)
	}
	return nil
}

// DelPeer removes a peer of the device name.
func (w *WGClient) DelPeer(name string, p WGPeer) error {
	c, err := w.client()
	if err != nil {
		return err
	}
	pc := wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey), Remove: true}
	if err := c.ConfigureDevice(name, wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}); err != nil {
		return fmt.Errorf("delete WireGuard peer %s on %s: %w", p, name, err)
	}
	return nil
}

// IsWireGuard reports whether link is a WireGuard device: a kernel one, or
// a userspace one (a TUN device with a UAPI socket of its name).
func IsWireGuard(link netlink.Link) bool {
	if link.Type() == "wireguard" {
		return true
	}
	fi, err := os.Stat(filepath.Join(WGSocketDir, link.Attrs().Name+".sock"))
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// wgDevice returns the name of the WireGuard device linkIndex, or "" when
// the link is not one.
func (k *Netlink) wgDevice(linkIndex int) (string, error) {
	link, err := k.h.LinkByIndex(linkIndex)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return "", nil
		}
		return "", fmt.Errorf("look up link %d: %w", linkIndex, err)
	}
	if !IsWireGuard(link) {
		return "", nil
	}
	return link.Attrs().Name, nil
}

// ListWGPeers implements Interface.
func (k *Netlink) ListWGPeers(linkIndex int) ([]WGPeer, error) {
	name, err := k.wgDevice(linkIndex)
	if err != nil || name == "" {
		return nil, err
	}
	peers, err := k.wg.Peers(name, linkIndex)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return peers, err
}

// SetWGPeer implements Interface.
func (k *Netlink) SetWGPeer(p WGPeer) error {
	name, err := k.wgDevice(p.LinkIndex)
	if err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("set WireGuard peer %s: link %d is not a WireGuard device", p, p.LinkIndex)
	}
	return k.wg.SetPeer(name, p)
}

// DelWGPeer implements Interface.
func (k *Netlink) DelWGPeer(p WGPeer) error {
	name, err := k.wgDevice(p.LinkIndex)
	if err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("delete WireGuard peer %s: %w", p, ErrNotFound)
	}
	return k.wg.DelPeer(name, p)
}
