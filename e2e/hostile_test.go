package e2e

// Hostile peer Nodes in Kubernetes mode (issue 14), next to two vxlan
// nodes; the checks shared with the other hostile tests are in
// hostile_helpers_test.go and hostile_cluster_test.go, the fat Nodes in
// hostile_fat_test.go.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// entryConflictLog is logged once when a kernel entry flanneld wants is
// held by someone else.
const entryConflictLog = "Kernel entry conflicts with one flanneld does not own; leaving it alone"

// backendDataKey is the backend-data annotation.
const backendDataKey = annotationPrefix + "backend-data"

// kubeHostile is the cluster of TestHostilePeersKube: two vxlan nodes,
// n1 and n2, each with the other as its one real peer.
type kubeHostile struct {
	*hostileCluster
	n1, n2 *lab.Node
	// base are the real peers each node programs.
	base map[*lab.Node][]peer
	fat  *fatNodes
}

// newKubeHostile starts the cluster of TestHostilePeersKube.
func newKubeHostile(t *testing.T) *kubeHostile {
	t.Helper()
	l, nodes := startHostileNodes(t, "")
	n1, n2 := nodes[0], nodes[1]
	base := map[*lab.Node][]peer{n1: {realPeer(t, n2)}, n2: {realPeer(t, n1)}}
	state := func(n *lab.Node) error { return checkPeerState(n.Netns, stateFor(base[n]...)) }
	c := newHostileCluster(t, l, nodes, state, apiServerReachable)
	return &kubeHostile{hostileCluster: c, n1: n1, n2: n2, base: base, fat: newFatNodes(t, l)}
}

// stateWith is the exact state node n must have with its real peer and
// extra.
func (c *kubeHostile) stateWith(n *lab.Node, extra ...peer) peerState {
	return stateFor(append(slices.Clone(c.base[n]), extra...)...)
}

// TestHostilePeersKube puts hostile peer Nodes next to two vxlan nodes
// running flanneld: oversized annotations, podCIDRs outside the Network,
// a foreign route in the way of a peer's, a duplicate VtepMAC, bad
// public-ips, 200 Nodes fat with annotations (flanneld's memory stays
// under the manifest's limit, running and starting among them), and one
// peer per rule kept through a full pass (each logged once).
func TestHostilePeersKube(t *testing.T) {
	c := newKubeHostile(t)

	// The Events of flanneld on a Node are rate limited by client-go (a
	// burst of 25 Warnings, similar ones folded after 10): the subtests
	// that check Events come first.
	t.Run("oversized annotations", func(t *testing.T) { checkOversizedAnnotations(t, c) })
	t.Run("podCIDR outside the Network", func(t *testing.T) { checkPodCIDRsOutsideNetwork(t, c) })
	t.Run("foreign route in the way", func(t *testing.T) { checkForeignRouteInTheWay(t, c) })
	t.Run("duplicate VtepMAC", func(t *testing.T) { checkDuplicateVtepMAC(t, c) })
	t.Run("bad public-ip", func(t *testing.T) { checkBadPublicIPsVXLAN(t, c) })
	t.Run("fat Nodes memory", func(t *testing.T) { checkFatNodesMemory(t, c) })
	t.Run("fat Nodes at start-up", func(t *testing.T) { checkFatNodesAtStartup(t, c) })
	t.Run("each reason logged once", func(t *testing.T) { checkEachReasonLoggedOnce(t, c) })
	t.Run("no ping lost", func(t *testing.T) { c.stopPings(t) })
}

