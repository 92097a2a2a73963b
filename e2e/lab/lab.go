package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
)

// Fixed addresses of the underlay network.
var (
	// UnderlayGateway is the default gateway of Segment1's nodes. Nobody
	// has it until the lab is routed (AddRouter), when the router takes it;
	// before that it only exists so that flanneld's default-interface
	// selection finds eth0.
	UnderlayGateway = netip.MustParseAddr("192.168.100.1")
	// ControlPlaneIP is the address of kube-apiserver.
	ControlPlaneIP = netip.MustParseAddr("192.168.100.2")
)

// firstNodeHost is the last octet of the first node's address (.11, .12, ...).
const firstNodeHost = 11

// DefaultNetConf is the net-conf.json a lab starts with.
const DefaultNetConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

// Lab is one throwaway cluster. Create it with New.
type Lab struct {
	t      testing.TB
	runID  string
	dir    string
	logDir string

	underlayNS string
	cp         *controlPlane

	mu       sync.Mutex
	nodes    []*Node
	procs    []*Process
	cleanups []func() // run after the processes stopped, before the namespaces go

	topo topology // the router and Segment2 (topology.go)

	// ipv6 gives the underlay IPv6 too (WithIPv6).
	ipv6 bool
}

// Option changes how New builds a lab.
type Option func(*Lab)

// WithIPv6 makes a dual-stack underlay, for IPv6 and dual-stack pod
// networks: every segment gets an IPv6 /64 next to its IPv4 /24
// (Segment.Prefix6: fd00:100::/64 for 192.168.100.0/24), every machine on
// it the IPv6 address with the same host part (fd00:100::11 for
// 192.168.100.11), nodes an IPv6 default route via the segment's gateway
// and IPv6 forwarding, and the router IPv6 forwarding. The control plane
// is still reached over IPv4. Without it a lab is IPv4 only.
func WithIPv6() Option { return func(l *Lab) { l.ipv6 = true } }

// New builds the underlay and the control plane (etcd and kube-apiserver,
// with RBAC for flanneld) and registers the cleanup of everything the lab
// will create. It needs root; see RequireRoot.
func New(t testing.TB, opts ...Option) *Lab {
	t.Helper()
	RequireRoot(t)
	etcd := RequireBinary(t, BinaryEtcd)
	apiserver := RequireBinary(t, BinaryKubeAPIServer)

	l := newUnderlayLab(t, "lab", opts)
	if err := l.WriteNetConf(DefaultNetConf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cp, err := l.startControlPlane(etcd, apiserver)
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	l.cp = cp
	t.Logf("control plane ready after %v", time.Since(start).Round(100*time.Millisecond))
	return l
}

// RequireRoot skips the test when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e tests need root (network namespaces, veth, vxlan, iptables): run `make test` as root")
	}
}

// IPv6 reports whether the lab's underlay has IPv6 (WithIPv6).
func (l *Lab) IPv6() bool { return l.ipv6 }

// RunID is the random id in every namespace name of this lab.
func (l *Lab) RunID() string { return l.runID }

// Dir is the lab's scratch directory (logs, kubeconfigs, per-node files).
func (l *Lab) Dir() string { return l.dir }

// UnderlayNetns is the namespace holding the underlay bridge br0.
func (l *Lab) UnderlayNetns() string { return l.underlayNS }

// ControlPlaneNetns is the namespace running etcd and kube-apiserver.
func (l *Lab) ControlPlaneNetns() string { return l.cp.netns }

// Client is an admin client-go clientset for the lab's API server.
func (l *Lab) Client() kubernetes.Interface { return l.cp.client }

// Kubeconfig is the kubeconfig flanneld uses (user "flannel", with exactly
// the RBAC rules of REFERENCE section 3).
func (l *Lab) Kubeconfig() string { return l.cp.flannelKubeconfig }

// AdminKubeconfig is a kubeconfig with cluster-admin rights.
func (l *Lab) AdminKubeconfig() string { return l.cp.adminKubeconfig }

// NetConfPath is the net-conf.json flanneld reads by default.
func (l *Lab) NetConfPath() string { return filepath.Join(l.dir, "net-conf.json") }

// WriteNetConf replaces the default net-conf.json.
func (l *Lab) WriteNetConf(content string) error {
	return os.WriteFile(l.NetConfPath(), []byte(content), 0o644)
}

