package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestHostGWCluster runs flanneld with the host-gw backend on three nodes of
// one L2 segment and checks REFERENCE section 4 for host-gw: one route per
// peer via its public IP on eth0, no device, MTU = external MTU, the same
// annotations and firewall rules as any backend, and pods that ping.
func TestHostGWCluster(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	if err := l.WriteNetConf(hostGWNetConf); err != nil {
		t.Fatal(err)
	}
	nodes := make([]*lab.Node, 3)
	for i := range nodes {
		nodes[i] = l.AddNode(t, fmt.Sprintf("n%d", i+1), podCIDR(i+1))
	}
	startAll(t, l, nodes)

	t.Run("subnet.env", func(t *testing.T) { checkSubnetEnvs(t, nodes, subnetEnvWithMTU, 1500) })

	t.Run("node annotations", func(t *testing.T) { checkBackendAnnotations(t, l, nodes, "host-gw", nullBackendData) })

	t.Run("no device", func(t *testing.T) {
		for _, n := range nodes {
			if err := checkNoVXLANDevice(n.Netns); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	t.Run("peer routes", func(t *testing.T) { checkHostGWRoutes(t, nodes, familyIPv4) })

	t.Run("iptables", func(t *testing.T) { checkFirewallRules(t, nodes, familyIPv4) })

	var pods []*lab.Pod
	t.Run("ping between pods", func(t *testing.T) {
		pods = addPods(t, l, nodes)
		checkPodMTU(t, pods, 1500)
		pingAll(t, pods)
	})

	t.Run("repair", func(t *testing.T) {
		n1 := nodes[0]
		want := directRoutesFor(n1, nodes...)
		mustExec(t, n1.Netns, "ip", "route", "del", nodes[1].PodCIDR)
		if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n1.Netns, want) }); err != nil {
			t.Errorf("%s after deleting its route to %s: %v", n1.Name, nodes[1].Name, err)
		}
		// The kernel flushes every route through a link that goes down.
		flapUnderlay(t, n1)
		if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n1.Netns, want) }); err != nil {
			t.Errorf("%s after eth0 went down and up: %v", n1.Name, err)
		}
		if len(pods) > 0 {
			pingAll(t, []*lab.Pod{pods[0], pods[2], pods[3]})
		}
		requireRunning(t, n1)
	})

	t.Run("deleted node is removed from peers", func(t *testing.T) {
		gone := nodes[2]
		gone.Flanneld().Stop()
		l.DeleteNode(t, gone)
		for _, n := range nodes[:2] {
			want := directRoutesFor(n, nodes[:2]...)
			if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n.Netns, want) }); err != nil {
				t.Errorf("%s after deleting Node %s: %v", n.Name, gone.Name, err)
			}
		}
		if len(pods) == 0 {
			t.Skip("no pods to ping (the ping subtest failed)")
		}
		pingAll(t, []*lab.Pod{pods[0], pods[2]})
	})

	t.Run("node deleted while flanneld was down", func(t *testing.T) {
		n1 := nodes[0]
		const name, cidr = "f1", "10.244.50.0/24"
		addr := lab.Segment1.Host(250).String()
		createNode(t, l, name, cidr, map[string]string{
			annotationPrefix + "kube-subnet-manager": "true",
			annotationPrefix + "backend-type":        "host-gw",
			annotationPrefix + "backend-data":        "null",
			annotationPrefix + "public-ip":           addr,
		})
		want := append(directRoutesFor(n1, nodes[:2]...), directRouteTo(cidr, addr))
		if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n1.Netns, want) }); err != nil {
			t.Fatalf("%s: %v", n1.Name, err)
		}
		n1.Flanneld().Stop()
		deleteNode(t, l, name)
		l.StartFlanneld(t, n1)
		n1.WaitReady(t, readyTimeout)
		want = directRoutesFor(n1, nodes[:2]...)
		if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n1.Netns, want) }); err != nil {
			t.Errorf("%s after %s was deleted while it was down: %v", n1.Name, name, err)
		}
	})
}

