package e2e

// Helpers shared by the backend tests (vxlan, host-gw, udp, DirectRouting,
// dual stack, backend switch; issue 4): net-conf files, expected direct
// routes, node annotations per backend, link counters, and the checks
// every backend's cluster test makes (subnet.env, annotations, firewall
// rules, pods that ping).

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/flanneld/flanneld/e2e/lab"
)

const (
	hostGWNetConf        = `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`
	vxlanNetConf         = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	directRoutingNetConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`

	// ownedProto is the route protocol flanneld marks its routes with.
	ownedProto = "102"
)

// writeNetConfFile writes a net-conf.json of its own into the lab directory
// and returns the flanneld flag that selects it, so nodes of one lab can run
// different configurations.
func writeNetConfFile(t testing.TB, l *lab.Lab, name, content string) string {
	t.Helper()
	path := filepath.Join(l.Dir(), "net-conf-"+name+".json")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return "--net-config-path=" + path
}

// startAll starts flanneld on every node with the extra arguments and waits
// until each is ready.
func startAll(t testing.TB, l *lab.Lab, nodes []*lab.Node, extraArgs ...string) {
	t.Helper()
	for _, n := range nodes {
		l.StartFlanneld(t, n, extraArgs...)
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}
}

// stopAll stops flanneld on every node (SIGTERM).
func stopAll(nodes []*lab.Node) {
	for _, n := range nodes {
		if p := n.Flanneld(); p != nil {
			p.Stop()
		}
	}
}

// directRoute is the route a node installs for a peer reached without
// encapsulation (host-gw, or vxlan DirectRouting), as lab.Route prints it.
func directRoute(peer *lab.Node) string {
	return fmt.Sprintf("%s via %s dev eth0 proto %s", peer.PodCIDR, peer.IP, ownedProto)
}

// directRouteTo is directRoute for a peer known only by subnet and address.
func directRouteTo(podCIDR, publicIP string) string {
	return fmt.Sprintf("%s via %s dev eth0 proto %s", podCIDR, publicIP, ownedProto)
}

// directRoutesFor is the direct route of every node in peers except self.
func directRoutesFor(self *lab.Node, peers ...*lab.Node) []string {
	var out []string
	for _, p := range peers {
		if p != self {
			out = append(out, directRoute(p))
		}
	}
	return out
}

// directRoutesFor6 is directRoutesFor for IPv6: the route to every peer's
// IPv6 podCIDR via its IPv6 address (lab.WithIPv6).
func directRoutesFor6(self *lab.Node, peers ...*lab.Node) []string {
	var out []string
	for _, p := range peers {
		if p != self {
			out = append(out, directRouteTo(p.PodCIDR6(), p.IPv6.String()))
		}
	}
	return out
}

// ownedRoutesOn returns, as strings, the routes of ns that flanneld owns
// (protocol 102) on device dev.
func ownedRoutesOn(ns, dev string) ([]string, error) {
	return ownedRoutesOf(lab.ShowRoutes, ns, dev)
}

// ownedRoutesOn6 is ownedRoutesOn for IPv6 routes.
func ownedRoutesOn6(ns, dev string) ([]string, error) {
	return ownedRoutesOf(lab.ShowRoutes6, ns, dev)
}

func ownedRoutesOf(show func(ns string) ([]lab.Route, error), ns, dev string) ([]string, error) {
	routes, err := show(ns)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range routes {
		if r.Protocol == ownedProto && r.Dev == dev {
			out = append(out, r.String())
		}
	}
	return out, nil
}

// checkDirectRoutes compares exactly the proto-102 routes on eth0 with want.
func checkDirectRoutes(ns string, want []string) error {
	got, err := ownedRoutesOn(ns, "eth0")
	if err != nil {
		return err
	}
	return compareSets("flanneld's routes on eth0", got, want)
}

// checkDirectRoutes6 is checkDirectRoutes for the IPv6 routes.
func checkDirectRoutes6(ns string, want []string) error {
	got, err := ownedRoutesOn6(ns, "eth0")
	if err != nil {
		return err
	}
	return compareSets("flanneld's IPv6 routes on eth0", got, want)
}

// compareSets compares two string lists as sets, with a readable error.
func compareSets(what string, got, want []string) error {
	got, want = slices.Clone(got), slices.Clone(want)
	slices.Sort(got)
	slices.Sort(want)
	if slices.Equal(got, want) {
		return nil
	}
	return fmt.Errorf("%s:\n got:\n  %s\n want:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
}

// checkNoVXLANDevice checks that flannel.1 does not exist in ns, and that
// no route of ns uses it.
func checkNoVXLANDevice(ns string) error {
	if link, err := lab.ShowLink(ns, vxlanDevice); err == nil {
		return fmt.Errorf("%s exists (%s, mtu %d)", vxlanDevice, link.LinkInfo.InfoKind, link.MTU)
	}
	routes, err := lab.ShowRoutes(ns)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Dev == vxlanDevice {
			return fmt.Errorf("route %s uses %s", r, vxlanDevice)
		}
	}
	neighs, err := lab.ShowNeighbours(ns)
	if err != nil {
		return err
	}
	for _, n := range neighs {
		if n.Dev == vxlanDevice {
			return fmt.Errorf("neighbour %s on %s", n, vxlanDevice)
		}
	}
	return nil
}

// subnetEnvWithMTU is the subnet.env of lab node i with the given MTU.
func subnetEnvWithMTU(i, mtu int) string {
	return fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=true\n", clusterNetwork, cniGateway(i), mtu)
}

// checkFlannelNode checks the flannel annotations a node writes on its own
// Node (REFERENCE section 3) for backend type backendType with
// backend-data backendData, and the NetworkUnavailable condition.
func checkFlannelNode(node *corev1.Node, backendType, backendData, publicIP string) error {
	return checkFlannelNodeWith(node, wantAnnotations(backendType, backendData, publicIP))
}

// wantAnnotations is what checkFlannelNode expects, as checkFlannelNodeWith
// takes it (keys without the prefix).
func wantAnnotations(backendType, backendData, publicIP string) map[string]string {
	return map[string]string{
		"kube-subnet-manager": "true",
		"backend-type":        backendType,
		"backend-data":        backendData,
		"public-ip":           publicIP,
	}
}

// checkFlannelNodeWith is checkFlannelNode with the expected annotations
// given as a map (keys without the prefix); an empty value means that the
// annotation must be absent.
func checkFlannelNodeWith(node *corev1.Node, want map[string]string) error {
	var problems []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		got, ok := node.Annotations[annotationPrefix+k]
		switch {
		case want[k] == "" && ok:
			problems = append(problems, fmt.Sprintf("annotation %s%s = %q, want none", annotationPrefix, k, got))
		case want[k] == "":
		case !ok:
			problems = append(problems, fmt.Sprintf("annotation %s%s missing", annotationPrefix, k))
		case got != want[k]:
			problems = append(problems, fmt.Sprintf("annotation %s%s = %q, want %q", annotationPrefix, k, got, want[k]))
		}
	}
	var cond *corev1.NodeCondition
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
			cond = &node.Status.Conditions[i]
		}
	}
	switch {
	case cond == nil:
		problems = append(problems, "no NetworkUnavailable condition")
	case cond.Status != corev1.ConditionFalse || cond.Reason != "FlannelIsUp":
		problems = append(problems, fmt.Sprintf("NetworkUnavailable = %s reason %q, want False reason FlannelIsUp", cond.Status, cond.Reason))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// echoCounter counts the ICMP echo requests to dst that leave ns through
// dev, by an nftables counter in a table of the test's own: the device's
// own traffic (IPv6 router solicitations, MLD reports) is not counted, as
// a device's TX counter would.
func echoCounter(t *testing.T, ns, dev string, dst netip.Addr) func() uint64 {
	t.Helper()
	table := "e2e_echoes"
	rule := fmt.Sprintf("oifname %q ip daddr %s icmp type echo-request counter", dev, dst)
	for _, cmd := range [][]string{
		{"add", "table", "inet", table},
		{"add", "chain", "inet", table, "out", "{ type filter hook postrouting priority 0; }"},
		{"flush", "chain", "inet", table, "out"},
		{"add", "rule", "inet", table, "out", rule},
	} {
		if out, err := lab.Exec(ns, append([]string{"nft"}, cmd...)...); err != nil {
			t.Fatalf("nft %s in %s: %v: %s", strings.Join(cmd, " "), ns, err, out)
		}
	}
	t.Cleanup(func() { _, _ = lab.Exec(ns, "nft", "delete", "table", "inet", table) })
	return func() uint64 {
		t.Helper()
		out, err := lab.Exec(ns, "nft", "list", "chain", "inet", table, "out")
		if err != nil {
			t.Fatalf("nft list chain in %s: %v: %s", ns, err, out)
		}
		var n uint64
		if i := strings.Index(out, "counter packets "); i < 0 {
			t.Fatalf("no counter in %s", out)
		} else if _, err := fmt.Sscanf(out[i:], "counter packets %d", &n); err != nil {
			t.Fatalf("counter in %q: %v", out, err)
		}
		return n
	}
}

// podOn returns the first of pods that runs on node n (nil if none).
func podOn(pods []*lab.Pod, n *lab.Node) *lab.Pod {
	for _, p := range pods {
		if p.Node == n {
			return p
		}
	}
	return nil
}

// flapUnderlay sets eth0 of node n down and up again, as a cable pull
// would. The kernel flushes every route through eth0 meanwhile, flanneld's
// and the lab's default routes alike (IPv4, and IPv6 in an IPv6 lab); the
// latter are put back here, as the node's network configuration would,
// and so is eth0's IPv6 address, in case the kernel flushed it too
// (without keep_addr_on_down).
func flapUnderlay(t testing.TB, n *lab.Node) {
	t.Helper()
	mustExec(t, n.Netns, "ip", "link", "set", "eth0", "down")
	time.Sleep(500 * time.Millisecond)
	mustExec(t, n.Netns, "ip", "link", "set", "eth0", "up")
	mustExec(t, n.Netns, "ip", "route", "replace", "default", "via", n.Segment.Gateway().String(), "dev", "eth0")
	if n.IPv6.IsValid() {
		addr := netip.PrefixFrom(n.IPv6, n.Segment.Prefix6().Bits()).String()
		mustExec(t, n.Netns, "ip", "-6", "addr", "replace", addr, "dev", "eth0", "nodad")
		mustExec(t, n.Netns, "ip", "-6", "route", "replace", "default", "via", n.Segment.Gateway6().String(), "dev", "eth0")
	}
}

// checkSubnetEnvs checks the subnet.env of every lab node i+1 of nodes
// against env(i+1, mtu), e.g. subnetEnvWithMTU or subnetEnvDualStack.
func checkSubnetEnvs(t *testing.T, nodes []*lab.Node, env func(i, mtu int) string, mtu int) {
	t.Helper()
	for i, n := range nodes {
		if got, want := n.WaitSubnetEnv(t, convergeTimeout), env(i+1, mtu); got != want {
			t.Errorf("%s: subnet.env:\n%s\nwant:\n%s", n.Name, got, want)
		}
	}
}

// checkNodeAnnotations polls the Node of every lab node i+1 of nodes for
// the flannel annotations want(i, n) (checkFlannelNodeWith) and the
// NetworkUnavailable condition. want is called before polling, so it may
// fail the test.
func checkNodeAnnotations(t *testing.T, l *lab.Lab, nodes []*lab.Node, want func(i int, n *lab.Node) map[string]string) {
	t.Helper()
	for i, n := range nodes {
		want := want(i, n)
		if err := lab.Poll(convergeTimeout, func() error { return checkFlannelNodeWith(l.GetNode(t, n), want) }); err != nil {
			t.Errorf("Node %s: %v", n.Name, err)
		}
	}
}

// checkBackendAnnotations is checkNodeAnnotations for an IPv4 cluster of
// lab nodes (checkFlannelNode): backend type backendType, backend-data
// backendData(n) and public-ip underlayIP(i+1).
func checkBackendAnnotations(t *testing.T, l *lab.Lab, nodes []*lab.Node, backendType string, backendData func(n *lab.Node) string) {
	t.Helper()
	checkNodeAnnotations(t, l, nodes, func(i int, n *lab.Node) map[string]string {
		return wantAnnotations(backendType, backendData(n), underlayIP(i+1))
	})
}

// nullBackendData is the backend-data of host-gw and udp nodes.
func nullBackendData(*lab.Node) string { return "null" }

// vxlanBackendData is the backend-data of a vxlan node whose device has
// MAC mac.
func vxlanBackendData(mac string) string {
	return fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac)
}

// checkFirewallRules polls every lab node i+1 of nodes, in each family of
// fams, for the rules of REFERENCE section 6 for its subnet of the family
// (checkNodeRules, checkNodeRules6).
func checkFirewallRules(t *testing.T, nodes []*lab.Node, fams ...podFamily) {
	t.Helper()
	for i, n := range nodes {
		for _, fam := range fams {
			check, tool := checkNodeRules, "iptables"
			if fam.ipv6 {
				check, tool = checkNodeRules6, "ip6tables"
			}
			if err := lab.Poll(convergeTimeout, func() error { return check(n.Netns, fam.podCIDR(i+1)) }); err != nil {
				t.Errorf("%s, %s: %v", n.Name, tool, err)
			}
		}
	}
}

// checkHostGWRoutes polls every node, in each family of fams, for exactly
// its direct routes to the other nodes (checkDirectRoutes,
// checkDirectRoutes6), then checks that flanneld owns no route on another
// device than eth0.
func checkHostGWRoutes(t *testing.T, nodes []*lab.Node, fams ...podFamily) {
	t.Helper()
	for _, n := range nodes {
		for _, fam := range fams {
			check, want := checkDirectRoutes, directRoutesFor(n, nodes...)
			if fam.ipv6 {
				check, want = checkDirectRoutes6, directRoutesFor6(n, nodes...)
			}
			if err := lab.Poll(convergeTimeout, func() error { return check(n.Netns, want) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		for _, fam := range fams {
			show := lab.ShowRoutes
			if fam.ipv6 {
				show = lab.ShowRoutes6
			}
			routes, err := show(n.Netns)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range routes {
				if r.Protocol == ownedProto && r.Dev != "eth0" {
					t.Errorf("%s: unexpected route %s", n.Name, r)
				}
			}
		}
	}
}

// addPods adds a pod p1 on every node and a second one, p2, on the first.
func addPods(t *testing.T, l *lab.Lab, nodes []*lab.Node) []*lab.Pod {
	t.Helper()
	pods := []*lab.Pod{l.AddPod(t, nodes[0], "p1"), l.AddPod(t, nodes[0], "p2")}
	for _, n := range nodes[1:] {
		pods = append(pods, l.AddPod(t, n, "p1"))
	}
	return pods
}

// checkPodMTU checks that eth0 of every pod has MTU mtu.
func checkPodMTU(t *testing.T, pods []*lab.Pod, mtu int) {
	t.Helper()
	for _, p := range pods {
		if link, err := lab.ShowLink(p.Netns, "eth0"); err != nil || link.MTU != mtu {
			t.Errorf("pod %s/%s eth0 MTU %d (%v), want %d", p.Node.Name, p.Name, link.MTU, err, mtu)
		}
	}
}

// checkTUNRestart restarts flanneld on n (start starts the new one), whose
// datapath is a TUN device dev it runs itself, while pod to (on another
// node) pings pod on (on n) every 20 ms. Stopped, flanneld leaves the
// device (persistent) with its route: pod traffic to other nodes is
// dropped there, never sent by another route (in clear, for wireguard);
// the new flanneld attaches to it (logging attached) rather than creating
// another. The pods lose each other for flanneld's restart (20-100 ms here):
// logged, and bounded loosely for a loaded machine.
func checkTUNRestart(t *testing.T, l *lab.Lab, n *lab.Node, dev, attached string, on, to *lab.Pod, start func()) {
	t.Helper()
	before, err := lab.ShowLink(n.Netns, dev)
	if err != nil {
		t.Fatal(err)
	}
	ping := l.Start(t, to.Netns, "ping-restart-"+dev, nil, "ping", "-n", "-i", "0.02", "-W", "1", on.IP.String())
	time.Sleep(time.Second)
	n.Flanneld().Stop()
	if out, err := lab.Exec(n.Netns, "ip", "route", "get", to.IP.String()); err != nil || !strings.Contains(out, "dev "+dev+" ") {
		t.Errorf("while flanneld is stopped, the route to %s: %q (%v); want it on %s", to.IP, out, err, dev)
	}
	start()
	n.WaitReady(t, readyTimeout)
	if len(logLines(n.Flanneld().Log(), attached)) == 0 {
		t.Errorf("the restarted flanneld did not attach to the TUN its predecessor left:\n%s", n.Flanneld().Log())
	}
	if after, err := lab.ShowLink(n.Netns, dev); err != nil || after.IfIndex != before.IfIndex {
		t.Errorf("%s after the restart: %+v (%v), want the same device (index %d)", dev, after, err, before.IfIndex)
	}
	if err := lab.Poll(pingTimeout, func() error { return lab.Ping(to, on.IP) }); err != nil {
		t.Fatalf("no ping after the restart: %v", err)
	}
	time.Sleep(time.Second)
	ping.Signal(2) // SIGINT: ping prints its summary
	ping.WaitExit(5 * time.Second)
	lost, sent := pingLoss(ping.Stdout())
	t.Logf("restart of flanneld on %s (%s): %d of %d pings lost (%v at 20 ms)",
		n.Name, dev, lost, sent, time.Duration(lost)*20*time.Millisecond)
	if lost < 0 || lost > 50 {
		t.Errorf("%d pings lost (more than 1 s)", lost)
	}
}

// pingLoss reads ping's summary: packets lost and sent.
func pingLoss(out string) (lost, sent int) {
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(out)
	if m == nil {
		return -1, -1
	}
	var rx int
	fmt.Sscan(m[1], &sent)
	fmt.Sscan(m[2], &rx)
	return sent - rx, sent
}