// Nodes returns the nodes added so far.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// createUnderlay makes the underlay namespace with bridge br0.
func (l *Lab) createUnderlay() error {
	l.underlayNS = netnsName(l.runID, "ul")
	if err := createNetns(l.underlayNS); err != nil {
		return err
	}
	if _, err := runIP("-n", l.underlayNS, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	_, err := runIP("-n", l.underlayNS, "link", "set", "br0", "up")
	return err
}

// attachToUnderlay creates namespace ns and wires it to br0 (Segment1)
// with a veth pair whose ns end is eth0 with address addr/24 (and its
// IPv6 counterpart in an IPv6 lab).
func (l *Lab) attachToUnderlay(ns, bridgePort string, addr netip.Addr) error {
	return l.attachToSegment(ns, bridgePort, Segment1, addr)
}

// cleanup stops every process, dumps logs when the test failed, and deletes
// every namespace of this run.
func (l *Lab) cleanup() {
	l.mu.Lock()
	procs := append([]*Process(nil), l.procs...)
	nodes := append([]*Node(nil), l.nodes...)
	cleanups := append([]func(){}, l.cleanups...)
	l.mu.Unlock()

	if l.t.Failed() {
		l.dumpNodeState(nodes)
	}
	for i := len(procs) - 1; i >= 0; i-- {
		start := time.Now()
		procs[i].Stop()
		if d := time.Since(start); d > 2*time.Second {
			l.t.Logf("stopping %s took %v", procs[i].Name, d.Round(100*time.Millisecond))
		}
	}
	if l.t.Failed() {
		for _, p := range procs {
			l.t.Logf("----- %s (netns %s, %s) log tail -----\n%s", p.Name, p.Netns, p.describeExit(), tail(p.Log(), 60))
			if out := p.Stdout(); out != "" {
				l.t.Logf("----- %s stdout tail -----\n%s", p.Name, tail(out, 20))
			}
		}
	}
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	if l.cp != nil {
		l.cp.close()
	}
	names, err := listNetnsWithPrefix(runPrefix(l.runID))
	if err != nil {
		l.t.Errorf("listing namespaces of run %s: %v", l.runID, err)
	}
	for _, ns := range names {
		if err := deleteNetns(ns); err != nil {
			l.t.Errorf("deleting namespace %s: %v", ns, err)
		}
	}
}

// addCleanup registers fn to run when the lab is cleaned up, after its
// processes have stopped and before its namespaces are deleted.
func (l *Lab) addCleanup(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cleanups = append(l.cleanups, fn)
}

// dumpNodeState logs the kernel state of every node, to explain failures.
func (l *Lab) dumpNodeState(nodes []*Node) {
	commands := [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "addr", "show"},
		{"ip", "route", "show"},
		{"ip", "-4", "neigh", "show"},
		{"bridge", "fdb", "show", "dev", "flannel.1"},
	}
	if l.ipv6 {
		commands = append(commands,
			[]string{"ip", "-6", "route", "show"},
			[]string{"ip", "-6", "neigh", "show"},
			[]string{"bridge", "fdb", "show", "dev", "flannel-v6.1"},
		)
	}
	for _, n := range nodes {
		var out string
		for _, argv := range commands {
			o, err := Exec(n.Netns, argv...)
			if err != nil {
				o += err.Error()
			}
			out += fmt.Sprintf("$ %v\n%s\n", argv, o)
		}
		l.t.Logf("----- kernel state of node %s (netns %s) -----\n%s", n.Name, n.Netns, out)
	}
}

// WaitFor calls check until it returns nil, failing the test with the last
// error when timeout passes.
func WaitFor(t testing.TB, what string, timeout time.Duration, check func() error) {
	t.Helper()
	if err := Poll(timeout, check); err != nil {
		t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
	}
}

// Poll calls check every pollInterval until it returns nil or timeout
// passes, and returns the last error.
func Poll(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(pollInterval)
	}
}

const pollInterval = 250 * time.Millisecond

// newUnderlayLab creates a lab's directory and underlay, with the options
// applied, and registers the cleanup of everything the lab will create.
// kind names the lab in the test log.
func newUnderlayLab(t testing.TB, kind string, opts []Option) *Lab {
	t.Helper()
	l := &Lab{t: t, runID: newRunID(), dir: t.TempDir()}
	for _, o := range opts {
		o(l)
	}
	l.logDir = filepath.Join(l.dir, "logs")
	if err := os.MkdirAll(l.logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s run id %s, directory %s", kind, l.runID, l.dir)
	t.Cleanup(l.cleanup)
	if err := l.createUnderlay(); err != nil {
		t.Fatalf("creating the underlay: %v", err)
	}
	return l
}