// TestHostGWPeerBehindRouter runs host-gw with a peer on the other underlay
// segment: no node can route to a peer it reaches only through the router,
// so none installs a route for it and each logs a warning naming it; the
// peers that share a segment keep working.
func TestHostGWPeerBehindRouter(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	if err := l.WriteNetConf(hostGWNetConf); err != nil {
		t.Fatal(err)
	}
	n1 := l.AddNodeOn(t, lab.Segment1, "n1", podCIDR(1))
	n2 := l.AddNodeOn(t, lab.Segment1, "n2", podCIDR(2))
	n3 := l.AddNodeOn(t, lab.Segment2, "n3", podCIDR(3))
	nodes := []*lab.Node{n1, n2, n3}
	// host-gw's MTU is the external interface's, whatever it is.
	mustExec(t, n3.Netns, "ip", "link", "set", "eth0", "mtu", "1400")
	startAll(t, l, nodes)
	if got, want := n3.WaitSubnetEnv(t, convergeTimeout), subnetEnvWithMTU(3, 1400); got != want {
		t.Errorf("n3 (eth0 MTU 1400): subnet.env:\n%s\nwant:\n%s", got, want)
	}

	expect := map[*lab.Node][]string{
		n1: {directRoute(n2)},
		n2: {directRoute(n1)},
		n3: nil,
	}
	for _, n := range nodes {
		if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n.Netns, expect[n]) }); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}
	// No route of any kind for the other segment's subnets.
	for _, c := range []struct{ on, peer *lab.Node }{{n1, n3}, {n2, n3}, {n3, n1}, {n3, n2}} {
		if routes, err := routesTo(c.on.Netns, c.peer.PodCIDR); err != nil || len(routes) > 0 {
			t.Errorf("%s has routes for %s (%s) behind the router: %v %v", c.on.Name, c.peer.Name, c.peer.PodCIDR, routes, err)
		}
	}

	t.Run("warnings", func(t *testing.T) {
		for _, c := range []struct{ on, peer *lab.Node }{{n1, n3}, {n2, n3}, {n3, n1}, {n3, n2}} {
			line := waitLogLine(t, c.on.Flanneld(), convergeTimeout, "Skipping peer", `"`+c.peer.Name+`"`)
			if !strings.Contains(line, "L2 segment") || !strings.Contains(line, "gateway") {
				t.Errorf("%s: the warning about %s does not say it is not on this node's L2 segment and reached through a gateway:\n%s", c.on.Name, c.peer.Name, line)
			}
			if !strings.Contains(line, c.peer.IP.String()) {
				t.Errorf("%s: the warning about %s does not name its address %s:\n%s", c.on.Name, c.peer.Name, c.peer.IP, line)
			}
		}
		// Same-segment peers are not skipped.
		if lines := logLines(n1.Flanneld().Log(), "Skipping peer", `"n2"`); len(lines) > 0 {
			t.Errorf("n1 skipped its same-segment peer n2:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("same-segment pods ping", func(t *testing.T) {
		pingAll(t, []*lab.Pod{l.AddPod(t, n1, "p1"), l.AddPod(t, n2, "p1")})
	})

	t.Run("peer moves behind the router and back", func(t *testing.T) {
		const name, cidr = "f1", "10.244.50.0/24"
		near, far := lab.Segment1.Host(250).String(), lab.Segment2.Host(250).String()
		createNode(t, l, name, cidr, map[string]string{
			annotationPrefix + "kube-subnet-manager": "true",
			annotationPrefix + "backend-type":        "host-gw",
			annotationPrefix + "backend-data":        "null",
			annotationPrefix + "public-ip":           near,
		})
		check := func(want map[*lab.Node][]string) {
			t.Helper()
			for _, n := range nodes {
				if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n.Netns, want[n]) }); err != nil {
					t.Errorf("%s: %v", n.Name, err)
				}
			}
		}
		onSegment1 := map[*lab.Node][]string{
			n1: {directRoute(n2), directRouteTo(cidr, near)},
			n2: {directRoute(n1), directRouteTo(cidr, near)},
		}
		check(onSegment1)
		waitLogLine(t, n3.Flanneld(), convergeTimeout, "Skipping peer", `"`+name+`"`, near)

		patchAnnotations(t, l, name, map[string]*string{annotationPrefix + "public-ip": ptr(far)})
		check(map[*lab.Node][]string{
			n1: {directRoute(n2)},
			n2: {directRoute(n1)},
			n3: {directRouteTo(cidr, far)},
		})
		for _, n := range []*lab.Node{n1, n2} {
			waitLogLine(t, n.Flanneld(), convergeTimeout, "Skipping peer", `"`+name+`"`, far)
		}

		patchAnnotations(t, l, name, map[string]*string{annotationPrefix + "public-ip": ptr(near)})
		check(onSegment1)
	})

	t.Run("all running", func(t *testing.T) {
		for _, n := range nodes {
			requireRunning(t, n)
		}
	})
}
