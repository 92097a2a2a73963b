package e2e

// IPv6 and dual stack in Kubernetes mode (REFERENCE sections 2-5): a lab
// with an IPv6 underlay (lab.WithIPv6), nodes with an IPv4 and an IPv6
// podCIDR, or an IPv6 one only.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

const (
	dualStackVXLANNetConf  = `{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`
	dualStackHostGWNetConf = `{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"host-gw"}}`
	ipv6OnlyVXLANNetConf   = `{"EnableIPv4":false,"IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`
)

// subnetEnvDualStack is the subnet.env of dual-stack lab node i.
func subnetEnvDualStack(i, mtu int) string {
	return fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=true\n",
		clusterNetwork, cniGateway(i), clusterNetwork6, cniGateway6(i), mtu)
}

// subnetEnvIPv6Only is the subnet.env of IPv6-only lab node i.
func subnetEnvIPv6Only(i, mtu int) string {
	return fmt.Sprintf("FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=true\n", clusterNetwork6, cniGateway6(i), mtu)
}

// newIPv6Cluster builds an IPv6 lab with net-conf.json conf and count
// nodes, node i with podCIDR(i) and podCIDR6(i) (podCIDR6(i) only unless
// dualStack). flanneld is not started.
func newIPv6Cluster(t *testing.T, conf string, count int, dualStack bool) (*lab.Lab, []*lab.Node) {
	t.Helper()
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t, lab.WithIPv6())
	if err := l.WriteNetConf(conf); err != nil {
		t.Fatal(err)
	}
	nodes := make([]*lab.Node, count)
	for i := range nodes {
		cidrs := []string{podCIDR6(i + 1)}
		if dualStack {
			cidrs = []string{podCIDR(i + 1), podCIDR6(i + 1)}
		}
		nodes[i] = l.AddNode(t, fmt.Sprintf("n%d", i+1), cidrs...)
	}
	return l, nodes
}

// checkVXLANPeers checks, exactly, node i's entries for its peers on the
// device of family fam (checkPeerStateOf), and that every route flanneld
// put there has its protocol.
func checkVXLANPeers(fam podFamily, nodes []*lab.Node, macs map[*lab.Node]string, i int) error {
	n := nodes[i]
	if err := checkPeerStateOf(n.Netns, fam, expectedPeerStateOf(fam, nodes, macs, i, nil)); err != nil {
		return err
	}
	owned := ownedRoutesOn
	if fam.ipv6 {
		owned = ownedRoutesOn6
	}
	got, err := owned(n.Netns, fam.device)
	if err != nil {
		return err
	}
	var want []string
	for j := range nodes {
		if j != i {
			want = append(want, fmt.Sprintf("%s via %s dev %s proto %s onlink", fam.podCIDR(j+1), fam.podNetAddr(j+1), fam.device, ownedProto))
		}
	}
	return compareSets("proto "+ownedProto+" routes on "+fam.device, got, want)
}

// checkPodAddrs checks that the pods have an IPv4 address in their node's
// IPv4 podCIDR when ipv4, an IPv6 address in the IPv6 one, and eth0 MTU mtu.
func checkPodAddrs(t *testing.T, pods []*lab.Pod, ipv4 bool, mtu int) {
	t.Helper()
	for _, p := range pods {
		v6 := netip.MustParsePrefix(p.Node.PodCIDR6())
		if !v6.Contains(p.IPv6) {
			t.Errorf("pod %s/%s: IPv6 address %s is not in %s", p.Node.Name, p.Name, p.IPv6, v6)
		}
		if ipv4 {
			if v4 := netip.MustParsePrefix(p.Node.PodCIDR); !p.IP.Is4() || !v4.Contains(p.IP) {
				t.Errorf("pod %s/%s: IPv4 address %s is not in %s", p.Node.Name, p.Name, p.IP, v4)
			}
		} else if addrs, err := lab.ShowAddrs(p.Netns, "eth0"); err != nil || len(addrs) > 0 {
			t.Errorf("pod %s/%s of an IPv6-only node has IPv4 addresses %v (%v)", p.Node.Name, p.Name, addrs, err)
		}
	}
	checkPodMTU(t, pods, mtu)
}

