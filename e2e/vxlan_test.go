package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flanneld/flanneld/e2e/lab"
)

// Deadlines: generous, since they bound polling and never measure speed.
const (
	readyTimeout    = 60 * time.Second
	convergeTimeout = 30 * time.Second
	pingTimeout     = 20 * time.Second
)

// TestVXLANCluster runs flanneld with the vxlan backend on three nodes and
// checks what REFERENCE sections 3-6 promise, the datapath, and peer removal.
func TestVXLANCluster(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)

	nodes := make([]*lab.Node, 3)
	for i := range nodes {
		nodes[i] = l.AddNode(t, fmt.Sprintf("n%d", i+1), podCIDR(i+1))
	}
	for _, n := range nodes {
		l.StartFlanneld(t, n)
	}
	for _, n := range nodes {
		if err := n.PollReady(readyTimeout); err != nil {
			t.Errorf("flanneld on %s: /readyz: %v", n.Name, err)
		}
	}

	t.Run("subnet.env", func(t *testing.T) { checkSubnetEnvs(t, nodes, subnetEnvWithMTU, 1450) })

	t.Run("node annotations", func(t *testing.T) {
		checkBackendAnnotations(t, l, nodes, "vxlan", func(n *lab.Node) string { return vxlanBackendData(vtepMAC(t, n)) })
	})

	t.Run("vxlan device", func(t *testing.T) {
		for i, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkVXLANDevice(n.Netns, i+1) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	t.Run("peer routes neighbours fdb", func(t *testing.T) {
		macs := vtepMACs(t, nodes)
		for i, n := range nodes {
			want := expectedPeerState(nodes, macs, i, nil)
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, want) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	t.Run("iptables", func(t *testing.T) { checkFirewallRules(t, nodes, familyIPv4) })

	var pods []*lab.Pod
	t.Run("ping between pods", func(t *testing.T) {
		pods = addPods(t, l, nodes)
		pingAll(t, pods)
	})

	t.Run("deleted node is removed from peers", func(t *testing.T) {
		macs := vtepMACs(t, nodes)
		gone := nodes[2]
		if p := gone.Flanneld(); p != nil {
			p.Stop()
		}
		l.DeleteNode(t, gone)
		for i, n := range nodes[:2] {
			want := expectedPeerState(nodes, macs, i, gone)
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, want) }); err != nil {
				t.Errorf("%s after deleting Node %s: %v", n.Name, gone.Name, err)
			}
		}
		var remaining []*lab.Pod
		for _, p := range pods {
			if p.Node != gone {
				remaining = append(remaining, p)
			}
		}
		if len(remaining) < 2 {
			t.Skip("no pods to ping (the ping subtest failed)")
		}
		pingAll(t, remaining)
	})
}

// pingAll pings between every ordered pair of pods.
func pingAll(t *testing.T, pods []*lab.Pod) {
	t.Helper()
	pingAllAt(t, pods, func(p *lab.Pod) netip.Addr { return p.IP })
}

// pingAll6 pings between every ordered pair of pods over IPv6.
func pingAll6(t *testing.T, pods []*lab.Pod) {
	t.Helper()
	pingAllAt(t, pods, func(p *lab.Pod) netip.Addr { return p.IPv6 })
}

// pingAllAt pings between every ordered pair of pods, from the pod to the
// address addr picks of the other.
func pingAllAt(t *testing.T, pods []*lab.Pod, addr func(*lab.Pod) netip.Addr) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			dst := addr(to)
			if !dst.IsValid() {
				t.Errorf("pod %s/%s has no address to ping", to.Node.Name, to.Name)
				continue
			}
			err := lab.Poll(pingTimeout, func() error { return lab.Ping(from, dst) })
			if err != nil {
				t.Errorf("ping %s/%s (%s) -> %s/%s (%s): %v", from.Node.Name, from.Name, addr(from), to.Node.Name, to.Name, dst, err)
			}
		}
	}
}

// vtepMAC is the MAC of flannel.1 in node n (waiting for the device).
func vtepMAC(t testing.TB, n *lab.Node) string {
	t.Helper()
	return vtepMACOf(t, n, vxlanDevice)
}

// vtepMACOf is the MAC of the VXLAN device dev in node n (waiting for it).
func vtepMACOf(t testing.TB, n *lab.Node, dev string) string {
	t.Helper()
	var mac string
	lab.WaitFor(t, dev+" on "+n.Name, convergeTimeout, func() error {
		link, err := lab.ShowLink(n.Netns, dev)
		mac = link.Address
		return err
	})
	return mac
}

func vtepMACs(t *testing.T, nodes []*lab.Node) map[*lab.Node]string {
	t.Helper()
	return vtepMACsOf(t, nodes, vxlanDevice)
}

// vtepMACsOf is the MAC of device dev in every node.
func vtepMACsOf(t *testing.T, nodes []*lab.Node, dev string) map[*lab.Node]string {
	t.Helper()
	macs := map[*lab.Node]string{}
	for _, n := range nodes {
		macs[n] = vtepMACOf(t, n, dev)
	}
	return macs
}

// checkNodeObjectUp checks REFERENCE section 3 on a vxlan node's Node object.
func checkNodeObjectUp(node *corev1.Node, mac, publicIP string) error {
	return checkFlannelNode(node, "vxlan", vxlanBackendData(mac), publicIP)
}

// checkVXLANDevice checks REFERENCE section 4 for flannel.1 of node i.
func checkVXLANDevice(ns string, i int) error {
	return checkVXLANDeviceOf(ns, underlayIP(i), podNetAddr(i))
}

// checkVXLANDeviceOf checks flannel.1 in ns: local address local, address
// netAddr/32, and the REFERENCE attributes on a 1500-byte eth0.
func checkVXLANDeviceOf(ns, local, netAddr string) error {
	return checkVTEP(ns, familyIPv4, local, netAddr)
}