// checkOversizedAnnotations: a peer with a 250 KB backend-data is skipped
// as malformed, with a bounded log line and Event.
func checkOversizedAnnotations(t *testing.T, c *kubeHostile) {
	big := peer{Name: "hostile-big", PodCIDR: podCIDR(40), PublicIP: fakePublicIP(40), MAC: fakeMAC(40)}
	ann := flannelAnnotations(big)
	ann[backendDataKey] = oversizedBackendData(big.MAC, 250_000)
	cleanupNodes(t, c.l, big.Name)
	createNode(t, c.l, big.Name, big.PodCIDR, ann)
	for _, n := range c.nodes {
		line := waitSkipped(t, n.Flanneld(), big.Name, "malformed")
		t.Logf("%s (%d bytes): %s", n.Name, len(line), line)
		if size := fmt.Sprintf("(%d bytes)", len(ann[backendDataKey])); line != "" && !strings.Contains(line, size) {
			// Documentation/reliability.md shows the value's real size.
			t.Logf("note: %s's line does not give the annotation's size %s", n.Name, size)
		}
		msg := waitPeerSkippedEvent(t, c.l, n.Name, big.Name)
		t.Logf("%s event (%d bytes): %s", n.Name, len(msg), msg)
		waitCounter(t, n, rejected("malformed"))
		if err := checkNoHostileTrace(n.Netns, big.PodCIDR, big.MAC); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
		if err := c.state(n); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}
	c.checkLogsBounded(t)
	deleteNode(t, c.l, big.Name)
	c.healthy(t)
}

// checkPodCIDRsOutsideNetwork: peers whose podCIDR is outside the Network
// (the underlay, loopback, everything...) or inside a node's own subnet
// are skipped and leave the underlay routes alone.
func checkPodCIDRsOutsideNetwork(t *testing.T, c *kubeHostile) {
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
		{name: "hostile-own", cidr: "10.244.1.128/25", rule: map[*lab.Node]string{c.n2: "conflict"}},
	}
	for i, hc := range cases {
		p := peer{Name: hc.name, PodCIDR: hc.cidr, PublicIP: fakePublicIP(41 + i), MAC: fakeMAC(41 + i)}
		cleanupNodes(t, c.l, p.Name)
		createFakePeer(t, c.l, p)
	}
	for _, n := range c.nodes {
		for i, hc := range cases {
			rule := "subnet"
			if r, ok := hc.rule[n]; ok {
				rule = r
			}
			line := waitSkipped(t, n.Flanneld(), hc.name, rule)
			t.Logf("%s: %s", n.Name, line)
			if msg := waitPeerSkippedEvent(t, c.l, n.Name, hc.name); msg != "" {
				t.Logf("%s event: %s", n.Name, msg)
			}
			if err := checkNoHostileTrace(n.Netns, hc.cidr, fakeMAC(41+i)); err != nil {
				t.Errorf("%s has a trace of %s (%s): %v", n.Name, hc.name, hc.cidr, err)
			}
		}
		waitCounter(t, n, rejected("subnet"))
		if err := c.state(n); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
		c.checkUnderlay(t, n, " with the hostile peers")
	}
	waitCounter(t, c.n2, rejected("conflict"))
	c.pingFirstTwo(t, false)
	for _, hc := range cases {
		deleteNode(t, c.l, hc.name)
	}
	c.healthy(t)
}

// checkForeignRouteInTheWay: a blackhole route someone else put where n1
// wants a peer's route stays (n1 logs the conflict once, stays ready and
// retries), and n1's route goes in once the blackhole is gone.
func checkForeignRouteInTheWay(t *testing.T, c *kubeHostile) {
	n1, n2 := c.n1, c.n2
	p := peer{Name: "conflict-9", PodCIDR: podCIDR(9), PublicIP: fakePublicIP(9), MAC: fakeMAC(9)}
	conflicts := func() []string { return logLines(n1.Flanneld().Log(), entryConflictLog) }
	before := len(conflicts())
	mustExec(t, n1.Netns, "ip", "route", "add", "blackhole", p.PodCIDR)
	t.Cleanup(func() {
		for _, r := range mustRoutesTo(n1.Netns, p.PodCIDR) {
			if r.Type == "blackhole" {
				_, _ = lab.Exec(n1.Netns, "ip", "route", "del", "blackhole", p.PodCIDR)
			}
		}
	})
	cleanupNodes(t, c.l, p.Name)
	createFakePeer(t, c.l, p)
	for _, kind := range []string{"route", "neighbour", "fdb"} {
		lab.WaitFor(t, "n2 to program the "+kind+" of "+p.Name, convergeTimeout, func() error { return checkEntry(n2.Netns, kind, p) })
	}
	t.Logf("n1: %s", waitLogLine(t, n1.Flanneld(), convergeTimeout, entryConflictLog))
	checkBlackholeKept(t, n1, p.PodCIDR)
	if err := healthz(n1); err != nil {
		t.Errorf("n1: %v", err)
	}
	waitCounter(t, n1, `flanneld_entry_failures_total{kind="route",reason="conflict"}`)
	t.Logf("n1 event: %s", waitEvent(t, c.l, n1.Name, "EntryConflict"))
	if got := len(conflicts()) - before; got != 1 {
		t.Errorf("n1 logged the conflict %d times, want once:\n%s", got, strings.Join(conflicts(), "\n"))
	}
	requireRunning(t, n1)

	// The foreign route goes: flanneld's goes in at the next retry.
	mustExec(t, n1.Netns, "ip", "route", "del", "blackhole", p.PodCIDR)
	d := measure(t, "n1 to install its route once the blackhole is gone", 20*time.Second, func() error { return checkEntry(n1.Netns, "route", p) })
	metric(t, "entry_conflict_resolved_seconds", d)
	if err := checkPeerState(n1.Netns, c.stateWith(n1, p)); err != nil {
		t.Errorf("n1: %v", err)
	}
	if got := len(conflicts()) - before; got != 1 {
		t.Errorf("n1 logged the conflict %d times, want once", got)
	}
	deleteNode(t, c.l, p.Name)
	c.healthy(t)
}