// checkDualStackPeers polls every node of a dual-stack vxlan cluster for
// its entries for its peers in both families (checkVXLANPeers), the
// devices' MACs being macs4 and macs6; when, if not empty, tells in the
// errors when this is.
func checkDualStackPeers(t *testing.T, nodes []*lab.Node, macs4, macs6 map[*lab.Node]string, when string) {
	t.Helper()
	if when != "" {
		when = " " + when
	}
	for i, n := range nodes {
		for _, c := range []struct {
			fam  podFamily
			macs map[*lab.Node]string
		}{{familyIPv4, macs4}, {familyIPv6, macs6}} {
			if err := lab.Poll(convergeTimeout, func() error { return checkVXLANPeers(c.fam, nodes, c.macs, i) }); err != nil {
				t.Errorf("%s, %s%s: %v", n.Name, c.fam.name, when, err)
			}
		}
	}
}

// addDualStackPods adds pods on nodes (addPods), checks their addresses
// and eth0 MTU mtu (checkPodAddrs) and pings between them over IPv4 and
// IPv6.
func addDualStackPods(t *testing.T, l *lab.Lab, nodes []*lab.Node, mtu int) []*lab.Pod {
	t.Helper()
	pods := addPods(t, l, nodes)
	checkPodAddrs(t, pods, true, mtu)
	pingAll(t, pods)
	pingAll6(t, pods)
	return pods
}

