package wireguard

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"k8s.io/klog/v2"
)

// userDevice is a WireGuard device run by flanneld (wireguard-go) on a TUN
// of the device's name, with the standard UAPI socket, so that wgctrl
// (flanneld's reconciler) and wg(8) configure and show it as they do a
// kernel device. It lives as long as flanneld.
type userDevice struct {
	name  string
	index int
	dev   *wgdevice.Device
	uapi  net.Listener
	// primed are the peers a handshake was started with (see prime).
	primed map[wgdevice.NoisePublicKey]bool
}

// newUserDevice creates the TUN (with its GSO/GRO offloads) and the
// device on it, and serves the UAPI socket.
func newUserDevice(name string, mtu int) (*userDevice, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN device %s: %w", name, err)
	}
	index, err := linkIndex(name)
	if err != nil {
		t.Close()
		return nil, err
	}
	logger := &wgdevice.Logger{
		Verbosef: func(format string, args ...any) { klog.V(4).InfoS(fmt.Sprintf(format, args...), "device", name) },
		Errorf: func(format string, args ...any) {
			klog.InfoS("WireGuard: "+fmt.Sprintf(format, args...), "device", name)
		},
	}
	dev := wgdevice.NewDevice(t, conn.NewDefaultBind(), logger) // closes t when closed
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("open the UAPI socket of %s: %w", name, err)
	}
	l, err := ipc.UAPIListen(name, f)
	if err != nil {
		f.Close()
		dev.Close()
		return nil, fmt.Errorf("listen on the UAPI socket of %s: %w", name, err)
	}
	u := &userDevice{name: name, index: index, dev: dev, uapi: l, primed: map[wgdevice.NoisePublicKey]bool{}}
	go u.serve()
	return u, nil
}

func linkIndex(name string) (int, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("look up created device %s: %w", name, err)
	}
	return iface.Index, nil
}

// serve answers the UAPI socket until it is closed.
func (u *userDevice) serve() {
	for {
		c, err := u.uapi.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				klog.V(2).InfoS("UAPI socket closed", "device", u.name, "err", err)
			}
			return
		}
		go u.dev.IpcHandle(c)
	}
}

// alive reports whether the device still runs (wireguard-go closes it
// when its TUN goes away).
func (u *userDevice) alive() bool {
	select {
	case <-u.dev.Wait():
		return false
	default:
		return true
	}
}

// close stops the device; its TUN, and with it the route and addresses,
// go away.
func (u *userDevice) close() {
	u.uapi.Close()
	u.dev.Close()
}

// prime starts a handshake with each peer added to the device since the
// last call. A new device (flanneld restarted) has no session with its
// peers, while they still have one with the device that went away: they
// keep sending with it, and their packets are dropped until they give up
// on it (after 15 s without an answer), unless this side starts a new
// handshake at once. A keepalive does that.
func (u *userDevice) prime() {
	cfg, err := u.dev.IpcGet()
	if err != nil {
		return
	}
	seen := map[wgdevice.NoisePublicKey]bool{}
	for _, line := range strings.Split(cfg, "\n") {
		hexKey, ok := strings.CutPrefix(line, "public_key=")
		if !ok {
			continue
		}
		var pk wgdevice.NoisePublicKey
		if b, err := hex.DecodeString(hexKey); err != nil || len(b) != len(pk) {
			continue
		} else {
			copy(pk[:], b)
		}
		seen[pk] = true
		if u.primed[pk] {
			continue
		}
		if peer := u.dev.LookupPeer(pk); peer != nil {
			peer.SendKeepalive()
			u.primed[pk] = true
		}
	}
	for pk := range u.primed {
		if !seen[pk] {
			delete(u.primed, pk)
		}
	}
}

// primeInterval is how often new peers of userspace devices are looked for.
const primeInterval = 250 * time.Millisecond

// Run implements backend.Runner: it keeps the userspace devices' sessions
// primed, and closes the devices when ctx ends (a kernel device stays).
func (b *Backend) Run(ctx context.Context) error {
	tick := time.NewTicker(primeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			b.closeUserDevices()
			return nil
		case <-tick.C:
			b.mu.Lock()
			for _, d := range b.devs {
				if d.user != nil && d.user.alive() {
					d.user.prime()
				}
			}
			b.mu.Unlock()
		}
	}
}

func (b *Backend) closeUserDevices() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, d := range b.devs {
		if d.user != nil {
			klog.InfoS("Stopping the userspace WireGuard device", "device", d.name)
			d.user.close()
			d.user = nil
		}
	}
}
