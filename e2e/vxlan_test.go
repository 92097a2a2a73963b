package e2e

import (
	"context"
	"errors"
	"fmt"
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

	t.Run("subnet.env", func(t *testing.T) {
		for i, n := range nodes {
			got := n.WaitSubnetEnv(t, convergeTimeout)
			if want := expectedSubnetEnv(i + 1); got != want {
				t.Errorf("%s: subnet.env:\n%s\nwant:\n%s", n.Name, got, want)
			}
		}
	})

	t.Run("node annotations", func(t *testing.T) {
		for i, n := range nodes {
			mac := vtepMAC(t, n)
			err := lab.Poll(convergeTimeout, func() error {
				return checkNodeObjectUp(l.GetNode(t, n), mac, underlayIP(i+1))
			})
			if err != nil {
				t.Errorf("Node %s: %v", n.Name, err)
			}
		}
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

	t.Run("iptables", func(t *testing.T) {
		for i, n := range nodes {
			err := lab.Poll(convergeTimeout, func() error { return checkNodeRules(n.Netns, podCIDR(i+1)) })
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	var pods []*lab.Pod
	t.Run("ping between pods", func(t *testing.T) {
		pods = []*lab.Pod{
			l.AddPod(t, nodes[0], "p1"),
			l.AddPod(t, nodes[0], "p2"),
			l.AddPod(t, nodes[1], "p1"),
			l.AddPod(t, nodes[2], "p1"),
		}
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
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			err := lab.Poll(pingTimeout, func() error { return lab.Ping(from, to.IP) })
			if err != nil {
				t.Errorf("ping %s/%s (%s) -> %s/%s (%s): %v", from.Node.Name, from.Name, from.IP, to.Node.Name, to.Name, to.IP, err)
			}
		}
	}
}

// vtepMAC is the MAC of flannel.1 in node n (waiting for the device).
func vtepMAC(t testing.TB, n *lab.Node) string {
	t.Helper()
	var mac string
	lab.WaitFor(t, vxlanDevice+" on "+n.Name, convergeTimeout, func() error {
		link, err := lab.ShowLink(n.Netns, vxlanDevice)
		mac = link.Address
		return err
	})
	return mac
}

func vtepMACs(t *testing.T, nodes []*lab.Node) map[*lab.Node]string {
	t.Helper()
	macs := map[*lab.Node]string{}
	for _, n := range nodes {
		macs[n] = vtepMAC(t, n)
	}
	return macs
}

// checkNodeObjectUp checks REFERENCE section 3 on a vxlan node's Node object.
func checkNodeObjectUp(node *corev1.Node, mac, publicIP string) error {
	return checkFlannelNode(node, "vxlan", fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac), publicIP)
}

// checkVXLANDevice checks REFERENCE section 4 for flannel.1 of node i.
func checkVXLANDevice(ns string, i int) error {
	return checkVXLANDeviceOf(ns, underlayIP(i), podNetAddr(i))
}

// checkVXLANDeviceOf checks flannel.1 in ns: local address local, address
// netAddr/32, and the REFERENCE attributes on a 1500-byte eth0.
func checkVXLANDeviceOf(ns, local, netAddr string) error {
	link, err := lab.ShowLink(ns, vxlanDevice)
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
	check("kind", link.LinkInfo.InfoKind, "vxlan")
	check("vxlan id", data["id"], 1)
	check("local", data["local"], local)
	check("dev", data["link"], "eth0")
	check("dstport", data["port"], 8472)
	check("learning", data["learning"], false)
	check("mtu", link.MTU, 1450)
	check("up", link.IsUp(), true)
	addrs, err := lab.ShowAddrs(ns, vxlanDevice)
	if err != nil {
		return err
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.String())
	}
	check("addresses", got, []string{netAddr + "/32"})
	if eth0, err := lab.ShowLink(ns, "eth0"); err == nil {
		check("eth0 mtu", eth0.MTU, 1500)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %s", vxlanDevice, strings.Join(problems, "; "))
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
	var s peerState
	for j, n := range nodes {
		if j == self || n == gone {
			continue
		}
		s.routes = append(s.routes, fmt.Sprintf("%s via %s dev %s onlink", podCIDR(j+1), podNetAddr(j+1), vxlanDevice))
		s.neighbours = append(s.neighbours, fmt.Sprintf("%s dev %s lladdr %s PERMANENT", podNetAddr(j+1), vxlanDevice, macs[n]))
		s.fdb = append(s.fdb, fmt.Sprintf("%s dev %s dst %s self permanent", macs[n], vxlanDevice, underlayIP(j+1)))
	}
	return s
}

// checkPeerState compares, exactly, the routes, IPv4 neighbours and FDB
// entries on flannel.1 with want. Routes are matched by destination,
// gateway, device and onlink, not protocol (flanneld marks its routes with
// its own protocol number).
func checkPeerState(ns string, want peerState) error {
	var got peerState
	routes, err := lab.ShowRoutes(ns)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Dev == vxlanDevice {
			s := fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gateway, r.Dev)
			if r.Onlink() {
				s += " onlink"
			}
			got.routes = append(got.routes, s)
		}
	}
	neighs, err := lab.ShowNeighbours(ns)
	if err != nil {
		return err
	}
	for _, n := range neighs {
		if n.Dev == vxlanDevice {
			got.neighbours = append(got.neighbours, fmt.Sprintf("%s dev %s lladdr %s %s", n.Dst, n.Dev, n.LLAddr, strings.Join(n.State, ",")))
		}
	}
	fdb, err := lab.ShowFDB(ns, vxlanDevice)
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
	compare("routes via "+vxlanDevice, got.routes, want.routes)
	compare("neighbours on "+vxlanDevice, got.neighbours, want.neighbours)
	compare("fdb of "+vxlanDevice, got.fdb, want.fdb)
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