// TestDualStackVXLAN runs the vxlan backend dual stack on three nodes:
// flannel.1 and flannel-v6.1, both families' annotations, subnet.env and
// firewall rules, the per-peer entries of each family, pods that ping over
// both, a change of a peer's IPv6 address that touches only the IPv6
// entries, the repair of deleted IPv6 entries, a restart (both devices and
// MACs kept, also a flannel-v6.1 deleted meanwhile) and a deleted Node.
func TestDualStackVXLAN(t *testing.T) {
	l, nodes := newIPv6Cluster(t, dualStackVXLANNetConf, 3, true)
	startAll(t, l, nodes)

	t.Run("subnet.env", func(t *testing.T) { checkSubnetEnvs(t, nodes, subnetEnvDualStack, 1430) })

	macs4 := vtepMACsOf(t, nodes, vxlanDevice)
	macs6 := vtepMACsOf(t, nodes, vxlanDevice6)

	t.Run("node annotations", func(t *testing.T) {
		checkNodeAnnotations(t, l, nodes, func(i int, n *lab.Node) map[string]string {
			want := wantAnnotations("vxlan", vxlanBackendData(macs4[n]), underlayIP(i+1))
			want["backend-v6-data"] = vxlanBackendData(macs6[n])
			want["public-ipv6"] = n.IPv6.String()
			return want
		})
	})

	t.Run("vxlan devices", func(t *testing.T) {
		for i, n := range nodes {
			for _, fam := range []podFamily{familyIPv4, familyIPv6} {
				if err := checkVTEP(n.Netns, fam, fam.nodeIP(n), fam.podNetAddr(i+1)); err != nil {
					t.Errorf("%s: %v", n.Name, err)
				}
			}
		}
	})

	t.Run("peer routes neighbours fdb", func(t *testing.T) {
		checkDualStackPeers(t, nodes, macs4, macs6, "")
	})

	t.Run("firewall", func(t *testing.T) { checkFirewallRules(t, nodes, familyIPv4, familyIPv6) })

	var pods []*lab.Pod
	t.Run("ping between pods", func(t *testing.T) { pods = addDualStackPods(t, l, nodes, 1430) })

	// n3's IPv6 address changes (a second address on its eth0, advertised
	// in its public-ipv6 annotation): the other nodes move its IPv6 FDB
	// entry to the new address and leave everything else alone.
	t.Run("peer's IPv6 address changes", func(t *testing.T) {
		n3 := nodes[2]
		moved := lab.Segment1.Host6(113)
		mustExec(t, n3.Netns, "ip", "-6", "addr", "add", netip.PrefixFrom(moved, lab.Segment1.Prefix6().Bits()).String(), "dev", "eth0", "nodad")
		key := annotationPrefix + "public-ipv6"
		patchAnnotations(t, l, n3.Name, map[string]*string{key: ptr(moved.String())})
		for i, n := range nodes[:2] {
			want6 := expectedPeerStateOf(familyIPv6, nodes, macs6, i, nil)
			old := fmt.Sprintf("%s dev %s dst %s self permanent", macs6[n3], vxlanDevice6, n3.IPv6)
			want6.fdb[slices.Index(want6.fdb, old)] = fmt.Sprintf("%s dev %s dst %s self permanent", macs6[n3], vxlanDevice6, moved)
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerStateOf(n.Netns, familyIPv6, want6) }); err != nil {
				t.Errorf("%s after %s's public-ipv6 changed to %s: %v", n.Name, n3.Name, moved, err)
			}
			if err := checkVXLANPeers(familyIPv4, nodes, macs4, i); err != nil {
				t.Errorf("%s: the IPv4 entries changed with %s's public-ipv6: %v", n.Name, n3.Name, err)
			}
		}
		if len(pods) > 0 {
			pingAll6(t, []*lab.Pod{pods[0], podOn(pods, nodes[1]), podOn(pods, n3)})
			pingAll(t, []*lab.Pod{pods[0], podOn(pods, n3)})
		}

		patchAnnotations(t, l, n3.Name, map[string]*string{key: ptr(n3.IPv6.String())})
		for i, n := range nodes[:2] {
			if err := lab.Poll(convergeTimeout, func() error { return checkVXLANPeers(familyIPv6, nodes, macs6, i) }); err != nil {
				t.Errorf("%s after %s's public-ipv6 changed back: %v", n.Name, n3.Name, err)
			}
		}
		for _, n := range nodes {
			requireRunning(t, n)
		}
	})

	// Someone deletes n1's IPv6 entries for n2: the kernel's notification
	// triggers the repair, long before the periodic full pass would.
	t.Run("IPv6 entries repaired", func(t *testing.T) {
		n1, n2 := nodes[0], nodes[1]
		for _, argv := range [][]string{
			{"ip", "-6", "route", "del", podCIDR6(2), "dev", vxlanDevice6},
			{"ip", "-6", "neigh", "del", podNetAddr6(2), "dev", vxlanDevice6},
			{"bridge", "fdb", "del", macs6[n2], "dev", vxlanDevice6, "dst", n2.IPv6.String()},
		} {
			mustExec(t, n1.Netns, argv...)
		}
		d := measure(t, "n1's IPv6 entries for n2 to be repaired", repairTimeout, func() error {
			return checkVXLANPeers(familyIPv6, nodes, macs6, 0)
		})
		metric(t, "ipv6_entries_repair_seconds", d)
		if d > 10*time.Second {
			t.Errorf("the IPv6 entries were repaired after %v: not on the kernel's notification", d)
		}
		if len(pods) > 0 {
			pingAll6(t, []*lab.Pod{pods[0], podOn(pods, n2)})
		}
	})

	// A restart reuses both devices; a device gone meanwhile (a reboot)
	// comes back with the MAC of the node's backend-v6-data.
	t.Run("restart keeps both devices", func(t *testing.T) {
		n1 := nodes[0]
		before4, before6 := link(t, n1.Netns, vxlanDevice), link(t, n1.Netns, vxlanDevice6)
		n1.Flanneld().Stop()
		l.StartFlanneld(t, n1)
		n1.WaitReady(t, readyTimeout)
		for _, before := range []lab.Link{before4, before6} {
			if after := link(t, n1.Netns, before.IfName); after.IfIndex != before.IfIndex || after.Address != before.Address {
				t.Errorf("%s: %s was ifindex %d MAC %s, after the restart %d %s", n1.Name, before.IfName, before.IfIndex, before.Address, after.IfIndex, after.Address)
			}
		}

		n1.Flanneld().Stop()
		mustExec(t, n1.Netns, "ip", "link", "del", vxlanDevice6)
		l.StartFlanneld(t, n1)
		n1.WaitReady(t, readyTimeout)
		if after := link(t, n1.Netns, vxlanDevice6); after.Address != before6.Address {
			t.Errorf("%s: %s recreated with MAC %s, want %s (its backend-v6-data)", n1.Name, vxlanDevice6, after.Address, before6.Address)
		}
		for _, fam := range []podFamily{familyIPv4, familyIPv6} {
			if err := checkVTEP(n1.Netns, fam, fam.nodeIP(n1), fam.podNetAddr(1)); err != nil {
				t.Errorf("%s: %v", n1.Name, err)
			}
		}
		checkDualStackPeers(t, nodes, macs4, macs6, "after n1's restart")
		if len(pods) > 0 {
			pingAll6(t, []*lab.Pod{pods[0], podOn(pods, nodes[1])})
		}
	})

	t.Run("deleted node is removed from peers", func(t *testing.T) {
		gone := nodes[2]
		gone.Flanneld().Stop()
		l.DeleteNode(t, gone)
		for i, n := range nodes[:2] {
			for _, c := range []struct {
				fam  podFamily
				macs map[*lab.Node]string
			}{{familyIPv4, macs4}, {familyIPv6, macs6}} {
				want := expectedPeerStateOf(c.fam, nodes, c.macs, i, gone)
				if err := lab.Poll(convergeTimeout, func() error { return checkPeerStateOf(n.Netns, c.fam, want) }); err != nil {
					t.Errorf("%s, %s after deleting Node %s: %v", n.Name, c.fam.name, gone.Name, err)
				}
			}
		}
		if len(pods) > 0 {
			pingAll(t, []*lab.Pod{pods[0], podOn(pods, nodes[1])})
			pingAll6(t, []*lab.Pod{pods[0], podOn(pods, nodes[1])})
		}
	})
}

