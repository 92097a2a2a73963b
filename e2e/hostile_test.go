package e2e

// Untrusted peers (issue 14): whoever can write a peer's Node (or its etcd
// lease, hostile_etcd_test.go) chooses the data flanneld programs from.
// Every test here puts hostile peers next to healthy ones and checks that
// each is skipped with the contract's log line ("Skipping peer" node=...
// reason=... rule=<label>, logged once, bounded), Event and metric, that
// it leaves no trace in the kernel, and that the healthy nodes are
// unharmed: pods keep pinging (also without a single loss over the whole
// test), the underlay's own routes (the kernel's connected route, the
// default route) are unchanged, flanneld stays ready and the control plane
// stays reachable.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flanneld/flanneld/e2e/lab"
)

const (
	// maxLogLineBytes bounds every line flanneld logs, whatever a peer
	// advertises (the contract: no line longer than ~1 KiB).
	maxLogLineBytes = 2048
	// maxEventMessageBytes bounds the message of an Event about a peer.
	maxEventMessageBytes = 1024
	// combinedEventPrefix is what client-go's event aggregator puts before
	// the message when it folds similar Events into one.
	combinedEventPrefix = "(combined from similar events): "
	// entryConflictLog is logged once when a kernel entry flanneld wants is
	// held by someone else.
	entryConflictLog = "Kernel entry conflicts with one flanneld does not own; leaving it alone"
	// manifestMemoryLimitMiB is the memory limit of Documentation/kube-flannel.yml.
	manifestMemoryLimitMiB = 128
	// forgedLogPrefix starts a fake klog line a hostile peer hides in its
	// data: it must never start a line of flanneld's log.
	forgedLogPrefix = "E0101 00:00:00.000000"
)

// hostileCluster is a running cluster (Kubernetes or etcd mode) with one
// pod per node, the state every node must return to once the hostile peers
// are gone, and pings that run in the background for the whole test.
type hostileCluster struct {
	l     *lab.Lab
	nodes []*lab.Node
	// first is the flanneld each node started with (a node may be
	// restarted; both logs are checked).
	first map[*lab.Node]*lab.Process
	pods  []*lab.Pod
	// underlay are the routes of each node flanneld does not own, as
	// `ip route` prints them, once the pods are up.
	underlay map[*lab.Node][]string
	// state checks the exact peer state a node has without hostile peers.
	state func(n *lab.Node) error
	// reach checks that the node reaches the control plane (kube-apiserver
	// or etcd).
	reach func(n *lab.Node) error
	pings []*pingRun
}

// newHostileCluster waits for every node's peer state, adds a pod per node,
// checks that they ping, records the underlay routes, and starts a
// background ping between the first two pods, both ways.
func newHostileCluster(t *testing.T, l *lab.Lab, nodes []*lab.Node, state, reach func(*lab.Node) error) *hostileCluster {
	t.Helper()
	c := &hostileCluster{l: l, nodes: nodes, first: map[*lab.Node]*lab.Process{}, underlay: map[*lab.Node][]string{}, state: state, reach: reach}
	for _, n := range nodes {
		c.first[n] = n.Flanneld()
		lab.WaitFor(t, n.Name+" to program its peers", convergeTimeout, func() error { return state(n) })
	}
	for _, n := range nodes {
		c.pods = append(c.pods, l.AddPod(t, n, "p1"))
	}
	pingAll(t, c.pods)
	for _, n := range nodes {
		routes, err := underlayRoutesOf(n.Netns)
		if err != nil {
			t.Fatal(err)
		}
		c.underlay[n] = routes
		if err := checkUnderlayRoutes(n, routes); err != nil {
			t.Fatalf("%s before any hostile peer: %v", n.Name, err)
		}
	}
	a, b := c.pods[0], c.pods[1]
	c.pings = []*pingRun{
		startPing(t, l, a, b.IP, 100*time.Millisecond, 1000000),
		startPing(t, l, b, a.IP, 100*time.Millisecond, 1000000),
	}
	return c
}

// healthy checks what hostile peers must never break: flanneld runs and is
// ready, every node is back to its exact peer state, reaches the control
// plane, has its underlay routes unchanged, and every pod pings every
// other.
func (c *hostileCluster) healthy(t *testing.T) {
	t.Helper()
	for _, n := range c.nodes {
		requireRunning(t, n)
		if err := lab.Poll(convergeTimeout, func() error { return c.state(n) }); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
		if err := lab.Poll(10*time.Second, func() error { return readyz(n) }); err != nil {
			t.Errorf("%s not ready: %v", n.Name, err)
		}
		if err := c.reach(n); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
		if err := checkUnderlayRoutes(n, c.underlay[n]); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}
	pingAll(t, c.pods)
	for _, r := range c.pings {
		if !r.running() {
			t.Errorf("background ping %s stopped:\n%s", r.proc.Name, r.proc.Stdout())
		}
	}
}

// stopPings stops the background pings and checks that none lost a
// packet (but the one in flight when it was stopped).
func (c *hostileCluster) stopPings(t *testing.T) {
	t.Helper()
	for i, r := range c.pings {
		r.proc.Signal(syscall.SIGINT)
		sent, received := r.wait(t, 10*time.Second)
		metricValue(t, fmt.Sprintf("hostile_background_ping_lost_%d", i), float64(sent-received))
		if sent == 0 || sent-received > 1 {
			t.Errorf("background ping %s: %d sent, %d received over the whole test", r.proc.Name, sent, received)
		} else {
			t.Logf("background ping %s: %d sent, %d received", r.proc.Name, sent, received)
		}
	}
}

// processes are every flanneld node n ran (the first, and the current one
// if it was restarted).
func (c *hostileCluster) processes(n *lab.Node) []*lab.Process {
	procs := []*lab.Process{c.first[n]}
	if p := n.Flanneld(); p != nil && p != c.first[n] {
		procs = append(procs, p)
	}
	return procs
}

