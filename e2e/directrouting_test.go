package e2e

import (
	"fmt"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestVXLANDirectRouting runs vxlan with DirectRouting on two nodes of each
// underlay segment: a peer on the node's own segment gets a plain route via
// its public IP on eth0 and no VXLAN entries, a peer behind the router the
// usual neighbour, FDB entry and onlink route. Same-segment traffic is not
// encapsulated (flannel.1 sends nothing), cross-segment traffic is. When a
// peer's public IP moves to the other segment, its entries switch form.
func TestVXLANDirectRouting(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	if err := l.WriteNetConf(directRoutingNetConf); err != nil {
		t.Fatal(err)
	}
	n1 := l.AddNodeOn(t, lab.Segment1, "n1", podCIDR(1))
	n2 := l.AddNodeOn(t, lab.Segment1, "n2", podCIDR(2))
	n3 := l.AddNodeOn(t, lab.Segment2, "n3", podCIDR(3))
	n4 := l.AddNodeOn(t, lab.Segment2, "n4", podCIDR(4))
	nodes := []*lab.Node{n1, n2, n3, n4}
	startAll(t, l, nodes)

	peers := map[*lab.Node]peer{}
	for _, n := range nodes {
		peers[n] = realPeer(t, n)
	}
	// expected is the state node self must hold for the real nodes plus
	// the extra entries given.
	expected := func(self *lab.Node, extraDirect []string, extraVXLAN ...peer) (direct []string, vxlan peerState) {
		var encapsulated []peer
		for _, n := range nodes {
			switch {
			case n == self:
			case n.Segment == self.Segment:
				direct = append(direct, directRoute(n))
			default:
				encapsulated = append(encapsulated, peers[n])
			}
		}
		return append(direct, extraDirect...), stateFor(append(encapsulated, extraVXLAN...)...)
	}
	checkNode := func(t *testing.T, n *lab.Node, direct []string, vxlan peerState) {
		t.Helper()
		err := lab.Poll(convergeTimeout, func() error {
			if err := checkDirectRoutes(n.Netns, direct); err != nil {
				return err
			}
			return checkPeerState(n.Netns, vxlan)
		})
		if err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}

	t.Run("device and subnet.env", func(t *testing.T) {
		for _, n := range nodes {
			link, err := lab.ShowLink(n.Netns, vxlanDevice)
			if err != nil || link.MTU != 1450 {
				t.Errorf("%s: %s MTU %d (%v), want 1450", n.Name, vxlanDevice, link.MTU, err)
			}
			env := lab.ParseSubnetEnv(n.WaitSubnetEnv(t, convergeTimeout))
			if env["FLANNEL_MTU"] != "1450" {
				t.Errorf("%s: FLANNEL_MTU=%s, want 1450", n.Name, env["FLANNEL_MTU"])
			}
			err = checkFlannelNode(l.GetNode(t, n), "vxlan", fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, peers[n].MAC), n.IP.String())
			if err != nil {
				t.Errorf("Node %s: %v", n.Name, err)
			}
		}
	})

	t.Run("direct and vxlan entries", func(t *testing.T) {
		for _, n := range nodes {
			direct, vxlan := expected(n, nil)
			checkNode(t, n, direct, vxlan)
		}
	})

	pods := map[*lab.Node]*lab.Pod{}
	t.Run("ping between pods", func(t *testing.T) {
		var all []*lab.Pod
		for _, n := range nodes {
			pods[n] = l.AddPod(t, n, "p1")
			all = append(all, pods[n])
		}
		pingAll(t, all)
	})

	t.Run("encapsulation", func(t *testing.T) {
		if len(pods) != len(nodes) {
			t.Skip("no pods (the ping subtest failed)")
		}
		const count = 20
		for _, c := range []struct {
			from, to     *lab.Node
			encapsulated bool
		}{
			{n1, n2, false},
			{n1, n3, true},
			{n4, n3, false},
			{n4, n2, true},
		} {
			echoes := echoCounter(t, c.from.Netns, vxlanDevice, pods[c.to].IP)
			if _, err := lab.Exec(pods[c.from].Netns, "ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", "0.01", "-W", "2", pods[c.to].IP.String()); err != nil {
				t.Errorf("ping %s -> %s: %v", c.from.Name, c.to.Name, err)
				continue
			}
			sent := echoes()
			t.Logf("%d pings %s -> %s: %d echo requests left through %s", count, c.from.Name, c.to.Name, sent, vxlanDevice)
			switch {
			case c.encapsulated && sent < count:
				t.Errorf("%s -> %s (behind the router): %s sent %d packets for %d pings; want them encapsulated", c.from.Name, c.to.Name, vxlanDevice, sent, count)
			case !c.encapsulated && sent != 0:
				t.Errorf("%s -> %s (same segment): %s sent %d packets for %d pings; want none encapsulated", c.from.Name, c.to.Name, vxlanDevice, sent, count)
			}
		}
	})

	fake := peer{Name: "f1", PodCIDR: "10.244.50.0/24", PublicIP: lab.Segment1.Host(250).String(), MAC: fakeMAC(50)}
	t.Run("peer moves between segments", func(t *testing.T) {
		createFakePeer(t, l, fake)
		onSegment1 := func() {
			t.Helper()
			direct, vxlan := expected(n1, []string{directRouteTo(fake.PodCIDR, fake.PublicIP)})
			checkNode(t, n1, direct, vxlan)
			direct, vxlan = expected(n3, nil, fake)
			checkNode(t, n3, direct, vxlan)
		}
		onSegment1()

		moved := fake
		moved.PublicIP = lab.Segment2.Host(250).String()
		patchAnnotations(t, l, fake.Name, map[string]*string{annotationPrefix + "public-ip": ptr(moved.PublicIP)})
		direct, vxlan := expected(n1, nil, moved)
		checkNode(t, n1, direct, vxlan)
		direct, vxlan = expected(n3, []string{directRouteTo(moved.PodCIDR, moved.PublicIP)})
		checkNode(t, n3, direct, vxlan)

		patchAnnotations(t, l, fake.Name, map[string]*string{annotationPrefix + "public-ip": ptr(fake.PublicIP)})
		onSegment1()

		// A real peer is still reached both ways after the churn.
		if len(pods) == len(nodes) {
			pingAll(t, []*lab.Pod{pods[n1], pods[n2], pods[n3]})
		}
	})

	t.Run("underlay link flap", func(t *testing.T) {
		flapUnderlay(t, n1)
		direct, vxlan := expected(n1, []string{directRouteTo(fake.PodCIDR, fake.PublicIP)})
		checkNode(t, n1, direct, vxlan)
		if len(pods) == len(nodes) {
			pingAll(t, []*lab.Pod{pods[n1], pods[n2], pods[n3]})
		}
	})

	t.Run("DirectRouting turned off and on by a restart", func(t *testing.T) {
		// Without DirectRouting n1 encapsulates towards every peer, while
		// n2 still routes to n1 directly: both directions must work.
		n1.Flanneld().Stop()
		l.StartFlanneld(t, n1, writeNetConfFile(t, l, "vxlan", vxlanNetConf))
		n1.WaitReady(t, readyTimeout)
		checkNode(t, n1, nil, stateFor(peers[n2], peers[n3], peers[n4], fake))
		if link, err := lab.ShowLink(n1.Netns, vxlanDevice); err != nil || link.Address != peers[n1].MAC {
			t.Errorf("n1: %s MAC %s (%v), want the MAC it had, %s", vxlanDevice, link.Address, err, peers[n1].MAC)
		}
		if len(pods) == len(nodes) {
			pingAll(t, []*lab.Pod{pods[n1], pods[n2], pods[n3]})
		}

		n1.Flanneld().Stop()
		l.StartFlanneld(t, n1)
		n1.WaitReady(t, readyTimeout)
		direct, vxlan := expected(n1, []string{directRouteTo(fake.PodCIDR, fake.PublicIP)})
		checkNode(t, n1, direct, vxlan)
		if len(pods) == len(nodes) {
			pingAll(t, []*lab.Pod{pods[n1], pods[n2], pods[n3]})
		}
	})

	t.Run("all running", func(t *testing.T) {
		for _, n := range nodes {
			requireRunning(t, n)
		}
	})
}
