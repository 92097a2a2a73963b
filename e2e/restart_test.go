package e2e

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestRestart checks restart safety (issue 3, parts 2 and 3):
//
//   - kill -9 and restart while pods ping every 10 ms: not one ping lost,
//     the lease and the VTEP MAC unchanged, and nothing flushed and re-added
//     (watched with `ip monitor` / `bridge monitor` across the restart, and
//     by comparing the kernel state and the iptables counters);
//   - pruning on start: entries of peers deleted while flanneld was stopped
//     (and stray flanneld-marked routes) are removed once the Node cache has
//     synced, while other agents' routes, neighbours and FDB entries, and
//     the live peers' entries, are left alone.
func TestRestart(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)

	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	gone := peer{Name: "f3", PodCIDR: podCIDR(3), PublicIP: fakePublicIP(3), MAC: fakeMAC(3)}
	createFakePeer(t, l, gone)
	l.StartFlanneld(t, n1)
	l.StartFlanneld(t, n2)
	n1.WaitReady(t, readyTimeout)
	n2.WaitReady(t, readyTimeout)
	p1 := l.AddPod(t, n1, "p1")
	p2 := l.AddPod(t, n2, "p1")
	peer1, peer2 := realPeer(t, n1), realPeer(t, n2)
	lab.WaitFor(t, "n1 to program n2 and f3", convergeTimeout, func() error {
		return checkPeerState(n1.Netns, stateFor(peer2, gone))
	})
	lab.WaitPing(t, p1, p2.IP, pingTimeout)
	lab.WaitPing(t, p2, p1.IP, pingTimeout)

	t.Run("kill -9 without disruption", func(t *testing.T) {
		// Some traffic first, so that the forward rules' counters are
		// not zero and a flush-and-re-add would show.
		if _, err := lab.Exec(p1.Netns, "ping", "-c", "3", "-i", "0.2", p2.IP.String()); err != nil {
			t.Fatal(err)
		}
		before := snapshotNode(t, l, n1)
		if r, _ := routesTo(n1.Netns, peer2.PodCIDR); len(r) != 1 || r[0].Protocol != "102" {
			t.Errorf("route to %s: %v, want one with proto 102 (flanneld's mark)", peer2.PodCIDR, r)
		}
		mon := startMonitor(t, l, n1.Netns)

		const count = 1500 // 15 s at 10 ms
		ping12 := startPing(t, l, p1, p2.IP, 10*time.Millisecond, count)
		ping21 := startPing(t, l, p2, p1.IP, 10*time.Millisecond, count)
		time.Sleep(2 * time.Second)

		old := n1.Flanneld()
		old.Kill9()
		killed := time.Now()
		newProc := l.StartFlanneld(t, n1)
		d := measure(t, "flanneld on n1 to be ready again", readyTimeout, func() error { return readyz(n1) })
		metric(t, "restart_ready_seconds", d)
		metric(t, "restart_kill_to_ready_seconds", time.Since(killed))
		time.Sleep(2 * time.Second) // let the new process run its first passes
		if !ping12.running() || !ping21.running() {
			t.Errorf("the pings ended before flanneld had been ready for 2 s: they do not cover the restart (make count larger)")
		}

		for _, r := range []struct {
			name string
			run  *pingRun
		}{{"n1/p1 -> n2/p1", ping12}, {"n2/p1 -> n1/p1", ping21}} {
			sent, received := r.run.wait(t, 60*time.Second)
			metricValue(t, "restart_lost_pings_"+strings.NewReplacer("/", "", " -> ", "_").Replace(r.name), float64(sent-received))
			if sent != count || received != sent {
				t.Errorf("ping %s every 10 ms across kill -9 and restart: %d sent, %d received; want %d and no loss", r.name, sent, received, count)
			}
		}

		events := mon.stop(t)
		var ours []string
		for _, e := range events {
			if strings.Contains(e, vxlanDevice) || strings.Contains(e, "proto 102") {
				ours = append(ours, e)
			}
		}
		if len(ours) > 0 {
			t.Errorf("flanneld changed its own kernel state across the restart (want no route, neighbour or FDB event on %s):\n%s", vxlanDevice, strings.Join(ours, "\n"))
		}

		after := snapshotNode(t, l, n1)
		before.compare(t, after)
		requireRunning(t, n1)
		if lines := logLines(newProc.Log(), "Repaired drift"); len(lines) > 0 {
			t.Errorf("the restarted flanneld repaired something:\n%s", strings.Join(lines, "\n"))
		}
		if lines := logLines(newProc.Log(), `"Recreated device`); len(lines) > 0 {
			t.Errorf("the restarted flanneld recreated its device:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("prune on start", func(t *testing.T) {
		ns := n1.Netns
		n1.Flanneld().Stop()

		// While n1's flanneld is down: f3 leaves the cluster, and n1's
		// kernel gets stale flanneld state plus other agents' state.
		deleteNode(t, l, gone.Name)
		stray := peer{Name: "stray", PodCIDR: "10.244.77.0/24", PublicIP: "192.168.100.177", MAC: fakeMAC(77)}
		foreign := [][]string{
			{"ip", "route", "add", "10.250.0.0/24", "via", "192.168.100.13", "dev", "eth0", "proto", "static"},
			{"ip", "route", "add", "10.251.0.0/24", "dev", "eth0"},
			{"ip", "route", "add", "10.251.1.0/24", "dev", "cni0", "proto", "static"},
			{"ip", "neigh", "add", "192.168.100.99", "lladdr", "0a:00:00:00:00:99", "dev", "eth0", "nud", "permanent"},
			{"ip", "link", "add", "vxother", "type", "vxlan", "id", "77", "dstport", "4790", "nolearning"},
			{"bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxother", "dst", "192.168.100.250", "self", "permanent"},
			{"bridge", "fdb", "append", "0a:00:00:00:00:98", "dev", "vxother", "dst", "192.168.100.251", "self", "permanent"},
		}
		for _, argv := range append([][]string{
			{"ip", "neigh", "add", stray.gateway(), "lladdr", stray.MAC, "dev", vxlanDevice, "nud", "permanent"},
			{"bridge", "fdb", "append", stray.MAC, "dev", vxlanDevice, "dst", stray.PublicIP, "self", "permanent"},
			{"ip", "route", "add", stray.PodCIDR, "via", stray.gateway(), "dev", vxlanDevice, "onlink"},
			{"ip", "route", "add", "10.244.78.0/24", "via", "192.168.100.78", "dev", "eth0", "proto", "102"},
		}, foreign...) {
			mustExec(t, ns, argv...)
		}
		foreignBefore := foreignState(t, ns)
		if err := checkPeerState(ns, stateFor(peer2, gone, stray)); err != nil {
			t.Fatalf("n1 before the restart: %v", err)
		}
		// n2 stayed up and removed f3 at once.
		if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n2.Netns, stateFor(peer1)) }); err != nil {
			t.Errorf("n2 after Node f3 was deleted: %v", err)
		}
		mon := startMonitor(t, l, ns)

		start := time.Now()
		l.StartFlanneld(t, n1)
		pruned := func() error {
			if err := checkPeerState(ns, stateFor(peer2)); err != nil {
				return err
			}
			if r, err := routesTo(ns, "10.244.78.0/24"); err != nil || len(r) > 0 {
				return fmt.Errorf("route 10.244.78.0/24 proto 102 still there: %v %v", r, err)
			}
			return nil
		}
		d := measure(t, "n1 to prune f3, the stray entries and the proto 102 route", readyTimeout, pruned)
		metric(t, "prune_on_start_seconds", d)
		n1.WaitReady(t, readyTimeout)
		metric(t, "prune_restart_ready_seconds", time.Since(start))
		if err := pruned(); err != nil {
			t.Errorf("n1 once ready: %v", err)
		}
		time.Sleep(2 * time.Second)

		if got := foreignState(t, ns); !slices.Equal(got, foreignBefore) {
			t.Errorf("other agents' state changed:\n got:\n  %s\n want:\n  %s", strings.Join(got, "\n  "), strings.Join(foreignBefore, "\n  "))
		}
		// The live peer's entries were never touched.
		events := mon.stop(t)
		var touched []string
		for _, e := range events {
			if strings.Contains(e, peer2.PodCIDR) || strings.Contains(e, peer2.gateway()+" ") || strings.Contains(e, peer2.MAC) {
				touched = append(touched, e)
			}
		}
		if len(touched) > 0 {
			t.Errorf("the live peer n2's entries changed across the restart:\n%s", strings.Join(touched, "\n"))
		}
		var removed []string
		for _, e := range events {
			if strings.HasPrefix(e, "Deleted") {
				removed = append(removed, e)
			}
		}
		t.Logf("kernel events while flanneld started:\n%s", strings.Join(events, "\n"))
		if len(removed) == 0 {
			t.Errorf("no deletion seen by the monitor")
		}
		requireRunning(t, n1)
		lab.WaitPing(t, p1, p2.IP, pingTimeout)
		lab.WaitPing(t, p2, p1.IP, pingTimeout)
	})
}