// checkLogsBounded checks that no line flanneld logged on any node is
// longer than maxLogLineBytes, and that no line starts with the fake klog
// header a hostile peer hid in its data (the data was quoted, not written
// raw).
func (c *hostileCluster) checkLogsBounded(t *testing.T) {
	t.Helper()
	for _, n := range c.nodes {
		for _, p := range c.processes(n) {
			longest := 0
			for _, line := range strings.Split(p.Log(), "\n") {
				longest = max(longest, len(line))
				if len(line) >= maxLogLineBytes {
					t.Errorf("%s: a log line of %d bytes (want < %d): %.300s...", p.Name, len(line), maxLogLineBytes, line)
				}
				if strings.HasPrefix(line, forgedLogPrefix) {
					t.Errorf("%s: a peer's data forged a log line: %.300s", p.Name, line)
				}
			}
			t.Logf("%s: longest log line %d bytes", p.Name, longest)
		}
	}
}

// waitFullPass waits until flanneld on every node has made a full
// reconcile pass (every 30 s) since the call.
func (c *hostileCluster) waitFullPass(t *testing.T) {
	t.Helper()
	const series = `flanneld_sync_passes_total{kind="full"}`
	before := map[*lab.Node]float64{}
	for _, n := range c.nodes {
		m, err := scrapeMetrics(n)
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		before[n] = m[series]
	}
	start := time.Now()
	for _, n := range c.nodes {
		lab.WaitFor(t, "a full pass on "+n.Name, 45*time.Second, func() error {
			m, err := scrapeMetrics(n)
			if err != nil {
				return err
			}
			if m[series] <= before[n] {
				return fmt.Errorf("%s = %v", series, m[series])
			}
			return nil
		})
	}
	t.Logf("every node made a full pass within %v", time.Since(start).Round(100*time.Millisecond))
}

// checkSkippedOnce checks that the current flanneld of every node logged
// exactly one "Skipping peer" line for each of names.
func (c *hostileCluster) checkSkippedOnce(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range c.nodes {
		for _, name := range names {
			if lines := logLines(n.Flanneld().Log(), `"Skipping peer"`, `node="`+name+`"`); len(lines) != 1 {
				t.Errorf("%s logged %d Skipping peer lines for %s, want 1:\n%s", n.Name, len(lines), name, strings.Join(lines, "\n"))
			}
		}
	}
}

var (
	skipNodeKV   = regexp.MustCompile(` node="([^"]*)"`)
	skipReasonKV = regexp.MustCompile(` reason="((?:[^"\\]|\\.)*)"`)
)

// checkLoggedOnce checks that every "Skipping peer" line names a peer and
// a reason no other line of the same process named: a peer is logged once
// per distinct reason, not on every pass.
func (c *hostileCluster) checkLoggedOnce(t *testing.T) {
	t.Helper()
	for _, n := range c.nodes {
		for _, p := range c.processes(n) {
			lines := logLines(p.Log(), `"Skipping peer"`)
			seen := map[string]int{}
			for _, line := range lines {
				node, reason := skipNodeKV.FindStringSubmatch(line), skipReasonKV.FindStringSubmatch(line)
				if node == nil || reason == nil {
					t.Errorf("%s: a Skipping peer line without node= or reason=: %.500s", p.Name, line)
					continue
				}
				key := node[1] + " " + reason[1]
				if seen[key]++; seen[key] == 2 {
					t.Errorf("%s logged more than once that it skips %s for %.300s", p.Name, node[1], reason[1])
				}
			}
			t.Logf("%s: %d Skipping peer lines, %d distinct", p.Name, len(lines), len(seen))
		}
	}
}

// underlayRoutesOf lists the IPv4 main-table routes of ns that flanneld
// does not own (neither protocol 102 nor on flannel.1), as `ip route`
// prints them.
func underlayRoutesOf(ns string) ([]string, error) {
	out, err := lab.Exec(ns, "ip", "-4", "route", "show", "table", "main")
	if err != nil {
		return nil, err
	}
	var routes []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.Contains(line, " proto "+ownedProto) || strings.Contains(line, " dev "+vxlanDevice) {
			continue
		}
		routes = append(routes, line)
	}
	return routes, nil
}

// checkUnderlayRoutes checks that node n still has exactly the routes
// flanneld does not own it had before (want), among them the kernel's
// connected route of eth0 and the default route.
func checkUnderlayRoutes(n *lab.Node, want []string) error {
	got, err := underlayRoutesOf(n.Netns)
	if err != nil {
		return err
	}
	connected := fmt.Sprintf("%s dev eth0 proto kernel scope link src %s", n.Segment.Prefix(), n.IP)
	if !contains(got, connected) {
		return fmt.Errorf("the connected route %q is gone; routes: %q", connected, got)
	}
	hasDefault := false
	for _, r := range got {
		if strings.HasPrefix(r, fmt.Sprintf("default via %s dev eth0", n.Segment.Gateway())) {
			hasDefault = true
		}
	}
	if !hasDefault {
		return fmt.Errorf("the default route via %s is gone; routes: %q", n.Segment.Gateway(), got)
	}
	return compareSets("routes flanneld does not own", got, want)
}

