package e2e

// The cluster every hostile test (hostile_*_test.go) runs: healthy nodes
// whose state, reachability, underlay routes, pings and logs are checked
// around the hostile peers.

import (
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
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

// checkUnderlay checks that node n has the underlay routes recorded before
// any hostile peer (when, such as " with the hostile peers", goes in the
// error).
func (c *hostileCluster) checkUnderlay(t *testing.T, n *lab.Node, when string) {
	t.Helper()
	if err := checkUnderlayRoutes(n, c.underlay[n]); err != nil {
		t.Errorf("%s%s: %v", n.Name, when, err)
	}
}

// pingFirstTwo waits until the first pod pings the second, and the second
// the first if both.
func (c *hostileCluster) pingFirstTwo(t *testing.T, both bool) {
	t.Helper()
	lab.WaitPing(t, c.pods[0], c.pods[1].IP, pingTimeout)
	if both {
		lab.WaitPing(t, c.pods[1], c.pods[0].IP, pingTimeout)
	}
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
		c.checkUnderlay(t, n, "")
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