// readyz asks flanneld on n for /readyz once.
func readyz(n *lab.Node) error {
	if p := n.Flanneld(); p != nil && !p.Running() {
		return fmt.Errorf("flanneld exited: %s", tailLines(p.Log(), 20))
	}
	resp, err := lab.HTTPClientIn(n.Netns, time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", lab.HealthzPort))
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s", resp.Status)
	}
	return nil
}

// healthz asks flanneld on n for /healthz once.
func healthz(n *lab.Node) error {
	resp, err := lab.HTTPClientIn(n.Netns, 2*time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", lab.HealthzPort))
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/healthz: %s", resp.Status)
	}
	return nil
}

// foreignState lists the state of other agents in ns that flanneld must
// never touch: routes not on flannel.1 and not proto 102 (minus the
// kernel's own), permanent neighbours off flannel.1, FDB entries of the
// other vxlan device.
func foreignState(t testing.TB, ns string) []string {
	t.Helper()
	var out []string
	routes, err := lab.ShowRoutes(ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dev != vxlanDevice && r.Protocol != "102" && r.Protocol != "kernel" {
			out = append(out, "route "+r.String())
		}
	}
	neighs, err := lab.ShowNeighbours(ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if n.Dev != vxlanDevice && slices.Contains(n.State, "PERMANENT") {
			out = append(out, "neigh "+n.String())
		}
	}
	if fdb, err := lab.ShowFDB(ns, "vxother"); err == nil {
		for _, f := range fdb {
			out = append(out, "fdb "+f.String())
		}
	}
	slices.Sort(out)
	return out
}