// checkNoHostileTrace checks that ns holds nothing flanneld would program
// for a peer with subnet cidr and VtepMAC mac: no route to cidr owned by
// flanneld or on flannel.1 (a foreign route to it, such as the kernel's
// connected route when cidr is the underlay's, is checked by
// checkUnderlayRoutes), no neighbour for its first address on flannel.1 or
// a permanent one anywhere, no FDB entry for mac. An empty cidr or mac
// skips its checks.
func checkNoHostileTrace(ns, cidr, mac string) error {
	if cidr != "" {
		prefix := netip.MustParsePrefix(cidr)
		dst := cidr
		if prefix.Bits() == 0 {
			dst = "default" // as ip prints it
		}
		routes, err := routesTo(ns, dst)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Protocol == ownedProto || r.Dev == vxlanDevice {
				return fmt.Errorf("route %s present", r)
			}
		}
		gw := prefix.Masked().Addr().String()
		neighs, err := lab.ShowNeighbours(ns)
		if err != nil {
			return err
		}
		for _, n := range neighs {
			if n.Dst == gw && (n.Dev == vxlanDevice || contains(n.State, "PERMANENT")) {
				return fmt.Errorf("neighbour %s present", n)
			}
		}
	}
	if mac == "" {
		return nil
	}
	fdb, err := lab.ShowFDB(ns, vxlanDevice)
	if err != nil {
		return err
	}
	for _, f := range fdb {
		if strings.EqualFold(f.MAC, mac) {
			return fmt.Errorf("fdb entry %s present", f)
		}
	}
	return nil
}

// waitSkipped waits until p logged that it skips peer name with rule, and
// checks that the line is bounded. It returns the line ("" if none).
func waitSkipped(t testing.TB, p *lab.Process, name, rule string) string {
	t.Helper()
	parts := []string{`"Skipping peer"`, `node="` + name + `"`, `rule="` + rule + `"`}
	var line string
	err := lab.Poll(convergeTimeout, func() error {
		if lines := logLines(p.Log(), parts...); len(lines) > 0 {
			line = lines[0]
			return nil
		}
		return errors.New("none yet")
	})
	if err != nil {
		other := logLines(p.Log(), `node="`+name+`"`)
		for i, l := range other {
			if len(l) > 600 {
				other[i] = l[:600] + "..."
			}
		}
		t.Errorf(`%s: no "Skipping peer" line with node=%q rule=%q; its lines naming the peer:%s`, p.Name, name, rule, "\n"+strings.Join(other, "\n"))
		return ""
	}
	if len(line) >= maxLogLineBytes {
		t.Errorf("%s: the Skipping peer line for %s is %d bytes (want < %d): %.300s...", p.Name, name, len(line), maxLogLineBytes, line)
	}
	return line
}

// waitPeerSkippedEvent waits for the PeerSkipped Event on Node node about
// peer, checks that it is a Warning of at most maxEventMessageBytes, and
// returns its message.
func waitPeerSkippedEvent(t testing.TB, l *lab.Lab, node, peer string) string {
	t.Helper()
	prefix := "peer " + peer + " skipped: "
	var found corev1.Event
	err := lab.Poll(convergeTimeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		list, err := l.Client().CoreV1().Events("default").List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node + ",reason=PeerSkipped",
		})
		if err != nil {
			return err
		}
		for _, e := range list.Items {
			if strings.HasPrefix(strings.TrimPrefix(e.Message, combinedEventPrefix), prefix) {
				found = e
				return nil
			}
		}
		return fmt.Errorf("%d PeerSkipped events on Node %s, none about %s", len(list.Items), node, peer)
	})
	if err != nil {
		t.Errorf("no PeerSkipped event: %v", err)
		return ""
	}
	msg := strings.TrimPrefix(found.Message, combinedEventPrefix)
	if found.Type != corev1.EventTypeWarning {
		t.Errorf("PeerSkipped event on %s about %s is of type %s, want Warning", node, peer, found.Type)
	}
	if len(msg) > maxEventMessageBytes {
		t.Errorf("PeerSkipped event on %s about %s has a message of %d bytes (want <= %d): %.300s...", node, peer, len(msg), maxEventMessageBytes, msg)
	}
	return found.Message
}

// waitCounter waits until series is positive in n's /metrics.
func waitCounter(t testing.TB, n *lab.Node, series string) {
	t.Helper()
	var got float64
	err := lab.Poll(convergeTimeout, func() error {
		m, err := scrapeMetrics(n)
		if err != nil {
			return err
		}
		if got = m[series]; got <= 0 {
			return fmt.Errorf("%s = %v, want > 0", series, got)
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: %v", n.Name, err)
		return
	}
	t.Logf("%s: %s = %v", n.Name, series, got)
}

// rejected is the counter of peers skipped for rule.
func rejected(rule string) string { return `flanneld_peers_rejected_total{reason="` + rule + `"}` }

// oversizedBackendData is a backend-data annotation of size bytes that
// starts like a real one and hides a fake klog line in its first bytes.
func oversizedBackendData(mac string, size int) string {
	head := fmt.Sprintf(`{"VNI":1,"VtepMAC":%q,"Pad":"`, mac) + "\n" + forgedLogPrefix + `       1 forged.go:1] "Adding peer" node="forged"` + "\n"
	return head + strings.Repeat("A", size-len(head)-2) + `"}`
}

// badPublicIP is a public-ip no peer may advertise.
type badPublicIP struct {
	name, ip string
	// only is the one node that must refuse it (its own address); nil
	// for every node.
	only *lab.Node
}

// badPublicIPs are the public-ip values of the contract's public_ip rule
// on the lab's underlay (192.168.100.0/24); self's own address among them.
func badPublicIPs(self *lab.Node) []badPublicIP {
	return []badPublicIP{
		{name: "unspecified", ip: "0.0.0.0"},
		{name: "loopback", ip: "127.0.0.1"},
		{name: "multicast", ip: "224.0.0.1"},
		{name: "broadcast", ip: "255.255.255.255"},
		{name: "link-local", ip: "169.254.1.1"},
		{name: "this-network", ip: "0.1.2.3"},
		{name: "class-e", ip: "240.0.0.1"},
		{name: "pod-network", ip: "10.244.200.1"},
		{name: "segment-network", ip: lab.Segment1.Prefix().Masked().Addr().String()},
		{name: "segment-broadcast", ip: lab.Segment1.Host(255).String()},
		{name: "own-address", ip: self.IP.String(), only: self},
	}
}

// procStatusMiB reads VmRSS and VmHWM of p (flanneld) in MiB.
func procStatusMiB(t testing.TB, p *lab.Process) (rss, hwm float64) {
	t.Helper()
	pid := p.Pid()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "Name:\tflanneld\n") {
		// `ip netns exec` forked: the daemon is its child.
		children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		fields := strings.Fields(string(children))
		if err != nil || len(fields) == 0 {
			t.Fatalf("process %d is not flanneld and has no child: %v", pid, err)
		}
		if status, err = os.ReadFile("/proc/" + fields[0] + "/status"); err != nil {
			t.Fatal(err)
		}
	}
	field := func(name string) float64 {
		for _, line := range strings.Split(string(status), "\n") {
			if rest, ok := strings.CutPrefix(line, name+":"); ok {
				kib, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				if err != nil {
					t.Fatalf("/proc status %s: %q", name, line)
				}
				return kib / 1024
			}
		}
		t.Fatalf("no %s in /proc status", name)
		return 0
	}
	return field("VmRSS"), field("VmHWM")
}

// cleanupNodes deletes the named Nodes, if they still exist, when t ends:
// a failed subtest leaves no hostile peer to the next.
func cleanupNodes(t testing.TB, l *lab.Lab, names ...string) {
	t.Cleanup(func() {
		for _, name := range names {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := l.Client().CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
			cancel()
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("deleting Node %s: %v", name, err)
			}
		}
	})
}

