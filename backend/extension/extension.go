// Package extension is the extension backend (upstream's "extension"): the
// node leases a subnet and flanneld programs nothing itself; shell commands
// from the Backend object do whatever the datapath needs:
//
//   - PreStartupCommand runs in Setup, before the lease is acquired; its
//     trimmed stdout is advertised as backend-data, as a JSON string.
//   - PostStartupCommand runs once the lease is known (Configure), with
//     NETWORK, SUBNET, IPV6SUBNET, PUBLIC_IP and PUBLIC_IPV6 of this node.
//   - SubnetAddCommand runs when a peer is added or its lease changes, with
//     the peer's backend-data (the JSON string, decoded) and a newline on
//     stdin and SUBNET, IPV6SUBNET, PUBLIC_IP and PUBLIC_IPV6 of the peer.
//   - SubnetRemoveCommand runs, likewise, when a peer goes away.
//
// Each command runs with `sh -c` and a timeout. The peer commands run in the
// background, one at a time, in order for each peer (only the latest state
// of a peer is kept: a peer added and removed before its command ran needs
// none); a failed one is retried with a backoff until it succeeds or the
// peer's state changes again.
package extension

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/subnet"
)

// Type is the backend's name in net-conf.json and in the backend-type annotation.
const Type = "extension"

const (
	// DefaultTimeout bounds each command (upstream has no timeout, and no
	// option for one).
	DefaultTimeout = 30 * time.Second
	// maxOutput bounds what is kept of a command's stdout and of its
	// stderr; a PreStartupCommand whose stdout is longer fails.
	maxOutput = 64 << 10
	// maxLogged bounds what is logged of a command's stdout and stderr.
	maxLogged = 1 << 10
	// Retries of a failed peer command wait from minBackoff, doubling, to
	// maxBackoff.
	minBackoff = time.Second
	maxBackoff = time.Minute
)

// Options are the extension backend's keys in the Backend object.
type Options struct {
	PreStartupCommand   string
	PostStartupCommand  string
	SubnetAddCommand    string
	SubnetRemoveCommand string
}

// Backend is the extension backend.
type Backend struct {
	// Deviceless: no device, the node's public IPs advertised, the
	// external interface's MTU.
	backend.Deviceless
	opts    Options
	network netip.Prefix
	timeout time.Duration

	mu        sync.Mutex
	data      json.RawMessage  // PreStartupCommand's output; nil before Setup ran it
	peers     map[string]*peer // peers whose commands are pending or ran
	wake      chan struct{}    // tells Forward that peers changed
	backoffFn func(prev time.Duration) time.Duration
}

var (
	_ backend.Backend     = (*Backend)(nil)
	_ backend.PeerTracker = (*Backend)(nil)
	_ backend.Forwarder   = (*Backend)(nil)
	_ backend.MTUFollower = (*Backend)(nil)
)

// peerInfo is what the peer commands get of a peer.
type peerInfo struct {
	subnet, subnet6 netip.Prefix
	pub, pub6       netip.Addr
	data            string // the peer's backend-data, decoded
}

// peer is the command state of one peer.
type peer struct {
	want    *peerInfo // the peer's lease; nil when it is gone
	ran     *peerInfo // what the last SubnetAddCommand ran with; nil if none did
	synced  bool      // the commands for want have run successfully
	gen     uint64    // counts the changes of want
	retryAt time.Time // when a failed command may run again
	backoff time.Duration
}

// New returns the backend with its options; it runs nothing.
func New(p backend.Params) (backend.Backend, error) {
	var o Options
	if err := backend.DecodeOptions(Type, p.Config.Backend, &o); err != nil {
		return nil, err
	}
	if p.ExtIface == nil {
		return nil, fmt.Errorf("extension: no external interface")
	}
	return &Backend{
		Deviceless: backend.NewDeviceless(Type, p),
		opts:       o,
		network:    p.Config.Network,
		timeout:    DefaultTimeout,
		peers:      map[string]*peer{},
		wake:       make(chan struct{}, 1),
		backoffFn: func(prev time.Duration) time.Duration {
			return min(max(2*prev, minBackoff), maxBackoff)
		},
	}, nil
}