// monitor records route, neighbour and FDB events of a namespace.
type monitor struct {
	ns          string
	ip, bridge  *lab.Process
	canaryIndex int
}

// startMonitor runs `ip -4 monitor route neigh` and `bridge monitor fdb` in ns
// and returns once both are seen to report events.
func startMonitor(t testing.TB, l *lab.Lab, ns string) *monitor {
	t.Helper()
	m := &monitor{
		ns:     ns,
		ip:     l.Start(t, ns, "ip-monitor", nil, "ip", "-4", "monitor", "route", "neigh"),
		bridge: l.Start(t, ns, "bridge-monitor", nil, "bridge", "monitor", "fdb"),
	}
	m.canary(t)
	return m
}

var canaryCounter int

// canary makes one route event and one FDB event that the monitors must
// report, proving that they are listening (and flushing their output).
func (m *monitor) canary(t testing.TB) {
	t.Helper()
	canaryCounter++
	route := fmt.Sprintf("10.253.%d.0/24", canaryCounter%250)
	dev := "vxcanary"
	mustExec(t, m.ns, "ip", "route", "add", route, "dev", "eth0")
	mustExec(t, m.ns, "ip", "route", "del", route, "dev", "eth0")
	if _, err := lab.ShowLink(m.ns, dev); err != nil {
		mustExec(t, m.ns, "ip", "link", "add", dev, "type", "vxlan", "id", "4242", "dstport", "4791", "nolearning")
	}
	dst := fmt.Sprintf("192.168.100.%d", 100+canaryCounter%100)
	mustExec(t, m.ns, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", dst, "self", "permanent")
	lab.WaitFor(t, "the monitors to report the canary events", 10*time.Second, func() error {
		if !strings.Contains(m.ip.Stdout(), route) {
			return fmt.Errorf("ip monitor has not reported %s:\n%s", route, m.ip.Stdout())
		}
		if !strings.Contains(m.bridge.Stdout(), dst) {
			return fmt.Errorf("bridge monitor has not reported %s:\n%s", dst, m.bridge.Stdout())
		}
		return nil
	})
}

// stop checks the monitors still work, stops them and returns the events
// they saw, minus the canaries' and the underlay's ARP traffic.
func (m *monitor) stop(t testing.TB) []string {
	t.Helper()
	m.canary(t)
	m.ip.Stop()
	m.bridge.Stop()
	mustExec(t, m.ns, "ip", "link", "del", "vxcanary")
	var events []string
	for _, line := range strings.Split(m.ip.Stdout()+m.bridge.Stdout(), "\n") {
		switch {
		case line == "", strings.Contains(line, "10.253."), strings.Contains(line, "vxcanary"):
		case strings.Contains(line, "dev eth0") && !strings.Contains(line, "/") && !strings.Contains(line, "PERMANENT"):
			// ARP churn on the underlay.
		default:
			events = append(events, line)
		}
	}
	return events
}

// nodeSnapshot is everything that must survive a restart unchanged.
type nodeSnapshot struct {
	subnetEnv   string
	annotations map[string]string
	link        lab.Link
	addrs       []string
	peers       []string
	iptables    map[string][]counted
}

// counted is one iptables-save -c line: a rule (or chain) and its counters.
type counted struct {
	text           string
	packets, bytes uint64
}

// snapshotNode records n's state; with l nil (the API server is down) it
// leaves out the Node's annotations.
func snapshotNode(t testing.TB, l *lab.Lab, n *lab.Node) nodeSnapshot {
	t.Helper()
	var s nodeSnapshot
	env, err := os.ReadFile(n.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	s.subnetEnv = string(env)
	if l != nil {
		if s.annotations, err = nodeAnnotations(l, n.Name); err != nil {
			t.Fatal(err)
		}
	}
	s.link = link(t, n.Netns, vxlanDevice)
	addrs, err := lab.ShowAddrs(n.Netns, vxlanDevice)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		s.addrs = append(s.addrs, a.String())
	}
	routes, err := lab.ShowRoutes(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dev == vxlanDevice || r.Protocol == "102" {
			s.peers = append(s.peers, "route "+r.String())
		}
	}
	neighs, err := lab.ShowNeighbours(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	for _, nb := range neighs {
		if nb.Dev == vxlanDevice {
			s.peers = append(s.peers, "neigh "+nb.String())
		}
	}
	fdb, err := lab.ShowFDB(n.Netns, vxlanDevice)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fdb {
		s.peers = append(s.peers, "fdb "+f.String())
	}
	slices.Sort(s.peers)
	s.iptables = parseIPTablesCounters(mustExec(t, n.Netns, "iptables-save", "-c"))
	return s
}

var counterLine = regexp.MustCompile(`^(?:\[(\d+):(\d+)\] (.*)|(:\S+ \S+) \[(\d+):(\d+)\])$`)

// parseIPTablesCounters returns, per table, the chains and rules of
// `iptables-save -c` with their counters.
func parseIPTablesCounters(out string) map[string][]counted {
	tables := map[string][]counted{}
	table := ""
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "*") {
			table = line[1:]
			continue
		}
		m := counterLine.FindStringSubmatch(line)
		if m == nil || table == "" {
			continue
		}
		c := counted{text: m[3]}
		p, b := m[1], m[2]
		if c.text == "" {
			c.text, p, b = m[4], m[5], m[6]
		}
		c.packets, _ = strconv.ParseUint(p, 10, 64)
		c.bytes, _ = strconv.ParseUint(b, 10, 64)
		tables[table] = append(tables[table], c)
	}
	return tables
}