// mustRoutesTo is routesTo without the error (none on error).
func mustRoutesTo(ns, dst string) []lab.Route {
	routes, _ := routesTo(ns, dst)
	return routes
}

// forEachNode runs fn on every Node object with a pool of workers and
// fails the test with the first error.
func forEachNode(t testing.TB, objs []*corev1.Node, workers int, fn func(ctx context.Context, obj *corev1.Node) error) {
	t.Helper()
	jobs := make(chan *corev1.Node)
	errs := make(chan error, len(objs))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for obj := range jobs {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if err := fn(ctx, obj); err != nil {
					errs <- fmt.Errorf("Node %s: %w", obj.Name, err)
				}
				cancel()
			}
		}()
	}
	for _, o := range objs {
		jobs <- o
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestHostilePeersKube puts hostile peer Nodes next to two vxlan nodes
// running flanneld: oversized annotations, podCIDRs outside the Network,
// a foreign route in the way of a peer's, a duplicate VtepMAC, bad
// public-ips, 200 Nodes fat with annotations (flanneld's memory stays
// under the manifest's limit, running and starting among them), and one
// peer per rule kept through a full pass (each logged once).
func TestHostilePeersKube(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	nodes := []*lab.Node{n1, n2}
	startAll(t, l, nodes)
	peer1, peer2 := realPeer(t, n1), realPeer(t, n2)
	base := map[*lab.Node][]peer{n1: {peer2}, n2: {peer1}}
	state := func(n *lab.Node) error { return checkPeerState(n.Netns, stateFor(base[n]...)) }
	c := newHostileCluster(t, l, nodes, state, func(n *lab.Node) error { return apiServerAnswers(n.Netns) })
	data := annotationPrefix + "backend-data"

	// The Events of flanneld on a Node are rate limited by client-go (a
	// burst of 25 Warnings, similar ones folded after 10): the subtests
	// that check Events come first.

	t.Run("oversized annotations", func(t *testing.T) {
		big := peer{Name: "hostile-big", PodCIDR: podCIDR(40), PublicIP: fakePublicIP(40), MAC: fakeMAC(40)}
		ann := flannelAnnotations(big)
		ann[data] = oversizedBackendData(big.MAC, 250_000)
		cleanupNodes(t, l, big.Name)
		createNode(t, l, big.Name, big.PodCIDR, ann)
		for _, n := range nodes {
			line := waitSkipped(t, n.Flanneld(), big.Name, "malformed")
			t.Logf("%s (%d bytes): %s", n.Name, len(line), line)
			if size := fmt.Sprintf("(%d bytes)", len(ann[data])); line != "" && !strings.Contains(line, size) {
				// Documentation/reliability.md shows the value's real size.
				t.Logf("note: %s's line does not give the annotation's size %s", n.Name, size)
			}
			msg := waitPeerSkippedEvent(t, l, n.Name, big.Name)
			t.Logf("%s event (%d bytes): %s", n.Name, len(msg), msg)
			waitCounter(t, n, rejected("malformed"))
			if err := checkNoHostileTrace(n.Netns, big.PodCIDR, big.MAC); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if err := state(n); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		c.checkLogsBounded(t)
		deleteNode(t, l, big.Name)
		c.healthy(t)
	})

	t.Run("podCIDR outside the Network", func(t *testing.T) {
		cases := []struct {
			name, cidr string
			rule       map[*lab.Node]string // default "subnet"
		}{
			{name: "hostile-underlay", cidr: lab.Segment1.Prefix().String()},
			{name: "hostile-half", cidr: "128.0.0.0/1"},
			{name: "hostile-loopback", cidr: "127.0.0.0/8"},
			{name: "hostile-multicast", cidr: "224.0.0.0/4"},
			{name: "hostile-everything", cidr: "0.0.0.0/0"},
			// Inside n1's own subnet; on n2 it overlaps n1, the older claim.
			{name: "hostile-own", cidr: "10.244.1.128/25", rule: map[*lab.Node]string{n2: "conflict"}},
		}
		for i, hc := range cases {
			p := peer{Name: hc.name, PodCIDR: hc.cidr, PublicIP: fakePublicIP(41 + i), MAC: fakeMAC(41 + i)}
			cleanupNodes(t, l, p.Name)
			createFakePeer(t, l, p)
		}
		for _, n := range nodes {
			for i, hc := range cases {
				rule := "subnet"
				if r, ok := hc.rule[n]; ok {
					rule = r
				}
				line := waitSkipped(t, n.Flanneld(), hc.name, rule)
				t.Logf("%s: %s", n.Name, line)
				if msg := waitPeerSkippedEvent(t, l, n.Name, hc.name); msg != "" {
					t.Logf("%s event: %s", n.Name, msg)
				}
				if err := checkNoHostileTrace(n.Netns, hc.cidr, fakeMAC(41+i)); err != nil {
					t.Errorf("%s has a trace of %s (%s): %v", n.Name, hc.name, hc.cidr, err)
				}
			}
			waitCounter(t, n, rejected("subnet"))
			if err := state(n); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if err := checkUnderlayRoutes(n, c.underlay[n]); err != nil {
				t.Errorf("%s with the hostile peers: %v", n.Name, err)
			}
		}
		waitCounter(t, n2, rejected("conflict"))
		lab.WaitPing(t, c.pods[0], c.pods[1].IP, pingTimeout)
		for _, hc := range cases {
			deleteNode(t, l, hc.name)
		}
		c.healthy(t)
	})

	t.Run("foreign route in the way", func(t *testing.T) {
		p := peer{Name: "conflict-9", PodCIDR: podCIDR(9), PublicIP: fakePublicIP(9), MAC: fakeMAC(9)}
		before := len(logLines(n1.Flanneld().Log(), entryConflictLog))
		mustExec(t, n1.Netns, "ip", "route", "add", "blackhole", p.PodCIDR)
		t.Cleanup(func() {
			for _, r := range mustRoutesTo(n1.Netns, p.PodCIDR) {
				if r.Type == "blackhole" {
					_, _ = lab.Exec(n1.Netns, "ip", "route", "del", "blackhole", p.PodCIDR)
				}
			}
		})
		cleanupNodes(t, l, p.Name)
		createFakePeer(t, l, p)
		for _, kind := range []string{"route", "neighbour", "fdb"} {
			lab.WaitFor(t, "n2 to program the "+kind+" of "+p.Name, convergeTimeout, func() error { return checkEntry(n2.Netns, kind, p) })
		}
		line := waitLogLine(t, n1.Flanneld(), convergeTimeout, entryConflictLog)
		t.Logf("n1: %s", line)
		// Through the first retries (1 s, 2 s): the blackhole stays, n1
		// stays ready.
		blackholeOnly := func() error {
			routes, err := routesTo(n1.Netns, p.PodCIDR)
			if err != nil {
				return err
			}
			if len(routes) != 1 || routes[0].Type != "blackhole" || routes[0].Protocol == ownedProto {
				return fmt.Errorf("routes to %s: %v, want only the blackhole route", p.PodCIDR, routes)
			}
			return nil
		}
		for end := time.Now().Add(3500 * time.Millisecond); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
			if err := blackholeOnly(); err != nil {
				t.Errorf("n1: %v", err)
				break
			}
			if err := readyz(n1); err != nil {
				t.Errorf("n1 with a conflicting entry: %v", err)
				break
			}
		}
		if err := healthz(n1); err != nil {
			t.Errorf("n1: %v", err)
		}
		waitCounter(t, n1, `flanneld_entry_failures_total{kind="route",reason="conflict"}`)
		t.Logf("n1 event: %s", waitEvent(t, l, n1.Name, "EntryConflict"))
		if got := len(logLines(n1.Flanneld().Log(), entryConflictLog)) - before; got != 1 {
			t.Errorf("n1 logged the conflict %d times, want once:\n%s", got, strings.Join(logLines(n1.Flanneld().Log(), entryConflictLog), "\n"))
		}
		requireRunning(t, n1)

		// The foreign route goes: flanneld's goes in at the next retry.
		mustExec(t, n1.Netns, "ip", "route", "del", "blackhole", p.PodCIDR)
		d := measure(t, "n1 to install its route once the blackhole is gone", 20*time.Second, func() error { return checkEntry(n1.Netns, "route", p) })
		metric(t, "entry_conflict_resolved_seconds", d)
		if err := checkPeerState(n1.Netns, stateFor(peer2, p)); err != nil {
			t.Errorf("n1: %v", err)
		}
		if got := len(logLines(n1.Flanneld().Log(), entryConflictLog)) - before; got != 1 {
			t.Errorf("n1 logged the conflict %d times, want once", got)
		}
		deleteNode(t, l, p.Name)
		c.healthy(t)
	})

	t.Run("duplicate VtepMAC", func(t *testing.T) {
		// A newcomer claims n2's VtepMAC: n1 keeps n2's FDB entry.
		dup := peer{Name: "hostile-dup-mac", PodCIDR: podCIDR(50), PublicIP: fakePublicIP(50), MAC: peer2.MAC}
		cleanupNodes(t, l, dup.Name)
		createFakePeer(t, l, dup)
		t.Logf("n1: %s", waitSkipped(t, n1.Flanneld(), dup.Name, "conflict"))
		waitCounter(t, n1, rejected("conflict"))
		if err := checkNoHostileTrace(n1.Netns, dup.PodCIDR, ""); err != nil {
			t.Errorf("n1: %v", err)
		}
		if err := state(n1); err != nil {
			t.Errorf("n1 with a peer claiming n2's VtepMAC: %v", err)
		}
		t.Logf("n2 (whose MAC it is) logged: %q", logLines(n2.Flanneld().Log(), `node="`+dup.Name+`"`))
		lab.WaitPing(t, c.pods[0], c.pods[1].IP, pingTimeout)
		lab.WaitPing(t, c.pods[1], c.pods[0].IP, pingTimeout)
		deleteNode(t, l, dup.Name)
		for _, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return state(n) }); err != nil {
				t.Errorf("%s after %s left: %v", n.Name, dup.Name, err)
			}
		}
		if err := checkEntry(n1.Netns, "fdb", peer2); err != nil {
			t.Errorf("n1: %v", err)
		}

		// Two fake peers with one MAC: the older claim wins even though the
		// newer one's name sorts first, and the loser is programmed once
		// the winner leaves.
		older := peer{Name: "claim-z", PodCIDR: podCIDR(51), PublicIP: fakePublicIP(51), MAC: fakeMAC(51)}
		newer := peer{Name: "claim-a", PodCIDR: podCIDR(52), PublicIP: fakePublicIP(52), MAC: older.MAC}
		cleanupNodes(t, l, older.Name, newer.Name)
		createFakePeer(t, l, older)
		for _, n := range nodes {
			lab.WaitFor(t, n.Name+" to program "+older.Name, convergeTimeout, func() error { return checkPeerState(n.Netns, stateFor(append(base[n], older)...)) })
		}
		time.Sleep(1100 * time.Millisecond) // creationTimestamp has 1 s resolution
		createFakePeer(t, l, newer)
		for _, n := range nodes {
			waitSkipped(t, n.Flanneld(), newer.Name, "conflict")
			if err := checkPeerState(n.Netns, stateFor(append(base[n], older)...)); err != nil {
				t.Errorf("%s with two claims of %s: %v", n.Name, older.MAC, err)
			}
		}
		deleteNode(t, l, older.Name)
		for _, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, stateFor(append(base[n], newer)...)) }); err != nil {
				t.Errorf("%s after the older claim %s left: %v", n.Name, older.Name, err)
			}
		}
		deleteNode(t, l, newer.Name)
		c.healthy(t)
	})

	t.Run("bad public-ip", func(t *testing.T) {
		bad := badPublicIPs(n1)
		fake := func(i int) peer {
			return peer{Name: "pubip-" + bad[i].name, PodCIDR: podCIDR(60 + i), PublicIP: bad[i].ip, MAC: fakeMAC(60 + i)}
		}
		for i := range bad {
			cleanupNodes(t, l, fake(i).Name)
			createFakePeer(t, l, fake(i))
		}
		for _, n := range nodes {
			for i, b := range bad {
				if b.only != nil && b.only != n {
					continue
				}
				p := fake(i)
				t.Logf("%s: %s", n.Name, waitSkipped(t, n.Flanneld(), p.Name, "public_ip"))
				if err := checkNoHostileTrace(n.Netns, p.PodCIDR, p.MAC); err != nil {
					t.Errorf("%s has a trace of %s (public-ip %s): %v", n.Name, p.Name, p.PublicIP, err)
				}
			}
			waitCounter(t, n, rejected("public_ip"))
		}
		if err := state(n1); err != nil {
			t.Errorf("n1: %v", err)
		}
		lab.WaitPing(t, c.pods[0], c.pods[1].IP, pingTimeout)
		for i := range bad {
			deleteNode(t, l, fake(i).Name)
		}
		c.healthy(t)
	})

	// 200 Nodes with some 250 KB of annotations each (the API server takes
	// at most 256 KiB): the even ones are good peers carrying foreign
	// annotations, the odd ones have oversized flannel annotations.
	const fatCount = 200
	var fatObjs []*corev1.Node
	var fatGood []peer
	fatCreated, fatDeleted := false, false
	deleteFat := func(t testing.TB) {
		if !fatCreated || fatDeleted {
			return
		}
		fatDeleted = true
		forEachNode(t, fatObjs, 8, func(ctx context.Context, obj *corev1.Node) error {
			err := l.Client().CoreV1().Nodes().Delete(ctx, obj.Name, metav1.DeleteOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		})
	}
	t.Cleanup(func() { deleteFat(t) })

	t.Run("fat Nodes memory", func(t *testing.T) {
		const count = fatCount
		blob := strings.Repeat("x", 63_000)
		bigData := oversizedBackendData(fakeMAC(999), 120_000)
		bigIP := strings.Repeat("192.168.100.250,", 500) // 8,000 bytes
		var objs []*corev1.Node
		var good []peer
		for i := range count {
			name := fmt.Sprintf("fat-%03d", i)
			cidr := fmt.Sprintf("10.244.%d.%d/26", 200+i/4, 64*(i%4))
			var ann map[string]string
			if i%2 == 0 {
				p := peer{Name: name, PodCIDR: cidr, PublicIP: fmt.Sprintf("192.168.101.%d", 1+i/2), MAC: fakeMAC(1000 + i)}
				good = append(good, p)
				ann = flannelAnnotations(p)
				for k := range 4 {
					ann[fmt.Sprintf("hostile.example.com/blob-%d", k)] = blob
				}
			} else {
				ann = flannelAnnotations(peer{MAC: fakeMAC(1000 + i)})
				ann[data] = bigData
				ann[annotationPrefix+"public-ip"] = bigIP
				for k := range 2 {
					ann[fmt.Sprintf("hostile.example.com/blob-%d", k)] = blob[:60_000]
				}
			}
			obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
			obj.Spec.PodCIDR, obj.Spec.PodCIDRs = cidr, []string{cidr}
			objs = append(objs, obj)
		}
		start := time.Now()
		fatObjs, fatGood, fatCreated = objs, good, true
		forEachNode(t, objs, 8, func(ctx context.Context, obj *corev1.Node) error {
			_, err := l.Client().CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
			return err
		})
		metric(t, "fat_nodes_create_seconds", time.Since(start))

		for _, n := range nodes {
			want := stateFor(append(base[n], good...)...)
			d := measure(t, n.Name+" to program the good fat peers", 2*convergeTimeout, func() error { return checkPeerState(n.Netns, want) })
			metric(t, "fat_nodes_programmed_seconds_"+n.Name, d)
			lab.WaitFor(t, n.Name+" to skip the oversized fat peers", convergeTimeout, func() error {
				lines := logLines(n.Flanneld().Log(), `"Skipping peer"`, `node="fat-`, `rule="malformed"`)
				if len(lines) < count/2 {
					return fmt.Errorf("%d Skipping peer lines for fat Nodes, want %d", len(lines), count/2)
				}
				return nil
			})
		}
		rss, hwm := procStatusMiB(t, n1.Flanneld())
		metricValue(t, "rss_fat_nodes_mib", rss)
		metricValue(t, "hwm_fat_nodes_mib", hwm)
		if hwm >= manifestMemoryLimitMiB {
			t.Errorf("flanneld on n1 peaked at %.1f MiB (VmHWM; VmRSS %.1f MiB) with %d fat Nodes, over the manifest's limit of %d MiB", hwm, rss, count, manifestMemoryLimitMiB)
		}
		requireRunning(t, n1)
	})

	t.Run("fat Nodes at start-up", func(t *testing.T) {
		if !fatCreated {
			t.Skip("no fat Nodes (the previous subtest failed)")
		}
		// A flanneld (re)starting among them lists them all.
		n2.Flanneld().Stop()
		p := l.StartFlanneld(t, n2)
		n2.WaitReady(t, readyTimeout)
		lab.WaitFor(t, "restarted n2 to program the good fat peers", 2*convergeTimeout, func() error {
			return checkPeerState(n2.Netns, stateFor(append(base[n2], fatGood...)...))
		})
		rss, hwm := procStatusMiB(t, p)
		metricValue(t, "rss_fat_nodes_restart_mib", rss)
		metricValue(t, "hwm_fat_nodes_restart_mib", hwm)
		if hwm >= manifestMemoryLimitMiB {
			t.Errorf("flanneld started on n2 among %d fat Nodes peaked at %.1f MiB (VmHWM; VmRSS %.1f MiB), over the manifest's limit of %d MiB", fatCount, hwm, rss, manifestMemoryLimitMiB)
		}
		c.checkLogsBounded(t)

		start := time.Now()
		deleteFat(t)
		metric(t, "fat_nodes_delete_seconds", time.Since(start))
		c.healthy(t)
	})

	t.Run("each reason logged once", func(t *testing.T) {
		// One peer for each rule stays through a full pass: it is not
		// logged again.
		deleteFat(t) // if the start-up subtest did not get that far
		oversized := flannelAnnotations(peer{Name: "linger-malformed", PublicIP: fakePublicIP(20), MAC: fakeMAC(90)})
		oversized[data] = oversizedBackendData(fakeMAC(90), 5000)
		otherBackend := hostGWAnnotations(fakePublicIP(24))
		lingering := []struct {
			name, cidr string
			ann        map[string]string
			rule       map[*lab.Node]string
		}{
			{"linger-malformed", podCIDR(90), oversized, map[*lab.Node]string{n1: "malformed", n2: "malformed"}},
			{"linger-subnet", lab.Segment1.Prefix().String(), flannelAnnotations(peer{PublicIP: fakePublicIP(21), MAC: fakeMAC(91)}), map[*lab.Node]string{n1: "subnet", n2: "subnet"}},
			{"linger-public-ip", podCIDR(92), flannelAnnotations(peer{PublicIP: "224.0.0.1", MAC: fakeMAC(92)}), map[*lab.Node]string{n1: "public_ip", n2: "public_ip"}},
			// Inside n2's subnet: n2's own on n2, the older n2's on n1.
			{"linger-overlap", "10.244.2.0/25", flannelAnnotations(peer{PublicIP: fakePublicIP(23), MAC: fakeMAC(93)}), map[*lab.Node]string{n1: "conflict", n2: "subnet"}},
			{"linger-backend", podCIDR(94), otherBackend, map[*lab.Node]string{n1: "backend", n2: "backend"}},
		}
		var names []string
		for _, lp := range lingering {
			names = append(names, lp.name)
			cleanupNodes(t, l, lp.name)
			createNode(t, l, lp.name, lp.cidr, lp.ann)
		}
		for _, n := range nodes {
			for _, lp := range lingering {
				waitSkipped(t, n.Flanneld(), lp.name, lp.rule[n])
			}
			waitCounter(t, n, rejected("backend"))
		}
		c.waitFullPass(t)
		c.checkSkippedOnce(t, names...)
		c.checkLoggedOnce(t)
		c.checkLogsBounded(t)
		for _, name := range names {
			deleteNode(t, l, name)
		}
		c.healthy(t)
	})

	t.Run("no ping lost", func(t *testing.T) { c.stopPings(t) })
}

