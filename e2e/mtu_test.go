package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// setUnderlayMTU gives every node's eth0 and every port of the underlay
// bridge the MTU (the bridge follows its ports).
func setUnderlayMTU(t *testing.T, l *lab.Lab, nodes []*lab.Node, mtu int) {
	t.Helper()
	out := mustExec(t, l.UnderlayNetns(), "ip", "-o", "link", "show", "type", "veth")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		port := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
		mustExec(t, l.UnderlayNetns(), "ip", "link", "set", port, "mtu", fmt.Sprint(mtu))
	}
	for _, n := range nodes {
		mustExec(t, n.Netns, "ip", "link", "set", "eth0", "mtu", fmt.Sprint(mtu))
	}
}

// checkMTUFollowed waits until every node's flannel.1 and subnet.env have
// the overlay MTU and logs how long that took.
func checkMTUFollowed(t *testing.T, nodes []*lab.Node, mtu int, metricName string) {
	t.Helper()
	for _, n := range nodes {
		d := measure(t, n.Name+"'s flannel.1 and subnet.env to follow the underlay MTU", convergeTimeout, func() error {
			link, err := lab.ShowLink(n.Netns, vxlanDevice)
			if err != nil {
				return err
			}
			if link.MTU != mtu {
				return fmt.Errorf("%s MTU %d, want %d", vxlanDevice, link.MTU, mtu)
			}
			env, err := os.ReadFile(n.SubnetFile)
			if err != nil || !strings.Contains(string(env), fmt.Sprintf("FLANNEL_MTU=%d\n", mtu)) {
				return fmt.Errorf("subnet.env %q (%v) has no FLANNEL_MTU=%d", env, err, mtu)
			}
			return nil
		})
		metric(t, metricName+"_"+n.Name, d)
	}
}

// pingDF pings dst from p with packets of exactly mtu bytes that must not
// be fragmented.
func pingDF(t *testing.T, p *lab.Pod, dst string, mtu int) {
	t.Helper()
	if out, err := lab.Exec(p.Netns, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", fmt.Sprint(mtu-28), dst); err != nil {
		t.Errorf("%s: ping -M do -s %d %s: %v\n%s", p.Name, mtu-28, dst, err, out)
	}
}

// TestMTUFollowsUnderlay (issue 19): when the nodes' eth0 MTU changes
// (1500 -> 9000 -> 1400), flannel.1 and subnet.env follow, a new pod gets
// the new MTU and packets of the new size pass unfragmented; an explicit
// MTU in net-conf.json is kept.
func TestMTUFollowsUnderlay(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	nodes := []*lab.Node{l.AddNode(t, "n1", podCIDR(1)), l.AddNode(t, "n2", podCIDR(2))}
	startAll(t, l, nodes)
	old := addPods(t, l, nodes)
	for step, c := range []struct{ underlay, overlay int }{{9000, 8950}, {1400, 1350}} {
		setUnderlayMTU(t, l, nodes, c.underlay)
		checkMTUFollowed(t, nodes, c.overlay, fmt.Sprintf("mtu_%d_followed_seconds", c.underlay))
		if step == 0 {
			// Existing pods keep their MTU until they are recreated, and
			// until then the node's cni0 bridge takes the smallest MTU of
			// its ports: recreate them before sending larger packets.
			checkPodMTU(t, old, 1450)
			lab.WaitPing(t, old[0], old[1].IP, pingTimeout)
			for _, p := range old {
				l.DelPod(t, p)
			}
		}
		p1 := l.AddPod(t, nodes[0], fmt.Sprintf("m%d", step))
		p2 := l.AddPod(t, nodes[1], fmt.Sprintf("m%d", step))
		checkPodMTU(t, []*lab.Pod{p1, p2}, c.overlay)
		pingDF(t, p1, p2.IP.String(), c.overlay)
		pingDF(t, p2, p1.IP.String(), c.overlay)
	}

	t.Run("explicit MTU kept", func(t *testing.T) {
		stopAll(nodes)
		setUnderlayMTU(t, l, nodes, 1500)
		startAll(t, l, nodes, writeNetConfFile(t, l, "mtu", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}`))
		checkMTUFollowed(t, nodes, 1350, "mtu_explicit_seconds")
		setUnderlayMTU(t, l, nodes, 9000)
		if err := lab.Poll(3*convergeTimeout/10, func() error {
			link, err := lab.ShowLink(nodes[0].Netns, vxlanDevice)
			if err == nil && link.MTU != 1350 {
				return nil // changed: that is the failure
			}
			return fmt.Errorf("kept")
		}); err == nil {
			t.Errorf("%s followed the underlay although net-conf.json sets MTU 1400", vxlanDevice)
		}
		checkMTUFollowed(t, nodes, 1350, "mtu_explicit_kept_seconds")
	})
}