// compare reports what changed between two snapshots: anything but
// iptables counters growing.
func (s nodeSnapshot) compare(t testing.TB, after nodeSnapshot) {
	t.Helper()
	if after.subnetEnv != s.subnetEnv {
		t.Errorf("subnet.env changed:\n%s\nwas:\n%s", after.subnetEnv, s.subnetEnv)
	}
	if after.annotations != nil && fmt.Sprint(after.annotations) != fmt.Sprint(s.annotations) {
		t.Errorf("Node annotations changed: %v, were %v", after.annotations, s.annotations)
	}
	if after.link.Address != s.link.Address {
		t.Errorf("VTEP MAC changed: %s, was %s", after.link.Address, s.link.Address)
	}
	if after.link.IfIndex != s.link.IfIndex {
		t.Errorf("%s was recreated: ifindex %d, was %d", vxlanDevice, after.link.IfIndex, s.link.IfIndex)
	}
	if after.link.MTU != s.link.MTU || after.link.IsUp() != s.link.IsUp() {
		t.Errorf("%s changed: mtu %d up %v, was mtu %d up %v", vxlanDevice, after.link.MTU, after.link.IsUp(), s.link.MTU, s.link.IsUp())
	}
	if !slices.Equal(after.addrs, s.addrs) {
		t.Errorf("%s addresses changed: %v, were %v", vxlanDevice, after.addrs, s.addrs)
	}
	if !slices.Equal(after.peers, s.peers) {
		t.Errorf("peer state changed:\n now:\n  %s\n was:\n  %s", strings.Join(after.peers, "\n  "), strings.Join(s.peers, "\n  "))
	}
	for table, rules := range s.iptables {
		got := after.iptables[table]
		if len(got) != len(rules) {
			t.Errorf("iptables table %s: %d chains and rules, was %d", table, len(got), len(rules))
			continue
		}
		for i, r := range rules {
			switch {
			case got[i].text != r.text:
				t.Errorf("iptables table %s line %d: %q, was %q", table, i, got[i].text, r.text)
			case got[i].packets < r.packets || got[i].bytes < r.bytes:
				t.Errorf("iptables table %s: counters of %q went down from [%d:%d] to [%d:%d]: the rule was re-added",
					table, r.text, r.packets, r.bytes, got[i].packets, got[i].bytes)
			}
		}
	}
}