// hostGWAnnotations are the annotations of a host-gw peer at publicIP.
func hostGWAnnotations(publicIP string) map[string]string {
	return map[string]string{
		annotationPrefix + "kube-subnet-manager": "true",
		annotationPrefix + "backend-type":        "host-gw",
		annotationPrefix + "backend-data":        "null",
		annotationPrefix + "public-ip":           publicIP,
	}
}

// TestHostilePeersHostGW gives a host-gw cluster peers with every bad
// public-ip: host-gw routes a peer's subnet via its public IP on eth0, so
// any of them would send pod traffic into the void, or worse. None gets a
// route, each is skipped with rule="public_ip", the underlay routes stay.
func TestHostilePeersHostGW(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	if err := l.WriteNetConf(hostGWNetConf); err != nil {
		t.Fatal(err)
	}
	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	nodes := []*lab.Node{n1, n2}
	startAll(t, l, nodes)
	state := func(n *lab.Node) error { return checkDirectRoutes(n.Netns, directRoutesFor(n, nodes...)) }
	c := newHostileCluster(t, l, nodes, state, func(n *lab.Node) error { return apiServerAnswers(n.Netns) })

	t.Run("bad public-ip", func(t *testing.T) {
		bad := badPublicIPs(n1)
		name := func(i int) string { return "pubip-" + bad[i].name }
		ownOfN1 := "" // the podCIDR of the peer at n1's address
		for i, b := range bad {
			cleanupNodes(t, l, name(i))
			createNode(t, l, name(i), podCIDR(60+i), hostGWAnnotations(b.ip))
			if b.only != nil {
				ownOfN1 = podCIDR(60 + i)
			}
		}
		for _, n := range nodes {
			for i, b := range bad {
				if b.only != nil && b.only != n {
					continue
				}
				t.Logf("%s: %s", n.Name, waitSkipped(t, n.Flanneld(), name(i), "public_ip"))
				if routes, err := routesTo(n.Netns, podCIDR(60+i)); err != nil || len(routes) > 0 {
					t.Errorf("%s has routes for %s (public-ip %s): %v %v", n.Name, name(i), b.ip, routes, err)
				}
			}
			waitCounter(t, n, rejected("public_ip"))
			// Exactly the real peer's route (n2 may route to the peer at
			// n1's address: it is not n2's own).
			got, err := ownedRoutesOn(n.Netns, "eth0")
			if err != nil {
				t.Fatal(err)
			}
			var kept []string
			for _, r := range got {
				if !(n == n2 && strings.HasPrefix(r, ownOfN1+" ")) {
					kept = append(kept, r)
				}
			}
			if err := compareSets("flanneld's routes on eth0", kept, directRoutesFor(n, nodes...)); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if err := checkUnderlayRoutes(n, c.underlay[n]); err != nil {
				t.Errorf("%s with the hostile peers: %v", n.Name, err)
			}
		}
		lab.WaitPing(t, c.pods[0], c.pods[1].IP, pingTimeout)
		for i := range bad {
			deleteNode(t, l, name(i))
		}
		c.healthy(t)
	})

	t.Run("each reason logged once", func(t *testing.T) {
		c.checkLoggedOnce(t)
		c.checkLogsBounded(t)
	})

	t.Run("no ping lost", func(t *testing.T) { c.stopPings(t) })
}

