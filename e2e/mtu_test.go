package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
	"github.com/flanneld/flanneld/pkg/diagnose"
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

// hostVeth is the name of the host side of pod p's veth: the port of its
// node's cni0 that eth0 in the pod is paired with.
func hostVeth(t *testing.T, p *lab.Pod) string {
	t.Helper()
	var eth0 []struct {
		LinkIndex int `json:"link_index"`
	}
	if err := json.Unmarshal([]byte(mustExec(t, p.Netns, "ip", "-j", "link", "show", "dev", "eth0")), &eth0); err != nil || len(eth0) != 1 {
		t.Fatalf("pod %s/%s: eth0: %v", p.Node.Name, p.Name, err)
	}
	var ports []struct {
		IfIndex int    `json:"ifindex"`
		IfName  string `json:"ifname"`
	}
	if err := json.Unmarshal([]byte(mustExec(t, p.Node.Netns, "ip", "-j", "link", "show", "master", "cni0")), &ports); err != nil {
		t.Fatalf("%s: ports of cni0: %v", p.Node.Name, err)
	}
	for _, port := range ports {
		if port.IfIndex == eth0[0].LinkIndex {
			return port.IfName
		}
	}
	t.Fatalf("pod %s/%s: no port of %s's cni0 has index %d", p.Node.Name, p.Name, p.Node.Name, eth0[0].LinkIndex)
	return ""
}

// checkDiagnoseStalePods runs `flanneld diagnose` on n, whose pods must
// have MTU want: it must report exactly the veths of pods stale, with MTU
// staleMTU, as one problem (exit status 1), or nothing (exit status 0).
func checkDiagnoseStalePods(t *testing.T, l *lab.Lab, n *lab.Node, want int, stale []*lab.Pod, staleMTU int) {
	t.Helper()
	wantStale := []diagnose.PortMTU{}
	for _, p := range stale {
		wantStale = append(wantStale, diagnose.PortMTU{Port: hostVeth(t, p), MTU: staleMTU})
	}
	slices.SortFunc(wantStale, func(a, b diagnose.PortMTU) int { return strings.Compare(a.Port, b.Port) })
	code := 0
	if len(stale) > 0 {
		code = 1
	}
	r := runDiagnoseJSON(t, l, n, code)
	if pm := r.PodMTU; pm.Bridge != "cni0" || pm.Want != want || !slices.Equal(pm.Stale, wantStale) {
		t.Errorf("podMTU %+v, want cni0, want %d, stale %+v", pm, want, wantStale)
	}
	if len(stale) == 0 {
		if !r.OK {
			t.Errorf("problems %q, want none", r.Problems)
		}
		return
	}
	prefix := fmt.Sprintf("%d pods have MTU %d, not %d: recreate them (their veths: ", len(stale), staleMTU, want)
	if len(r.Problems) != 1 || !strings.HasPrefix(r.Problems[0], prefix) {
		t.Fatalf("problems %q, want one starting %q", r.Problems, prefix)
	}
	for _, s := range wantStale {
		if !strings.Contains(r.Problems[0], s.Port) {
			t.Errorf("problem %q does not name %s", r.Problems[0], s.Port)
		}
	}

	code, out, stderr := runDiagnose(t, l, n)
	t.Logf("flanneld diagnose:\n%s", out)
	if code != 1 || !strings.Contains(out, "  - "+r.Problems[0]+"\n") {
		t.Errorf("exit status %d, want 1 and the problem %q; stderr:\n%s", code, r.Problems[0], tailLines(stderr, 20))
	}
	for _, s := range wantStale {
		row := regexp.MustCompile(fmt.Sprintf(`(?m)^%s +%d +differs: want %d`, regexp.QuoteMeta(s.Port), s.MTU, want))
		if !row.MatchString(out) {
			t.Errorf("no POD VETH row names %s with MTU %d", s.Port, s.MTU)
		}
	}
}

// TestMTUFollowsUnderlay (issue 19): when the nodes' eth0 MTU changes
// (1500 -> 9000 -> 1400), flannel.1 and subnet.env follow, a new pod gets
// the new MTU and packets of the new size pass unfragmented; `flanneld
// diagnose` names the pods that keep the old MTU until they are recreated;
// an explicit MTU in net-conf.json is kept.
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
			checkDiagnoseStalePods(t, l, nodes[0], c.overlay, old[:2], 1450)
			lab.WaitPing(t, old[0], old[1].IP, pingTimeout)
			for _, p := range old {
				l.DelPod(t, p)
			}
		}
		p1 := l.AddPod(t, nodes[0], fmt.Sprintf("m%d", step))
		p2 := l.AddPod(t, nodes[1], fmt.Sprintf("m%d", step))
		checkPodMTU(t, []*lab.Pod{p1, p2}, c.overlay)
		if step == 0 {
			// Recreated: no pod of n1 has the old MTU any more.
			checkDiagnoseStalePods(t, l, nodes[0], c.overlay, nil, 0)
		}
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