// TestDualStackEnableIPv6 enables IPv6 on a running vxlan cluster the way
// a DaemonSet rollout does, node by node: while n3 still runs without IPv6
// (its Node already has both podCIDRs, but no public-ipv6 and no
// backend-v6-data), the dual-stack nodes keep reaching it over IPv4 and
// only skip its IPv6 entries; once n3 runs dual stack too, every node
// programs its IPv6 entries and its new pods ping over IPv6.
func TestDualStackEnableIPv6(t *testing.T) {
	l, nodes := newIPv6Cluster(t, dualStackVXLANNetConf, 3, true)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	ipv4Only := writeNetConfFile(t, l, "ipv4", vxlanNetConf)
	startAll(t, l, nodes[:2])
	startAll(t, l, nodes[2:], ipv4Only)
	macs4 := vtepMACsOf(t, nodes, vxlanDevice)
	macs6 := vtepMACsOf(t, nodes[:2], vxlanDevice6)

	pods := []*lab.Pod{l.AddPod(t, n1, "p1"), l.AddPod(t, n2, "p1"), l.AddPod(t, n3, "p1")}
	t.Run("n3 without IPv6", func(t *testing.T) {
		for i, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkVXLANPeers(familyIPv4, nodes, macs4, i) }); err != nil {
				t.Errorf("%s, IPv4: %v", n.Name, err)
			}
		}
		for i, n := range nodes[:2] {
			want := expectedPeerStateOf(familyIPv6, nodes, macs6, i, n3)
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerStateOf(n.Netns, familyIPv6, want) }); err != nil {
				t.Errorf("%s, IPv6: %v", n.Name, err)
			}
			waitLogLine(t, n.Flanneld(), convergeTimeout, `"n3"`, "public-ipv6")
		}
		if _, err := lab.ShowLink(n3.Netns, vxlanDevice6); err == nil {
			t.Errorf("%s runs without IPv6 but has %s", n3.Name, vxlanDevice6)
		}
		if pods[2].IPv6.IsValid() {
			t.Errorf("pod %s/%s got IPv6 address %s from a node without IPv6", n3.Name, pods[2].Name, pods[2].IPv6)
		}
		pingAll(t, pods)
		pingAll6(t, pods[:2])
	})

	t.Run("n3 with IPv6", func(t *testing.T) {
		n3.Flanneld().Stop()
		startAll(t, l, nodes[2:])
		macs6[n3] = vtepMACOf(t, n3, vxlanDevice6)
		checkDualStackPeers(t, nodes, macs4, macs6, "")
		p2 := l.AddPod(t, n3, "p2")
		checkPodAddrs(t, []*lab.Pod{p2}, true, 1430)
		pingAll(t, append(pods, p2))
		pingAll6(t, []*lab.Pod{pods[0], pods[1], p2})
	})
}