// checkBlackholeKept checks, through the first retries (1 s, 2 s), that
// the only route of n to cidr stays the foreign blackhole route and that
// n stays ready.
func checkBlackholeKept(t *testing.T, n *lab.Node, cidr string) {
	t.Helper()
	blackholeOnly := func() error {
		routes, err := routesTo(n.Netns, cidr)
		if err != nil {
			return err
		}
		if len(routes) != 1 || routes[0].Type != "blackhole" || routes[0].Protocol == ownedProto {
			return fmt.Errorf("routes to %s: %v, want only the blackhole route", cidr, routes)
		}
		return nil
	}
	for end := time.Now().Add(3500 * time.Millisecond); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		if err := blackholeOnly(); err != nil {
			t.Errorf("%s: %v", n.Name, err)
			break
		}
		if err := readyz(n); err != nil {
			t.Errorf("%s with a conflicting entry: %v", n.Name, err)
			break
		}
	}
}

// mustRoutesTo is routesTo without the error (none on error).
func mustRoutesTo(ns, dst string) []lab.Route {
	routes, _ := routesTo(ns, dst)
	return routes
}

// checkDuplicateVtepMAC: a newcomer claims n2's VtepMAC: n1 keeps n2's
// FDB entry; then checkOlderMACClaimWins.
func checkDuplicateVtepMAC(t *testing.T, c *kubeHostile) {
	n1, n2 := c.n1, c.n2
	peer2 := c.base[n1][0]
	dup := peer{Name: "hostile-dup-mac", PodCIDR: podCIDR(50), PublicIP: fakePublicIP(50), MAC: peer2.MAC}
	cleanupNodes(t, c.l, dup.Name)
	createFakePeer(t, c.l, dup)
	t.Logf("n1: %s", waitSkipped(t, n1.Flanneld(), dup.Name, "conflict"))
	waitCounter(t, n1, rejected("conflict"))
	if err := checkNoHostileTrace(n1.Netns, dup.PodCIDR, ""); err != nil {
		t.Errorf("n1: %v", err)
	}
	if err := c.state(n1); err != nil {
		t.Errorf("n1 with a peer claiming n2's VtepMAC: %v", err)
	}
	t.Logf("n2 (whose MAC it is) logged: %q", logLines(n2.Flanneld().Log(), `node="`+dup.Name+`"`))
	c.pingFirstTwo(t, true)
	deleteNode(t, c.l, dup.Name)
	for _, n := range c.nodes {
		if err := lab.Poll(convergeTimeout, func() error { return c.state(n) }); err != nil {
			t.Errorf("%s after %s left: %v", n.Name, dup.Name, err)
		}
	}
	if err := checkEntry(n1.Netns, "fdb", peer2); err != nil {
		t.Errorf("n1: %v", err)
	}
	checkOlderMACClaimWins(t, c)
	c.healthy(t)
}

