package udp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

const (
	// readSlots is the most frames (virtio-net header and packet) read
	// from the TUN device per round, sent with one sendmmsg.
	readSlots = 16
	// frameSize holds the largest frame: a 64 KiB super-packet.
	frameSize = vnetHdrLen + 1<<16
	// recvBatch is the most receives of one recvmmsg; each may hold up to
	// 64 KiB of datagrams coalesced by UDP GRO.
	recvBatch = 16
	// recvBufSize is a receive buffer: room for a virtio-net header, then
	// the largest coalesced receive.
	recvBufSize = vnetHdrLen + 1<<16
	// sendMsgs and sendIovecs bound one sendmmsg: a round's frames, cut
	// into at most 64 datagrams per message, two buffers per datagram.
	sendMsgs   = 256
	sendIovecs = 4096
	// errorBackoff paces a loop whose system calls keep failing.
	errorBackoff = 10 * time.Millisecond
)

// tunDevice is flannel0 as flanneld holds it: a non-blocking descriptor of
// the TUN device, which the forwarding loop polls.
type tunDevice struct {
	fd    int
	index int
}

// openTUN creates the TUN device name, or attaches to the one a previous
// flanneld left (it is persistent): IFF_TUN|IFF_NO_PI, so what goes
// through it is bare IPv4 packets, and IFF_VNET_HDR with checksum and TCP
// segmentation offloads, so that each packet comes with a virtio-net
// header and TCP can come as 64 KiB super-packets (offload.go). Without
// the offloads (an old kernel), packets come one by one.
func openTUN(name string) (*tunDevice, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	// Persistent: the device, its address and route stay while flanneld
	// restarts, and the next flanneld attaches to it.
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4); err != nil {
		klog.InfoS("The TUN device takes no offloads; packets go through one by one", "device", name, "err", err)
	}
	return &tunDevice{fd: fd}, nil
}

// sys is the forwarder's share of the kernel: the socket and an eventfd,
// made once by Setup, and the current TUN device, which Setup replaces
// when someone deletes it. The forwarding loop owns the devices it was
// given: it closes a replaced one.
type sys struct {
	conn *udpConn
	wake int // eventfd: the loop wakes up when it is written
	// errorLog rate-limits the logging of failing system calls.
	errorLog struct{ read, recv, send, write sometimes }

	mu      sync.Mutex
	dev     *tunDevice
	retired []*tunDevice
}

// open makes the socket, bound to addr, and the eventfd, once.
func (s *sys) open(addr netip.AddrPort) error {
	if s.conn != nil {
		return nil
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	conn, err := listenUDP(addr)
	if err != nil {
		unix.Close(wake)
		return fmt.Errorf("udp backend: listen on %s: %w", addr, err)
	}
	s.conn, s.wake = conn, wake
	return nil
}

// device returns the current TUN device (nil before Setup).
func (s *sys) device() *tunDevice {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dev
}

// setDevice makes d the current device and wakes the loop up.
func (s *sys) setDevice(d *tunDevice) {
	s.mu.Lock()
	if s.dev != nil {
		s.retired = append(s.retired, s.dev)
	}
	s.dev = d
	s.mu.Unlock()
	s.signal()
}

// takeDevice returns the current device and the replaced ones to close.
func (s *sys) takeDevice() (*tunDevice, []*tunDevice) {
	s.mu.Lock()
	defer s.mu.Unlock()
	retired := s.retired
	s.retired = nil
	return s.dev, retired
}

// signal wakes the forwarding loop up.
func (s *sys) signal() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(s.wake, one[:])
}

// Forward implements backend.Forwarder. One loop moves packets both ways,
// in the calling goroutine: it sleeps in poll(2) on flannel0 and the
// socket (outside Go's network poller, so that a packet wakes only the
// thread that forwards it) and handles what is there in batches. When ctx
// ends the loop stops and the socket and device are closed: the udp
// datapath lives in flanneld and stops with it.
func (b *Backend) Forward(ctx context.Context) error {
	f := b.fwd
	if f.conn == nil {
		return errors.New("udp backend: Forward before Setup")
	}
	// The loop keeps its thread: the kernel wakes that thread, and its
	// caches stay warm.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	stop := context.AfterFunc(ctx, f.signal)
	defer stop()
	err := f.loop(ctx)
	f.conn.close()
	dev, retired := f.takeDevice()
	for _, d := range append(retired, dev) {
		if d != nil {
			unix.Close(d.fd)
		}
	}
	return err
}