// Setup implements backend.Backend: it runs PreStartupCommand (once per
// process; a later Setup, after an MTU change, reuses its output) and
// advertises its output as backend-data, with the node's public IPs.
func (b *Backend) Setup(ctx context.Context, prev *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	attrs, err := b.Deviceless.Setup(ctx, prev)
	if err != nil || b.opts.PreStartupCommand == "" {
		return attrs, err
	}
	b.mu.Lock()
	data := b.data
	b.mu.Unlock()
	if data == nil {
		out, err := b.run(ctx, "PreStartupCommand", b.opts.PreStartupCommand, nil, "", true)
		if err != nil {
			return subnet.LeaseAttrs{}, err
		}
		if data, err = json.Marshal(out); err != nil {
			return subnet.LeaseAttrs{}, err
		}
		b.mu.Lock()
		b.data = data
		b.mu.Unlock()
	}
	attrs.BackendData = data
	return attrs, nil
}

// Configure implements backend.Backend: it runs PostStartupCommand with
// the node's lease in its environment; its failure stops flanneld.
func (b *Backend) Configure(ctx context.Context, own subnet.Lease) error {
	if b.opts.PostStartupCommand == "" {
		return nil
	}
	env := []string{"NETWORK=" + ip.Text(b.network)}
	env = append(env, leaseEnv(own.Subnet, own.IPv6Subnet, own.Attrs.PublicIP, own.Attrs.PublicIPv6)...)
	_, err := b.run(ctx, "PostStartupCommand", b.opts.PostStartupCommand, env, "", false)
	return err
}

// PeerState implements backend.Backend: nothing is programmed for a peer;
// a peer of another backend, or whose backend-data is not a JSON string
// (upstream's extension ignores both), is skipped.
func (b *Backend) PeerState(peer subnet.Lease) (network.State, error) {
	if err := backend.CheckType(peer, Type); err != nil {
		return network.State{}, err
	}
	if _, err := decodeData(peer.Attrs.BackendData); err != nil {
		return network.State{}, fmt.Errorf("%w: peer %s: backend-data is not a JSON string: %w", backend.ErrPeerData, peer.Name, err)
	}
	return network.State{}, nil
}