// checkOlderMACClaimWins: of two fake peers with one MAC the older claim
// wins even though the newer one's name sorts first, and the loser is
// programmed once the winner leaves.
func checkOlderMACClaimWins(t *testing.T, c *kubeHostile) {
	older := peer{Name: "claim-z", PodCIDR: podCIDR(51), PublicIP: fakePublicIP(51), MAC: fakeMAC(51)}
	newer := peer{Name: "claim-a", PodCIDR: podCIDR(52), PublicIP: fakePublicIP(52), MAC: older.MAC}
	cleanupNodes(t, c.l, older.Name, newer.Name)
	createFakePeer(t, c.l, older)
	for _, n := range c.nodes {
		lab.WaitFor(t, n.Name+" to program "+older.Name, convergeTimeout, func() error { return checkPeerState(n.Netns, c.stateWith(n, older)) })
	}
	time.Sleep(1100 * time.Millisecond) // creationTimestamp has 1 s resolution
	createFakePeer(t, c.l, newer)
	for _, n := range c.nodes {
		waitSkipped(t, n.Flanneld(), newer.Name, "conflict")
		if err := checkPeerState(n.Netns, c.stateWith(n, older)); err != nil {
			t.Errorf("%s with two claims of %s: %v", n.Name, older.MAC, err)
		}
	}
	deleteNode(t, c.l, older.Name)
	for _, n := range c.nodes {
		if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, c.stateWith(n, newer)) }); err != nil {
			t.Errorf("%s after the older claim %s left: %v", n.Name, older.Name, err)
		}
	}
	deleteNode(t, c.l, newer.Name)
}

// checkBadPublicIPsVXLAN: vxlan peers with every bad public-ip are skipped
// and leave no trace.
func checkBadPublicIPsVXLAN(t *testing.T, c *kubeHostile) {
	bad := badPublicIPs(c.n1)
	fake := func(i int) peer {
		return peer{Name: "pubip-" + bad[i].name, PodCIDR: podCIDR(60 + i), PublicIP: bad[i].ip, MAC: fakeMAC(60 + i)}
	}
	for i := range bad {
		cleanupNodes(t, c.l, fake(i).Name)
		createFakePeer(t, c.l, fake(i))
	}
	for _, n := range c.nodes {
		for i, b := range bad {
			if !refusedBy(b.only, n) {
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
	if err := c.state(c.n1); err != nil {
		t.Errorf("n1: %v", err)
	}
	c.pingFirstTwo(t, false)
	for i := range bad {
		deleteNode(t, c.l, fake(i).Name)
	}
	c.healthy(t)
}

// checkEachReasonLoggedOnce: one peer for each rule stays through a full
// pass: it is not logged again.
func checkEachReasonLoggedOnce(t *testing.T, c *kubeHostile) {
	n1, n2 := c.n1, c.n2
	c.fat.delete(t) // if the start-up subtest did not get that far
	oversized := flannelAnnotations(peer{Name: "linger-malformed", PublicIP: fakePublicIP(20), MAC: fakeMAC(90)})
	oversized[backendDataKey] = oversizedBackendData(fakeMAC(90), 5000)
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
		{"linger-backend", podCIDR(94), hostGWAnnotations(fakePublicIP(24)), map[*lab.Node]string{n1: "backend", n2: "backend"}},
	}
	var names []string
	for _, lp := range lingering {
		names = append(names, lp.name)
		cleanupNodes(t, c.l, lp.name)
		createNode(t, c.l, lp.name, lp.cidr, lp.ann)
	}
	for _, n := range c.nodes {
		for _, lp := range lingering {
			waitSkipped(t, n.Flanneld(), lp.name, lp.rule[n])
		}
		waitCounter(t, n, rejected("backend"))
	}
	c.waitFullPass(t)
	for _, n := range c.nodes {
		checkSkippedOnce(t, n, names...)
	}
	c.checkLoggedOnce(t)
	c.checkLogsBounded(t)
	for _, name := range names {
		deleteNode(t, c.l, name)
	}
	c.healthy(t)
}
