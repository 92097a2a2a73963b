package etcd

// A real etcd for the Source's tests: /usr/bin/etcd (or $ETCD) in a
// throwaway network namespace, listening on that namespace's 127.0.0.1,
// with a temporary data directory. The test process stays in the host
// namespace and reaches it through small TCP proxies whose upstream sockets
// are opened inside the namespace; a proxy can be cut, to break the
// Source's connections while the test keeps writing through another one.

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flanneld/flanneld/network/nstest"
)

const etcdInNetns = "127.0.0.1:2379"

type testEtcd struct {
	ns    *nstest.NS
	admin *clientv3.Client
	// adminProxy carries the admin client; never cut.
	adminProxy *proxy
}

// startEtcd starts etcd for one test, or skips the test when that is not
// possible here (not root, no etcd binary).
func startEtcd(t *testing.T) *testEtcd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run etcd in a network namespace")
	}
	bin := os.Getenv("ETCD")
	if bin == "" {
		bin = "/usr/bin/etcd"
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("etcd not installed (%v): run hack/install-deps.sh", err)
	}
	e := &testEtcd{ns: nstest.New(t)}

	dir := t.TempDir()
	logPath := filepath.Join(dir, "etcd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command("ip", "netns", "exec", e.ns.Name, bin,
		"--name=test",
		"--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls=http://"+etcdInNetns,
		"--advertise-client-urls=http://"+etcdInNetns,
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=test=http://127.0.0.1:2380",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("etcd log tail:\n%s", lastLines(string(log), 20))
		}
	})

	e.adminProxy = e.newProxy(t)
	e.admin, err = clientv3.New(clientv3.Config{Endpoints: []string{e.adminProxy.addr()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.admin.Close() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := e.admin.Get(ctx, "health")
		cancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("etcd exited:\n%s", lastLines(string(log), 20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not ready after 60 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return e
}

// put writes key=value through the admin client.
func (e *testEtcd) put(t *testing.T, key, value string, opts ...clientv3.OpOption) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.admin.Put(ctx, key, value, opts...); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// get reads one key (nil when absent).
func (e *testEtcd) get(t *testing.T, key string) *kv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.admin.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return &kv{Key: string(resp.Kvs[0].Key), Value: string(resp.Kvs[0].Value), Lease: clientv3.LeaseID(resp.Kvs[0].Lease),
		ModRevision: resp.Kvs[0].ModRevision}
}

// list reads every key under prefix.
func (e *testEtcd) list(t *testing.T, prefix string) []kv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.admin.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("list %s: %v", prefix, err)
	}
	var out []kv
	for _, k := range resp.Kvs {
		out = append(out, kv{Key: string(k.Key), Value: string(k.Value), Lease: clientv3.LeaseID(k.Lease), ModRevision: k.ModRevision})
	}
	return out
}

type kv struct {
	Key, Value  string
	Lease       clientv3.LeaseID
	ModRevision int64
}

// proxy forwards TCP connections from 127.0.0.1:<random> in the host
// namespace to etcd inside the test namespace.
type proxy struct {
	ln net.Listener
	ns *nstest.NS

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
}

func (e *testEtcd) newProxy(t *testing.T) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, ns: e.ns, conns: map[net.Conn]bool{}}
	t.Cleanup(func() {
		ln.Close()
		p.setCut(true)
	})
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *proxy) forward(c net.Conn) {
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.mu.Unlock()
	var up net.Conn
	err := p.ns.Do(func() (err error) {
		// The socket keeps the namespace whichever thread uses it later.
		up, err = net.DialTimeout("tcp", etcdInNetns, 5*time.Second)
		return err
	})
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// setCut closes every forwarded connection and refuses new ones (true),
// or accepts connections again (false).
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitUntil polls check every 100 ms until it returns nil, failing the
// test with the last error after timeout (a generous bound, not a target).
func waitUntil(t *testing.T, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")