// sometimes says when to log a repeated failure again.
type sometimes struct{ next atomic.Int64 }

// ok says whether it is time to log again (at most every dropLogInterval).
func (s *sometimes) ok() bool {
	now, next := time.Now().UnixNano(), s.next.Load()
	return now >= next && s.next.CompareAndSwap(next, now+int64(dropLogInterval))
}

// loop is the forwarding loop; see Forward.
func (f *forwarder) loop(ctx context.Context) error {
	w := &tunWriter{f: f}
	eg := &egressLoop{f: f, w: w, e: newEgress(f), out: newOutput(f), slots: make([][]byte, readSlots)}
	for i := range eg.slots {
		eg.slots[i] = make([]byte, frameSize)
	}
	in := &ingressLoop{f: f, r: newReceiver(recvBatch, recvBufSize), co: &coalescer{write: w.write}}
	in.deliver = in.co.add
	var (
		dev    *tunDevice
		broken bool // dev was deleted: wait for its replacement
		pfds   [3]unix.PollFd
	)
	for ctx.Err() == nil {
		cur, retired := f.takeDevice()
		for _, d := range retired {
			unix.Close(d.fd)
		}
		if cur != dev {
			dev, broken = cur, false
			w.dev = dev
		}
		pfds[0] = unix.PollFd{Fd: int32(f.wake), Events: unix.POLLIN}
		pfds[1] = unix.PollFd{Fd: int32(f.conn.fd), Events: unix.POLLIN}
		n := 2
		if dev != nil && !broken {
			pfds[2] = unix.PollFd{Fd: int32(dev.fd), Events: unix.POLLIN}
			n = 3
		}
		if _, err := unix.Poll(pfds[:n], -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("poll: %w", err)
		}
		if pfds[0].Revents != 0 {
			var b [8]byte
			_, _ = unix.Read(f.wake, b[:])
		}
		if pfds[1].Revents != 0 {
			if err := in.receive(ctx); err != nil {
				return err
			}
		}
		if n == 3 && pfds[2].Revents != 0 {
			if !eg.read(ctx, dev) {
				klog.V(2).InfoS("TUN device closed; waiting for its replacement", "device", DeviceName)
				broken = true
				w.dev = nil
			}
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// egressLoop is the TUN-to-UDP half of the loop.
type egressLoop struct {
	f     *forwarder
	w     *tunWriter
	e     *egress
	out   *output
	slots [][]byte
}

// read reads a round of frames from dev, at most readSlots and no more
// after a super-packet, and sends them. It reports false when the device
// is gone.
func (l *egressLoop) read(ctx context.Context, dev *tunDevice) bool {
	e := l.e
	e.segLimit = 1
	if l.f.conn.gso.Load() {
		e.segLimit = maxSegments
	}
	e.begin()
	var readErr error
	for i := 0; i < len(l.slots) && e.room(); i++ {
		n, err := unix.Read(dev.fd, l.slots[i])
		if err != nil {
			if err != unix.EAGAIN && err != unix.EINTR {
				readErr = err
			}
			break
		}
		frame := l.slots[i][:n]
		e.take(frame)
		if n >= vnetHdrLen && frame[1] != vnetGSONone {
			break // a super-packet fills a round
		}
	}
	e.end()
	l.out.send(e)
	for _, r := range e.replies {
		l.w.write(r)
	}
	switch readErr {
	case nil:
	case unix.EBADFD, unix.EBADF:
		return false
	default:
		l.f.drops.add(dropInvalid, 1, 0, nil)
		if l.f.errorLog.read.ok() {
			klog.ErrorS(readErr, "Reading from the TUN device failed", "device", DeviceName)
		}
		sleep(ctx, errorBackoff)
	}
	return true
}

// output sends an egress's batches with sendmmsg.
type output struct {
	f     *forwarder
	s     *sender
	retry *sender // a refused UDP GSO send, one datagram at a time
}

func newOutput(f *forwarder) *output {
	return &output{f: f, s: newSender(sendMsgs, sendIovecs), retry: newSender(maxSegments, 2*maxSegments)}
}

func (o *output) send(e *egress) {
	o.s.reset()
	for i := range e.batches {
		b := &e.batches[i]
		pkts := e.packets(b)
		seg := 0
		if len(pkts) > 1 {
			seg = b.segSize
		}
		if !o.s.add(b.to.addr, pkts, seg) {
			o.f.conn.send(o.s, o.failed)
			o.s.reset()
			o.s.add(b.to.addr, pkts, seg)
		}
	}
	o.f.conn.send(o.s, o.failed)
	o.s.reset()
}

// failed handles a message the kernel refused: a segmented send is redone
// one datagram at a time (and segmentation given up for good when the
// kernel cannot do it), else its packets are counted as dropped.
func (o *output) failed(i int, err error) {
	pkts := o.s.pkts[i]
	to := addrPortOf(&o.s.names[i])
	if len(pkts) > 1 && isGSOError(err) {
		if errors.Is(err, unix.EIO) && o.f.conn.gso.CompareAndSwap(true, false) {
			klog.InfoS("UDP segmentation offload does not work on this node; sending one datagram per packet", "err", err)
		}
		o.retry.reset()
		for j := range pkts {
			o.retry.add(to, pkts[j:j+1], 0)
		}
		o.f.conn.send(o.retry, o.failedRetry)
		o.retry.reset()
		return
	}
	o.dropped(pkts, to, err)
}

func (o *output) failedRetry(i int, err error) {
	o.dropped(o.retry.pkts[i], addrPortOf(&o.retry.names[i]), err)
}

func (o *output) dropped(pkts []outPacket, to fmt.Stringer, err error) {
	var first []byte
	if len(pkts) > 0 {
		first = pkts[0].head
	}
	o.f.drops.add(dropSendError, len(pkts), 0, first)
	if o.f.errorLog.send.ok() {
		klog.ErrorS(err, "Sending to a peer failed", "peer", to)
	}
}

// ingressLoop is the UDP-to-TUN half of the loop.
type ingressLoop struct {
	f       *forwarder
	r       *receiver
	co      *coalescer
	deliver func(buf []byte, off, n int)
}

// receive takes what the socket holds (up to recvBatch receives), checks
// it and writes it to flannel0, coalesced.
func (l *ingressLoop) receive(ctx context.Context) error {
	n, err := l.f.conn.receive(l.r)
	switch {
	case errors.Is(err, errConnClosed):
		if ctx.Err() != nil {
			return nil
		}
		return err
	case errors.Is(err, unix.EAGAIN):
		return nil
	case err != nil:
		if l.f.errorLog.recv.ok() {
			klog.ErrorS(err, "Receiving datagrams failed")
		}
		sleep(ctx, errorBackoff)
		return nil
	}
	for i := range n {
		length, segSize, from, truncated := l.r.message(i)
		if truncated {
			l.f.drops.add(dropInvalid, 1, from, nil)
			continue
		}
		l.f.admit(l.r.bufs[i], vnetHdrLen, length, segSize, from, l.deliver)
	}
	l.co.flush()
	return nil
}

// tunWriter writes frames (virtio-net header and packet) to the current
// TUN device.
type tunWriter struct {
	f   *forwarder
	dev *tunDevice // nil while there is none
}

func (w *tunWriter) write(frame []byte) {
	if w.dev == nil {
		w.f.drops.add(dropWriteError, 1, 0, nil)
		return
	}
	for {
		_, err := unix.Write(w.dev.fd, frame)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			w.f.drops.add(dropWriteError, 1, 0, frame[vnetHdrLen:])
			if w.f.errorLog.write.ok() {
				klog.ErrorS(err, "Writing to the TUN device failed", "device", DeviceName)
			}
		}
		return
	}
}