// TestHostileNetworkZero: a Network of /0 (every address a pod address:
// peers' routes would swallow the underlay) or one longer than /30 is
// refused at start with exit status 1, naming it, before anything on the
// node is touched; in Kubernetes mode and in etcd mode.
func TestHostileNetworkZero(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)

	t.Run("kubernetes mode", func(t *testing.T) {
		l := lab.New(t)
		for i, c := range []struct {
			name, podCIDR, conf, why string
		}{
			{"Network 0.0.0.0/0", podCIDR(1), `{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}`, `0\.0\.0\.0/0`},
			{"Network longer than /30", "10.244.0.0/31", `{"Network":"10.244.0.0/31","Backend":{"Type":"vxlan"}}`, `10\.244\.0\.0/31`},
		} {
			t.Run(c.name, func(t *testing.T) {
				n := l.AddNode(t, fmt.Sprintf("n%d", i+1), c.podCIDR)
				conf := writeNodeFile(t, n, "net-conf.json", c.conf)
				checkRefusesConfig(t, l, n, conf, regexp.MustCompile(c.why))
				checkNetworkZeroUntouched(t, n)
			})
		}
	})

	t.Run("etcd mode", func(t *testing.T) {
		l := lab.NewBare(t)
		e := l.StartEtcd(t, lab.EtcdOptions{})
		e.PutNetworkConfig(t, `{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}`)
		n := l.AddBareNode(t, "n1")
		p := l.StartEtcdFlanneld(t, e, n, nil)
		code, exited := p.WaitExit(exitTimeout)
		if !exited {
			t.Fatalf("flanneld still running %v after start with Network 0.0.0.0/0; stderr:\n%s", exitTimeout, tailLines(p.Log(), 30))
		}
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		why := regexp.MustCompile(`0\.0\.0\.0/0`)
		if line := firstMatchingLine(p.Log(), why); line == "" {
			t.Errorf("no message names the Network 0.0.0.0/0:\n%s", tailLines(p.Log(), 20))
		} else {
			t.Logf("flanneld said: %s", line)
		}
		if keys := e.LeaseKeys(t); len(keys) > 0 {
			t.Errorf("lease keys written under %s/subnets: %v", lab.EtcdPrefix, keys)
		}
		if _, err := lab.ShowLink(n.Netns, vxlanDevice); err == nil {
			t.Errorf("%s was created", vxlanDevice)
		}
		if _, err := os.Stat(n.SubnetFile); err == nil {
			t.Errorf("subnet.env was written")
		}
		checkNetworkZeroUntouched(t, n)
	})
}

// checkNetworkZeroUntouched checks that n has no flannel firewall rule of
// any kind (iptables of both families, nftables) and its underlay routes.
func checkNetworkZeroUntouched(t *testing.T, n *lab.Node) {
	t.Helper()
	if err := checkNoFlannelIPTables(n.Netns); err != nil {
		t.Error(err)
	}
	if err := checkNoNFTTable(n.Netns, "ip", "flannel-ipv4"); err != nil {
		t.Error(err)
	}
	routes, err := underlayRoutesOf(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkUnderlayRoutes(n, routes); err != nil {
		t.Error(err)
	}
	if len(routes) != 2 {
		t.Errorf("routes: %q, want only the connected and the default route", routes)
	}
}

// etcdAnswers checks that etcd answers /health from inside node n.
func etcdAnswers(e *lab.Etcd) func(n *lab.Node) error {
	return func(n *lab.Node) error {
		resp, err := lab.HTTPClientIn(n.Netns, 5*time.Second).Get(e.URL + "/health")
		if err != nil {
			return fmt.Errorf("etcd unreachable: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("etcd /health: %s", resp.Status)
		}
		return nil
	}
}