// SetPeer implements backend.PeerTracker: it records the peer's new state
// for Forward, which runs SubnetAddCommand or SubnetRemoveCommand for it.
// A lease unchanged for the commands changes nothing.
func (b *Backend) SetPeer(name string, lease *subnet.Lease) {
	if b.opts.SubnetAddCommand == "" && b.opts.SubnetRemoveCommand == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.peers[name]
	if lease == nil {
		if p == nil || p.want == nil {
			return
		}
		p.want = nil
	} else {
		data, _ := decodeData(lease.Attrs.BackendData) // PeerState checked it
		info := peerInfo{subnet: lease.Subnet, subnet6: lease.IPv6Subnet,
			pub: lease.Attrs.PublicIP, pub6: lease.Attrs.PublicIPv6, data: data}
		switch {
		case p == nil:
			p = &peer{}
			b.peers[name] = p
		case p.want != nil && *p.want == info:
			return
		}
		p.want = &info
	}
	p.gen++
	p.synced = false
	p.retryAt = time.Time{}
	p.backoff = 0
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Forward implements backend.Forwarder: it runs the peer commands, one at
// a time, until ctx ends (a running command is killed then).
func (b *Backend) Forward(ctx context.Context) error {
	for {
		if ctx.Err() != nil {
			return nil
		}
		name, j, wait := b.next(time.Now())
		if j != nil {
			b.do(ctx, name, *j)
			continue
		}
		var timer *time.Timer
		var tick <-chan time.Time
		if wait > 0 {
			timer = time.NewTimer(wait)
			tick = timer.C
		}
		select {
		case <-ctx.Done():
		case <-b.wake:
		case <-tick:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// Dropped implements backend.Forwarder: no packets pass through flanneld.
func (b *Backend) Dropped() map[string]uint64 { return map[string]uint64{} }

// job is one peer command to run.
type job struct {
	remove bool
	info   peerInfo
	gen    uint64
}

// next returns the next peer command due at now, or, when none is, how
// long until one is (0: none is pending).
func (b *Backend) next(now time.Time) (string, *job, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var wait time.Duration
	best, bestName := (*peer)(nil), ""
	for name, p := range b.peers {
		if p.synced {
			continue
		}
		if p.want == nil && p.ran == nil {
			delete(b.peers, name) // added and gone before anything ran
			continue
		}
		if d := p.retryAt.Sub(now); d > 0 {
			if wait == 0 || d < wait {
				wait = d
			}
			continue
		}
		if best == nil || p.retryAt.Before(best.retryAt) || (p.retryAt.Equal(best.retryAt) && name < bestName) {
			best, bestName = p, name
		}
	}
	if best == nil {
		return "", nil, wait
	}
	if best.want == nil {
		return bestName, &job{remove: true, info: *best.ran, gen: best.gen}, 0
	}
	return bestName, &job{info: *best.want, gen: best.gen}, 0
}

// do runs j for the peer name and records the outcome.
func (b *Backend) do(ctx context.Context, name string, j job) {
	what, command := "SubnetAddCommand", b.opts.SubnetAddCommand
	if j.remove {
		what, command = "SubnetRemoveCommand", b.opts.SubnetRemoveCommand
	}
	var err error
	if command != "" {
		klog.V(2).InfoS("Running extension command for peer", "command", what, "node", name)
		env := leaseEnv(j.info.subnet, j.info.subnet6, j.info.pub, j.info.pub6)
		_, err = b.run(ctx, what+" for "+name, command, env, j.info.data+"\n", false)
	}
	if ctx.Err() != nil {
		return // stopping; a killed command is not a failure
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.peers[name]
	if p == nil {
		return
	}
	if !j.remove {
		p.ran = &j.info
	} else if err == nil {
		p.ran = nil
	}
	if p.gen != j.gen {
		return // the peer changed meanwhile: its new state is pending
	}
	if err != nil {
		p.backoff = b.backoffFn(p.backoff)
		p.retryAt = time.Now().Add(p.backoff)
		klog.InfoS("Will retry the extension command", "command", what, "node", name, "in", p.backoff)
		return
	}
	p.synced, p.backoff, p.retryAt = true, 0, time.Time{}
	if j.remove {
		delete(b.peers, name)
	}
}

// run runs command with `sh -c`, the environment of flanneld plus env and
// stdin, bounded by the backend's timeout and ctx; it logs the outcome
// with stdout and stderr (bounded) and returns the trimmed stdout. With
// whole, a stdout longer than maxOutput is an error.
func (b *Backend) run(ctx context.Context, what, command string, env []string, stdin string, whole bool) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	stdout, stderr := &capped{max: maxOutput}, &capped{max: maxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// The command and whatever it starts form a process group, killed
	// as a whole on timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("timed out after %s", b.timeout)
	case err == nil && whole && stdout.over > 0:
		err = fmt.Errorf("its output is longer than %d bytes", maxOutput)
	}
	kv := []any{"command", what, "duration", time.Since(start).Round(time.Millisecond),
		"stdout", logged(stdout), "stderr", logged(stderr)}
	if err != nil {
		err = fmt.Errorf("extension: %s (%q) failed: %w", what, command, err)
		klog.ErrorS(err, "Extension command failed", kv...)
		return "", err
	}
	klog.InfoS("Ran extension command", kv...)
	return strings.TrimSpace(stdout.buf.String()), nil
}

// capped keeps the first max bytes written to it and counts the rest.
type capped struct {
	buf  bytes.Buffer
	max  int
	over int
}

func (c *capped) Write(p []byte) (int, error) {
	room := c.max - c.buf.Len()
	if room >= len(p) {
		return c.buf.Write(p)
	}
	if room > 0 {
		c.buf.Write(p[:room])
	}
	c.over += len(p) - max(room, 0)
	return len(p), nil
}

// logged returns what is logged of c: at most maxLogged bytes.
func logged(c *capped) string {
	s := strings.TrimSpace(c.buf.String())
	if len(s) > maxLogged || c.over > 0 {
		return fmt.Sprintf("%s... (%d bytes more)", s[:min(len(s), maxLogged)], len(s)-min(len(s), maxLogged)+c.over)
	}
	return s
}

// decodeData returns a peer's backend-data, which must be a JSON string
// (or empty, or null).
func decodeData(raw json.RawMessage) (string, error) {
	var s *string
	if len(bytes.TrimSpace(raw)) == 0 {
		return "", nil
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	if s == nil {
		return "", nil
	}
	return *s, nil
}

// leaseEnv is the environment of a command about a lease.
func leaseEnv(sn, sn6 netip.Prefix, pub, pub6 netip.Addr) []string {
	return []string{
		"SUBNET=" + ip.Text(sn),
		"IPV6SUBNET=" + ip.Text(sn6),
		"PUBLIC_IP=" + ip.Text(pub),
		"PUBLIC_IPV6=" + ip.Text(pub6),
	}
}