// TestDualStackHostGW runs host-gw dual stack on three nodes of one
// segment: per peer one route per family via its address of that family,
// no device, MTU 1500, both families' rules, pods that ping over both.
func TestDualStackHostGW(t *testing.T) {
	l, nodes := newIPv6Cluster(t, dualStackHostGWNetConf, 3, true)
	startAll(t, l, nodes)

	t.Run("subnet.env", func(t *testing.T) { checkSubnetEnvs(t, nodes, subnetEnvDualStack, 1500) })

	t.Run("node annotations", func(t *testing.T) {
		checkNodeAnnotations(t, l, nodes, func(i int, n *lab.Node) map[string]string {
			want := wantAnnotations("host-gw", "null", underlayIP(i+1))
			want["backend-v6-data"] = "null"
			want["public-ipv6"] = n.IPv6.String()
			return want
		})
	})

	t.Run("no device", func(t *testing.T) {
		for _, n := range nodes {
			if err := checkNoVXLANDevice(n.Netns); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if link, err := lab.ShowLink(n.Netns, vxlanDevice6); err == nil {
				t.Errorf("%s: %s exists (%s)", n.Name, vxlanDevice6, link.LinkInfo.InfoKind)
			}
		}
	})

	t.Run("peer routes", func(t *testing.T) { checkHostGWRoutes(t, nodes, familyIPv4, familyIPv6) })

	t.Run("firewall", func(t *testing.T) { checkFirewallRules(t, nodes, familyIPv4, familyIPv6) })

	var pods []*lab.Pod
	t.Run("ping between pods", func(t *testing.T) { pods = addDualStackPods(t, l, nodes, 1500) })

	t.Run("repair", func(t *testing.T) {
		n1 := nodes[0]
		want4, want6 := directRoutesFor(n1, nodes...), directRoutesFor6(n1, nodes...)
		check := func(when string) {
			t.Helper()
			if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n1.Netns, want4) }); err != nil {
				t.Errorf("%s %s: %v", n1.Name, when, err)
			}
			if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes6(n1.Netns, want6) }); err != nil {
				t.Errorf("%s %s: %v", n1.Name, when, err)
			}
		}
		mustExec(t, n1.Netns, "ip", "-6", "route", "del", nodes[1].PodCIDR6())
		check("after deleting its IPv6 route to " + nodes[1].Name)
		// The kernel flushes every route through eth0, in both families.
		flapUnderlay(t, n1)
		check("after eth0 went down and up")
		if len(pods) > 0 {
			pingAll(t, []*lab.Pod{pods[0], pods[2], pods[3]})
			pingAll6(t, []*lab.Pod{pods[0], pods[2], pods[3]})
		}
		requireRunning(t, n1)
	})

	// By default the kernel also flushes eth0's IPv6 address when it goes
	// down, and the node's configuration adds it back only once the link
	// is up, possibly after flanneld has looked at its peers again and
	// found them unreachable: they are examined again on the next full
	// pass (every 30 s at the latest), not only when their Nodes change.
	t.Run("eth0 down and up, its IPv6 address back late", func(t *testing.T) {
		n1 := nodes[0]
		want4, want6 := directRoutesFor(n1, nodes...), directRoutesFor6(n1, nodes...)
		mustExec(t, n1.Netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.keep_addr_on_down=0")
		defer mustExec(t, n1.Netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.keep_addr_on_down=1")
		flapUnderlay(t, n1)
		d := measure(t, "n1's routes to be restored", repairTimeout, func() error {
			return errors.Join(checkDirectRoutes(n1.Netns, want4), checkDirectRoutes6(n1.Netns, want6))
		})
		metric(t, "hostgw_flap_ipv6_address_back_late_repair_seconds", d)
		if len(pods) > 0 {
			pingAll6(t, []*lab.Pod{pods[0], pods[2]})
		}
		requireRunning(t, n1)
	})
}

// TestIPv6OnlyVXLAN runs the vxlan backend IPv6-only (EnableIPv4 false) on
// three nodes, n3 behind the router, n2 finding eth0 by its IPv6 default
// route (no --iface): only flannel-v6.1, no IPv4 in subnet.env,
// annotations or firewall, pods that have only IPv6 and ping over it.
func TestIPv6OnlyVXLAN(t *testing.T) {
	l, nodes := newIPv6Cluster(t, ipv6OnlyVXLANNetConf, 2, false)
	nodes = append(nodes, l.AddNodeOn(t, lab.Segment2, "n3", podCIDR6(3)))
	for i, n := range nodes {
		if i == 1 {
			args := slices.DeleteFunc(l.FlanneldArgs(n), func(a string) bool { return strings.HasPrefix(a, "--iface=") })
			l.StartFlanneldCommand(t, n, []string{"NODE_NAME=" + n.Name}, append([]string{lab.RequireBinary(t, lab.BinaryFlanneld)}, args...))
			continue
		}
		l.StartFlanneld(t, n)
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}

	t.Run("subnet.env", func(t *testing.T) { checkSubnetEnvs(t, nodes, subnetEnvIPv6Only, 1430) })

	macs := vtepMACsOf(t, nodes, vxlanDevice6)

	t.Run("node annotations", func(t *testing.T) {
		checkNodeAnnotations(t, l, nodes, func(_ int, n *lab.Node) map[string]string {
			return map[string]string{
				"kube-subnet-manager": "true",
				"backend-type":        "vxlan",
				"backend-v6-data":     vxlanBackendData(macs[n]),
				"public-ipv6":         n.IPv6.String(),
				"public-ip":           "", // none
			}
		})
	})

	t.Run("vxlan device", func(t *testing.T) {
		for i, n := range nodes {
			if err := checkVTEP(n.Netns, familyIPv6, n.IPv6.String(), podNetAddr6(i+1)); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if err := checkNoVXLANDevice(n.Netns); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	t.Run("peer routes neighbours fdb", func(t *testing.T) {
		for i, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkVXLANPeers(familyIPv6, nodes, macs, i) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	t.Run("firewall", func(t *testing.T) {
		checkFirewallRules(t, nodes, familyIPv6)
		for _, n := range nodes {
			if out, err := lab.Exec(n.Netns, "iptables-save"); err != nil || strings.Contains(out, "FLANNEL") {
				t.Errorf("%s: IPv4 rules of an IPv6-only node (%v):\n%s", n.Name, err, out)
			}
		}
	})

	t.Run("ping between pods", func(t *testing.T) {
		pods := addPods(t, l, nodes)
		checkPodAddrs(t, pods, false, 1430)
		pingAll6(t, pods)
	})
}
