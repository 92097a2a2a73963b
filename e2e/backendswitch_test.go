package e2e

import (
	"fmt"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestBackendSwitch restarts a vxlan cluster with host-gw, one node first
// and then the rest, back to vxlan, and then to another VNI: each restart
// removes the old
// backend's device and entries, publishes the new backend-type and
// backend-data, and programs the new backend's state; pods created under
// the first backend keep pinging under the others.
func TestBackendSwitch(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	useVXLAN := writeNetConfFile(t, l, "vxlan", vxlanNetConf)
	useHostGW := writeNetConfFile(t, l, "host-gw", hostGWNetConf)

	nodes := make([]*lab.Node, 3)
	for i := range nodes {
		nodes[i] = l.AddNode(t, fmt.Sprintf("n%d", i+1), podCIDR(i+1))
	}
	n1, rest := nodes[0], nodes[1:]
	startAll(t, l, nodes, useVXLAN)
	var pods []*lab.Pod
	for _, n := range nodes {
		pods = append(pods, l.AddPod(t, n, "p1"))
	}
	pingAll(t, pods)
	if t.Failed() {
		t.FailNow()
	}
	oldN1 := realPeer(t, n1)

	t.Run("one node to host-gw", func(t *testing.T) {
		n1.Flanneld().Stop()
		l.StartFlanneld(t, n1, useHostGW)
		n1.WaitReady(t, readyTimeout)
		checkHostGWNode(t, l, n1, 1, nil)
		// Its peers still run vxlan: n1 skips them, they skip n1 and drop
		// the VXLAN entries that pointed at its removed device.
		for _, p := range rest {
			line := waitLogLine(t, n1.Flanneld(), convergeTimeout, "Skipping peer", `"`+p.Name+`"`)
			t.Logf("n1: %s", line)
		}
		for _, n := range rest {
			var others []peer
			for _, o := range rest {
				if o != n {
					others = append(others, realPeer(t, o))
				}
			}
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, stateFor(others...)) }); err != nil {
				t.Errorf("%s after n1 switched to host-gw: %v", n.Name, err)
			}
			if err := lab.Poll(convergeTimeout, func() error { return checkNoTraceOf(n.Netns, n1.PodCIDR, oldN1.MAC) }); err != nil {
				t.Errorf("%s still has n1's VXLAN entries: %v", n.Name, err)
			}
			waitLogLine(t, n.Flanneld(), convergeTimeout, "Skipping peer", `"n1"`)
		}
	})

	t.Run("all nodes on host-gw", func(t *testing.T) {
		stopAll(rest)
		for _, n := range rest {
			l.StartFlanneld(t, n, useHostGW)
		}
		for _, n := range rest {
			n.WaitReady(t, readyTimeout)
		}
		for i, n := range nodes {
			checkHostGWNode(t, l, n, i+1, directRoutesFor(n, nodes...))
		}
		pingAll(t, pods)
	})

	t.Run("back to vxlan", func(t *testing.T) {
		// n1 first: its host-gw routes go, and its peers, still on
		// host-gw, drop their routes to it.
		n1.Flanneld().Stop()
		l.StartFlanneld(t, n1, useVXLAN)
		n1.WaitReady(t, readyTimeout)
		if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n1.Netns, nil) }); err != nil {
			t.Errorf("n1 back on vxlan: %v", err)
		}
		if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n1.Netns, peerState{}) }); err != nil {
			t.Errorf("n1 back on vxlan, peers on host-gw: %v", err)
		}
		for _, n := range rest {
			want := directRoutesFor(n, rest...)
			if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n.Netns, want) }); err != nil {
				t.Errorf("%s after n1 went back to vxlan: %v", n.Name, err)
			}
		}

		stopAll(rest)
		for _, n := range rest {
			l.StartFlanneld(t, n, useVXLAN)
		}
		for _, n := range rest {
			n.WaitReady(t, readyTimeout)
		}
		macs := vtepMACs(t, nodes)
		for i, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkVXLANDevice(n.Netns, i+1) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			want := expectedPeerState(nodes, macs, i, nil)
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, want) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			// No host-gw route remains.
			if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n.Netns, nil) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			err := lab.Poll(convergeTimeout, func() error {
				return checkFlannelNode(l.GetNode(t, n), "vxlan", fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, macs[n]), n.IP.String())
			})
			if err != nil {
				t.Errorf("Node %s: %v", n.Name, err)
			}
			if got, want := n.WaitSubnetEnv(t, convergeTimeout), expectedSubnetEnv(i+1); got != want {
				t.Errorf("%s: subnet.env:\n%s\nwant:\n%s", n.Name, got, want)
			}
		}
		pingAll(t, pods)
	})

	t.Run("another VNI", func(t *testing.T) {
		// flannel.1 belongs to the old configuration: it goes, with its
		// entries, and flannel.2 carries the peers.
		stopAll(nodes)
		startAll(t, l, nodes, writeNetConfFile(t, l, "vni2", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":2}}`))
		for i, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkNoVXLANDevice(n.Netns) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			link, err := lab.ShowLink(n.Netns, "flannel.2")
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
				continue
			}
			if id := fmt.Sprint(link.LinkInfo.InfoData["id"]); id != "2" {
				t.Errorf("%s: flannel.2 has VNI %s", n.Name, id)
			}
			var want []string
			for j, p := range nodes {
				if j != i {
					want = append(want, fmt.Sprintf("%s via %s dev flannel.2 proto %s onlink", p.PodCIDR, podNetAddr(j+1), ownedProto))
				}
			}
			err = lab.Poll(convergeTimeout, func() error {
				got, err := ownedRoutesOn(n.Netns, "flannel.2")
				if err != nil {
					return err
				}
				return compareSets("routes via flannel.2", got, want)
			})
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			err = lab.Poll(convergeTimeout, func() error {
				return checkFlannelNode(l.GetNode(t, n), "vxlan", fmt.Sprintf(`{"VNI":2,"VtepMAC":"%s"}`, link.Address), n.IP.String())
			})
			if err != nil {
				t.Errorf("Node %s: %v", n.Name, err)
			}
		}
		pingAll(t, pods)
	})

	t.Run("all running", func(t *testing.T) {
		for _, n := range nodes {
			requireRunning(t, n)
		}
	})
}

