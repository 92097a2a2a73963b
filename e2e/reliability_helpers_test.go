package e2e

// Helpers shared by the reliability tests (issue 3): measured polling,
// "fake" peer Nodes created through the API, expected per-peer state,
// long-running pings and log inspection.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flanneld/flanneld/e2e/lab"
)

// fastPoll is the polling interval of measured waits: fine enough that the
// figures mean something (one `ip` call takes a few milliseconds).
const fastPoll = 10 * time.Millisecond

// metric logs one measured figure in the format the reliability report
// collects: `METRIC name=seconds`.
func metric(t testing.TB, name string, d time.Duration) {
	t.Helper()
	t.Logf("METRIC %s=%.3f", name, d.Seconds())
}

// metricValue logs a figure that is not a duration.
func metricValue(t testing.TB, name string, v float64) {
	t.Helper()
	t.Logf("METRIC %s=%g", name, v)
}

// measure polls check every fastPoll from now until it succeeds and returns
// how long that took; it fails the test with the last error after timeout
// (a generous deadline, never a speed target).
func measure(t testing.TB, what string, timeout time.Duration, check func() error) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := check()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(fastPoll)
	}
}

// peer is what a node needs to know of another node to program it.
type peer struct {
	Name     string
	PodCIDR  string // e.g. 10.244.2.0/24
	PublicIP string
	MAC      string // VtepMAC
}

// gateway is the address of the peer's flannel.1 (the subnet's first address).
func (p peer) gateway() string {
	return netip.MustParsePrefix(p.PodCIDR).Masked().Addr().String()
}

// realPeer describes lab node n (its flanneld must have created flannel.1).
func realPeer(t testing.TB, n *lab.Node) peer {
	t.Helper()
	return peer{Name: n.Name, PodCIDR: n.PodCIDR, PublicIP: n.IP.String(), MAC: vtepMAC(t, n)}
}

// stateFor is the exact vxlan state a node must hold for peers.
func stateFor(peers ...peer) peerState {
	var s peerState
	for _, p := range peers {
		s.routes = append(s.routes, fmt.Sprintf("%s via %s dev %s onlink", p.PodCIDR, p.gateway(), vxlanDevice))
		s.neighbours = append(s.neighbours, fmt.Sprintf("%s dev %s lladdr %s PERMANENT", p.gateway(), vxlanDevice, p.MAC))
		s.fdb = append(s.fdb, fmt.Sprintf("%s dev %s dst %s self permanent", p.MAC, vxlanDevice, p.PublicIP))
	}
	return s
}

// flannelAnnotations are the annotations flanneld writes on its own Node,
// for a fake peer.
func flannelAnnotations(p peer) map[string]string {
	return backendAnnotations("vxlan", fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, p.MAC), p.PublicIP)
}

// backendAnnotations are the annotations flanneld writes on its own Node
// for backend type backendType with backend-data backendData.
func backendAnnotations(backendType, backendData, publicIP string) map[string]string {
	return map[string]string{
		annotationPrefix + "kube-subnet-manager": "true",
		annotationPrefix + "backend-type":        backendType,
		annotationPrefix + "backend-data":        backendData,
		annotationPrefix + "public-ip":           publicIP,
	}
}

// createNode creates a Node with the given podCIDR (none if "") and
// annotations, with no namespace and no daemon behind it: enough to check
// the kernel state other nodes program for it.
func createNode(t testing.TB, l *lab.Lab, name, podCIDR string, annotations map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
	if podCIDR != "" {
		obj.Spec.PodCIDR = podCIDR
		obj.Spec.PodCIDRs = []string{podCIDR}
	}
	if _, err := l.Client().CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating Node %s: %v", name, err)
	}
}

// createFakePeer creates a Node that looks like one running flanneld.
func createFakePeer(t testing.TB, l *lab.Lab, p peer) {
	t.Helper()
	createNode(t, l, p.Name, p.PodCIDR, flannelAnnotations(p))
}

// patchAnnotations sets (value non-nil) or removes (nil) annotations of a
// Node with a merge patch.
func patchAnnotations(t testing.TB, l *lab.Lab, name string, changes map[string]*string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": changes}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Client().CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patching the annotations of Node %s: %v", name, err)
	}
}

// deleteNode deletes a Node object by name.
func deleteNode(t testing.TB, l *lab.Lab, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := l.Client().CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting Node %s: %v", name, err)
	}
}

func ptr(s string) *string { return &s }

// fakeMAC is a locally administered unicast MAC for fake peer i.
func fakeMAC(i int) string { return fmt.Sprintf("0a:58:0a:f4:%02x:%02x", i/256, i%256) }

// fakePublicIP is an unused underlay address for fake peer i.
func fakePublicIP(i int) string { return fmt.Sprintf("192.168.100.%d", 200+i) }

