package wireguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// userDevice is a WireGuard device run by flanneld (wireguard-go) on a TUN
// of the device's name, with the standard UAPI socket, so that wgctrl
// (flanneld's reconciler) and wg(8) configure and show it as they do a
// kernel device. The device runs as long as flanneld; its TUN is
// persistent: it stays, with its address and routes, while flanneld
// restarts, and the next flanneld attaches to it. Meanwhile pod traffic to
// other nodes is dropped on it rather than sent unencrypted by another
// route, and the restart is shorter by a device's removal and creation.
type userDevice struct {
	name  string
	index int
	dev   *wgdevice.Device
	uapi  net.Listener
	// changed is called after another process (wg set, ...) changed the
	// device's configuration through the UAPI socket.
	changed func()
}

// newUserDevice creates the TUN (with its GSO/GRO offloads), or attaches
// to the persistent one a previous flanneld left, makes it persistent, and
// runs the device on it and serves the UAPI socket.
func newUserDevice(name string, mtu int, changed func()) (*userDevice, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN device %s: %w", name, err)
	}
	if err := setPersistent(t); err != nil {
		t.Close()
		return nil, fmt.Errorf("make TUN device %s persistent: %w", name, err)
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
	u := &userDevice{name: name, index: index, dev: dev, uapi: l, changed: changed}
	go u.serve()
	return u, nil
}

// setPersistent keeps the TUN after its file is closed (TUNSETPERSIST).
func setPersistent(t tun.Device) error {
	nt, ok := t.(interface{ File() *os.File })
	if !ok {
		return errors.New("no file")
	}
	raw, err := nt.File().SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := raw.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, 1) }); err != nil {
		return err
	}
	return ierr
}

func linkIndex(name string) (int, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("look up created device %s: %w", name, err)
	}
	return iface.Index, nil
}

// serve answers the UAPI socket until it is closed. A "set" operation from
// another process than flanneld (whose own configuration arrives through
// wgctrl on the same socket) is reported through changed, once handled:
// WireGuard has no change notifications, so this is how someone's `wg set`
// is repaired at once rather than at the next full pass.
func (u *userDevice) serve() {
	for {
		c, err := u.uapi.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				klog.V(2).InfoS("UAPI socket closed", "device", u.name, "err", err)
			}
			return
		}
		go u.handle(c)
	}
}

func (u *userDevice) handle(c net.Conn) {
	if peerPID(c) == os.Getpid() {
		u.dev.IpcHandle(c)
		return
	}
	op := &opSniffer{Conn: c}
	u.dev.IpcHandle(op)
	if op.isSet() && u.changed != nil {
		klog.InfoS("WireGuard device configured by another process", "device", u.name)
		u.changed()
	}
}

// peerPID is the process at the other end of a UAPI connection (0 if
// unknown).
func peerPID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	_ = raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// opSniffer keeps the first bytes a UAPI client sends: its operation,
// "get=1" or "set=1".
type opSniffer struct {
	net.Conn
	head []byte
}

func (o *opSniffer) Read(p []byte) (int, error) {
	n, err := o.Conn.Read(p)
	if need := len("set=") - len(o.head); need > 0 && n > 0 {
		o.head = append(o.head, p[:min(n, need)]...)
	}
	return n, err
}

func (o *opSniffer) isSet() bool { return string(o.head) == "set=" }

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

// close stops the device; its TUN stays (persistent), without a datapath.
func (u *userDevice) close() {
	u.uapi.Close()
	u.dev.Close()
}

// prime starts a handshake with the peer of public key k, once the
// reconciler has added it to the device, and reports whether it has. A new
// device (flanneld restarted) has no session with its peers, while they
// still have one with the device that went away: they keep sending with
// it, and their packets are dropped until they give up on it (after 15 s
// without an answer), unless this side starts a new handshake at once. A
// keepalive does that.
func (u *userDevice) prime(k kernel.WGKey) bool {
	peer := u.dev.LookupPeer(wgdevice.NoisePublicKey(k))
	if peer == nil {
		return false
	}
	peer.SendKeepalive()
	return true
}

// While peers wait to be primed, Run looks for them on their devices after
// primeFirst, doubling up to primeMax (the reconciler adds a peer within
// milliseconds of SetPeer, and every millisecond it waits is a millisecond
// of its packets to this node dropped after a restart; one the kernel
// refuses may wait long); otherwise it sleeps until SetPeer wakes it.
const (
	primeFirst = 10 * time.Millisecond
	primeMax   = time.Second
)

// SetPeer implements backend.PeerTracker: the keys of a peer the sync loop
// programs are primed on the userspace devices (prime) once they are
// there; each tick looks only at the keys not primed yet.
func (b *Backend) SetPeer(name string, lease *subnet.Lease) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.unprimed, name)
	delete(b.known, name)
	if lease == nil {
		return
	}
	fams, err := b.parsePeer(*lease)
	if err != nil {
		return
	}
	var keys []primeTarget
	for _, f := range fams {
		keys = append(keys, primeTarget{b.deviceFor(f.IPv6), f.key})
	}
	b.known[name] = keys
	b.unprimed[name] = slices.Clone(keys)
	select {
	case b.primeWake <- struct{}{}:
	default:
	}
}

// primeTarget is a peer's public key on the device that has it.
type primeTarget struct {
	dev *device
	key kernel.WGKey
}

// reprimeAll marks every known peer unprimed: a new userspace device has
// no session with anyone. Callers hold b.mu.
func (b *Backend) reprimeAll() {
	for name, keys := range b.known {
		b.unprimed[name] = slices.Clone(keys)
	}
	select {
	case b.primeWake <- struct{}{}:
	default:
	}
}

// primePending primes the unprimed keys the reconciler has put on their
// devices (kernel devices need no priming: they outlive flanneld). Callers
// hold b.mu.
func (b *Backend) primePending() {
	for name, keys := range b.unprimed {
		keys = slices.DeleteFunc(keys, func(p primeTarget) bool {
			u := p.dev.user
			return u == nil || (u.alive() && u.prime(p.key))
		})
		if len(keys) == 0 {
			delete(b.unprimed, name)
		} else {
			b.unprimed[name] = keys
		}
	}
}

// Run implements backend.Runner: it keeps the userspace devices' sessions
// primed, and stops them when ctx ends (their TUNs stay, as a kernel
// device does).
func (b *Backend) Run(ctx context.Context) error {
	var retry <-chan time.Time // set while peers wait to be primed
	delay := primeFirst
	for {
		select {
		case <-ctx.Done():
			b.closeUserDevices()
			return nil
		case <-b.primeWake:
			delay = primeFirst
		case <-retry:
			delay = min(2*delay, primeMax)
		}
		b.mu.Lock()
		b.primePending()
		waiting := len(b.unprimed) > 0
		b.mu.Unlock()
		retry = nil
		if waiting {
			retry = time.After(delay)
		}
	}
}

// closeUserDevices stops the userspace devices (a millisecond each: their
// TUNs stay, for the next flanneld to attach to).
func (b *Backend) closeUserDevices() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, d := range b.devs {
		if u := d.user; u != nil {
			klog.InfoS("Stopping the userspace WireGuard device", "device", d.name)
			u.close()
			d.user = nil
		}
	}
}