// checkHostGWNode checks that lab node i runs host-gw: no flannel.1 and no
// entry on it, exactly the direct routes given on eth0, the host-gw
// annotations and MTU 1500 in subnet.env.
func checkHostGWNode(t *testing.T, l *lab.Lab, n *lab.Node, i int, direct []string) {
	t.Helper()
	if err := lab.Poll(convergeTimeout, func() error { return checkNoVXLANDevice(n.Netns) }); err != nil {
		t.Errorf("%s: %v", n.Name, err)
	}
	if fdb, err := lab.ShowFDB(n.Netns, vxlanDevice); err == nil && len(fdb) > 0 {
		t.Errorf("%s: FDB entries on %s: %v", n.Name, vxlanDevice, fdb)
	}
	if err := lab.Poll(convergeTimeout, func() error { return checkDirectRoutes(n.Netns, direct) }); err != nil {
		t.Errorf("%s: %v", n.Name, err)
	}
	err := lab.Poll(convergeTimeout, func() error {
		return checkFlannelNode(l.GetNode(t, n), "host-gw", "null", n.IP.String())
	})
	if err != nil {
		t.Errorf("Node %s: %v", n.Name, err)
	}
	if got, want := n.WaitSubnetEnv(t, convergeTimeout), subnetEnvWithMTU(i, 1500); got != want {
		t.Errorf("%s: subnet.env:\n%s\nwant:\n%s", n.Name, got, want)
	}
}