// mustExec runs argv in ns and fails the test on error.
func mustExec(t testing.TB, ns string, argv ...string) string {
	t.Helper()
	out, err := lab.Exec(ns, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// logLines returns the lines of text that contain every one of parts.
func logLines(text string, parts ...string) []string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		ok := line != ""
		for _, p := range parts {
			if !strings.Contains(line, p) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// waitLogLine waits until p's log has a line containing every part.
func waitLogLine(t testing.TB, p *lab.Process, timeout time.Duration, parts ...string) string {
	t.Helper()
	var line string
	lab.WaitFor(t, fmt.Sprintf("a log line of %s with %q", p.Name, parts), timeout, func() error {
		lines := logLines(p.Log(), parts...)
		if len(lines) == 0 {
			return fmt.Errorf("none yet")
		}
		line = lines[0]
		return nil
	})
	return line
}

// requireRunning fails the test when flanneld on n is not running.
func requireRunning(t testing.TB, n *lab.Node) {
	t.Helper()
	p := n.Flanneld()
	if p == nil || !p.Running() {
		log := ""
		if p != nil {
			log = p.Log()
		}
		t.Fatalf("flanneld on %s is not running; log:\n%s", n.Name, tailLines(log, 40))
	}
	if lines := logLines(p.Log(), "panic"); len(lines) > 0 {
		t.Fatalf("flanneld on %s logged a panic:\n%s", n.Name, strings.Join(lines, "\n"))
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// pingRun is a `ping` running in a pod in the background.
type pingRun struct {
	proc  *lab.Process
	count int
}

// startPing sends count echo requests every interval from pod from to to.
// ping waits for the reply of the last request, so a completed run has no
// request in flight: every missing reply is a lost packet.
func startPing(t testing.TB, l *lab.Lab, from *lab.Pod, to netip.Addr, interval time.Duration, count int) *pingRun {
	t.Helper()
	p := l.Start(t, from.Netns, "ping-"+from.Node.Name+"-"+from.Name, nil,
		"ping", "-n", "-q", "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64),
		"-W", "1", "-c", strconv.Itoa(count), to.String())
	return &pingRun{proc: p, count: count}
}

// pingStats is ping's summary line.
var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// wait waits for the run to end and returns the requests sent and the
// replies received.
func (r *pingRun) wait(t testing.TB, timeout time.Duration) (sent, received int) {
	t.Helper()
	if _, ok := r.proc.WaitExit(timeout); !ok {
		r.proc.Signal(syscall.SIGINT)
		r.proc.WaitExit(5 * time.Second)
		t.Errorf("ping did not finish within %v", timeout)
	}
	m := pingStats.FindStringSubmatch(r.proc.Stdout())
	if m == nil {
		t.Fatalf("no summary in ping's output:\n%s\nstderr:\n%s", r.proc.Stdout(), r.proc.Log())
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received
}

// running reports whether ping is still sending.
func (r *pingRun) running() bool { return r.proc.Running() }

// routesTo returns every main-table route of ns whose destination is dst,
// on any device.
func routesTo(ns, dst string) ([]lab.Route, error) {
	routes, err := lab.ShowRoutes(ns)
	if err != nil {
		return nil, err
	}
	var out []lab.Route
	for _, r := range routes {
		if r.Dst == dst {
			out = append(out, r)
		}
	}
	return out, nil
}

// checkNoTraceOf checks that ns holds no route for cidr, no neighbour on
// flannel.1 for its first address with lladdr mac (any lladdr if mac is
// ""), and no FDB entry for mac. An empty cidr skips the route and
// neighbour checks, an empty mac the FDB check.
func checkNoTraceOf(ns, cidr, mac string) error {
	if cidr != "" {
		routes, err := routesTo(ns, cidr)
		if err != nil {
			return err
		}
		if len(routes) > 0 {
			return fmt.Errorf("route for %s present: %v", cidr, routes)
		}
		gw := netip.MustParsePrefix(cidr).Masked().Addr().String()
		neighs, err := lab.ShowNeighbours(ns)
		if err != nil {
			return err
		}
		for _, n := range neighs {
			// An overlapping peer that was kept may share the address.
			if n.Dst == gw && n.Dev == vxlanDevice && (mac == "" || strings.EqualFold(n.LLAddr, mac)) {
				return fmt.Errorf("neighbour for %s present: %v", gw, n)
			}
		}
	}
	if mac == "" {
		return nil
	}
	return checkNoFDBEntry(ns, mac)
}

// checkNoFDBEntry checks that flannel.1 in ns has no FDB entry for mac.
func checkNoFDBEntry(ns, mac string) error {
	fdb, err := lab.ShowFDB(ns, vxlanDevice)
	if err != nil {
		return err
	}
	for _, f := range fdb {
		if strings.EqualFold(f.MAC, mac) {
			return fmt.Errorf("fdb entry for %s present: %v", mac, f)
		}
	}
	return nil
}
