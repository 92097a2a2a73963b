package e2e

// Untrusted peers (issue 14): whoever can write a peer's Node (or its etcd
// lease) chooses the data flanneld programs from. Every hostile test
// (hostile_*_test.go) puts hostile peers next to healthy ones and checks
// that each is skipped with the contract's log line ("Skipping peer"
// node=... reason=... rule=<label>, logged once, bounded), Event and
// metric, that it leaves no trace in the kernel, and that the healthy
// nodes are unharmed: pods keep pinging (also without a single loss over
// the whole test), the underlay's own routes (the kernel's connected
// route, the default route) are unchanged, flanneld stays ready and the
// control plane stays reachable. This file holds what they share.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
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
	// forgedLogPrefix starts a fake klog line a hostile peer hides in its
	// data: it must never start a line of flanneld's log.
	forgedLogPrefix = "E0101 00:00:00.000000"
)

// startHostileNodes starts flanneld on two nodes, n1 and n2, of a new
// Kubernetes-mode lab whose net-conf.json is netConf (the lab's default
// if "").
func startHostileNodes(t *testing.T, netConf string) (*lab.Lab, []*lab.Node) {
	t.Helper()
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	if netConf != "" {
		if err := l.WriteNetConf(netConf); err != nil {
			t.Fatal(err)
		}
	}
	nodes := []*lab.Node{l.AddNode(t, "n1", podCIDR(1)), l.AddNode(t, "n2", podCIDR(2))}
	startAll(t, l, nodes)
	return l, nodes
}

// apiServerReachable checks that kube-apiserver answers from inside node n.
func apiServerReachable(n *lab.Node) error { return apiServerAnswers(n.Netns) }

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
// for a peer with subnet cidr and VtepMAC mac (checkNoHostileRoute, and
// no FDB entry for mac). An empty cidr or mac skips its checks.
func checkNoHostileTrace(ns, cidr, mac string) error {
	if cidr != "" {
		if err := checkNoHostileRoute(ns, cidr); err != nil {
			return err
		}
	}
	if mac == "" {
		return nil
	}
	return checkNoFDBEntry(ns, mac)
}

// checkNoHostileRoute checks that ns has no route to cidr owned by
// flanneld or on flannel.1 (a foreign route to it, such as the kernel's
// connected route when cidr is the underlay's, is checked by
// checkUnderlayRoutes), and no neighbour for its first address on
// flannel.1 or a permanent one anywhere.
func checkNoHostileRoute(ns, cidr string) error {
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
	return nil
}

// refusedBy reports whether node n must refuse a hostile peer that only
// the node only must refuse (every node if only is nil).
func refusedBy(only, n *lab.Node) bool { return only == nil || only == n }

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

// checkSkippedOnce checks that the current flanneld of node n logged
// exactly one "Skipping peer" line for each of names.
func checkSkippedOnce(t *testing.T, n *lab.Node, names ...string) {
	t.Helper()
	for _, name := range names {
		if lines := logLines(n.Flanneld().Log(), `"Skipping peer"`, `node="`+name+`"`); len(lines) != 1 {
			t.Errorf("%s logged %d Skipping peer lines for %s, want 1:\n%s", n.Name, len(lines), name, strings.Join(lines, "\n"))
		}
	}
}

// waitPeerSkippedEvent waits for the PeerSkipped Event on Node node about
// peer, checks that it is a Warning of at most maxEventMessageBytes, and
// returns its message.
func waitPeerSkippedEvent(t testing.TB, l *lab.Lab, node, peer string) string {
	t.Helper()
	prefix := "peer " + peer + " skipped: "
	var found corev1.Event
	err := lab.Poll(convergeTimeout, func() error {
		events, err := nodeEvents(l, node, "PeerSkipped")
		if err != nil {
			return err
		}
		for _, e := range events {
			if strings.HasPrefix(strings.TrimPrefix(e.Message, combinedEventPrefix), prefix) {
				found = e
				return nil
			}
		}
		return fmt.Errorf("%d PeerSkipped events on Node %s, none about %s", len(events), node, peer)
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

// withForgedLogLine pads the start of a JSON string value, head, to a
// value of size bytes that hides a fake klog line in its first bytes and
// closes the string and the object.
func withForgedLogLine(head string, size int) string {
	head += "\n" + forgedLogPrefix + `       1 forged.go:1] "Adding peer" node="forged"` + "\n"
	return head + strings.Repeat("A", size-len(head)-2) + `"}`
}

// oversizedBackendData is a backend-data annotation of size bytes that
// starts like a real one and hides a fake klog line in its first bytes.
func oversizedBackendData(mac string, size int) string {
	return withForgedLogLine(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q,"Pad":"`, mac), size)
}

// hostGWAnnotations are the annotations of a host-gw peer at publicIP.
func hostGWAnnotations(publicIP string) map[string]string {
	return backendAnnotations("host-gw", "null", publicIP)
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

// deleteNodeIfExists deletes the Node name; one already gone is no error.
func deleteNodeIfExists(ctx context.Context, l *lab.Lab, name string) error {
	err := l.Client().CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// cleanupNodes deletes the named Nodes, if they still exist, when t ends:
// a failed subtest leaves no hostile peer to the next.
func cleanupNodes(t testing.TB, l *lab.Lab, names ...string) {
	t.Cleanup(func() {
		for _, name := range names {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := deleteNodeIfExists(ctx, l, name)
			cancel()
			if err != nil {
				t.Errorf("deleting Node %s: %v", name, err)
			}
		}
	})
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