// checkVTEP checks the VXLAN device of family fam in ns (flannel.1,
// flannel-v6.1): local address local, address netAddr/32 (/128, added
// without duplicate address detection), and the REFERENCE attributes on a
// 1500-byte eth0.
func checkVTEP(ns string, fam podFamily, local, netAddr string) error {
	link, err := lab.ShowLink(ns, fam.device)
	if err != nil {
		return err
	}
	var problems []string
	data := link.LinkInfo.InfoData
	check := func(what string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			problems = append(problems, fmt.Sprintf("%s = %v, want %v", what, got, want))
		}
	}
	localKey, showAddrs := "local", lab.ShowAddrs
	if fam.ipv6 {
		localKey, showAddrs = "local6", lab.ShowAddrs6
	}
	check("kind", link.LinkInfo.InfoKind, "vxlan")
	check("vxlan id", data["id"], 1)
	check("local", data[localKey], local)
	check("dev", data["link"], "eth0")
	check("dstport", data["port"], 8472)
	check("learning", data["learning"], false)
	check("mtu", link.MTU, fam.mtu)
	check("up", link.IsUp(), true)
	addrs, err := showAddrs(ns, fam.device)
	if err != nil {
		return err
	}
	var got []string
	for _, a := range addrs {
		if a.Scope == "link" && fam.ipv6 {
			continue // the kernel's own fe80:: address
		}
		got = append(got, a.String())
		if fam.ipv6 && !a.NoDAD {
			problems = append(problems, fmt.Sprintf("address %s is subject to duplicate address detection (want nodad)", a))
		}
	}
	check("addresses", got, []string{fmt.Sprintf("%s/%d", netAddr, fam.hostBits())})
	if eth0, err := lab.ShowLink(ns, "eth0"); err == nil {
		check("eth0 mtu", eth0.MTU, 1500)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %s", fam.device, strings.Join(problems, "; "))
	}
	return nil
}

// peerState is the vxlan state a node must have for its peers, rendered as
// comparable strings.
type peerState struct {
	routes, neighbours, fdb []string
}

// expectedPeerState is what node self needs for every other node except
// gone (which must have been removed).
func expectedPeerState(nodes []*lab.Node, macs map[*lab.Node]string, self int, gone *lab.Node) peerState {
	return expectedPeerStateOf(familyIPv4, nodes, macs, self, gone)
}

// expectedPeerStateOf is expectedPeerState in address family fam, with the
// MACs of the family's devices.
func expectedPeerStateOf(fam podFamily, nodes []*lab.Node, macs map[*lab.Node]string, self int, gone *lab.Node) peerState {
	var s peerState
	dev := fam.device
	for j, n := range nodes {
		if j == self || n == gone {
			continue
		}
		s.routes = append(s.routes, fmt.Sprintf("%s via %s dev %s onlink", fam.podCIDR(j+1), fam.podNetAddr(j+1), dev))
		s.neighbours = append(s.neighbours, fmt.Sprintf("%s dev %s lladdr %s PERMANENT", fam.podNetAddr(j+1), dev, macs[n]))
		s.fdb = append(s.fdb, fmt.Sprintf("%s dev %s dst %s self permanent", macs[n], dev, fam.nodeIP(n)))
	}
	return s
}

// checkPeerState compares, exactly, the routes, IPv4 neighbours and FDB
// entries on flannel.1 with want. Routes are matched by destination,
// gateway, device and onlink, not protocol (flanneld marks its routes with
// its own protocol number).
func checkPeerState(ns string, want peerState) error {
	return checkPeerStateOf(ns, familyIPv4, want)
}

// checkPeerStateOf is checkPeerState for the device and neighbours of
// family fam. The IPv6 routes the kernel adds itself to the device (for
// its address and fe80::/64, "proto kernel") are not compared.
func checkPeerStateOf(ns string, fam podFamily, want peerState) error {
	var got peerState
	dev := fam.device
	showRoutes, showNeighbours := lab.ShowRoutes, lab.ShowNeighbours
	if fam.ipv6 {
		showRoutes, showNeighbours = lab.ShowRoutes6, lab.ShowNeighbours6
	}
	routes, err := showRoutes(ns)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Dev == dev && !(fam.ipv6 && r.Protocol == "kernel") {
			s := fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gateway, r.Dev)
			if r.Onlink() {
				s += " onlink"
			}
			got.routes = append(got.routes, s)
		}
	}
	neighs, err := showNeighbours(ns)
	if err != nil {
		return err
	}
	for _, n := range neighs {
		if n.Dev == dev {
			got.neighbours = append(got.neighbours, fmt.Sprintf("%s dev %s lladdr %s %s", n.Dst, n.Dev, n.LLAddr, strings.Join(n.State, ",")))
		}
	}
	fdb, err := lab.ShowFDB(ns, dev)
	if err != nil {
		return err
	}
	for _, f := range fdb {
		got.fdb = append(got.fdb, fmt.Sprintf("%s dev %s dst %s %s %s", f.MAC, f.IfName, f.Dst, strings.Join(f.Flags, ","), f.State))
	}
	var problems []string
	compare := func(what string, got, want []string) {
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			problems = append(problems, fmt.Sprintf("%s:\n got:\n  %s\n want:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  ")))
		}
	}
	compare("routes via "+dev, got.routes, want.routes)
	compare("neighbours on "+dev, got.neighbours, want.neighbours)
	compare("fdb of "+dev, got.fdb, want.fdb)
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

// nodeAnnotations returns the flannel annotations of a Node.
func nodeAnnotations(l *lab.Lab, name string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	node, err := l.Client().CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range node.Annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			out[k] = v
		}
	}
	return out, nil
}
