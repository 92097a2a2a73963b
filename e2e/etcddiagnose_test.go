package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestEtcdModeDiagnose: `flanneld diagnose` reads the same etcd as the
// daemon: exit 0 on a clean host, and with the daemon stopped and a peer's
// route deleted, exit 1 naming that route as missing.
func TestEtcdModeDiagnose(t *testing.T) {
	l, e, nodes := newBareCluster(t, lab.EtcdOptions{}, 2)
	for _, n := range nodes {
		l.StartEtcdFlanneld(t, e, n, nil)
	}
	hosts := describeHosts(t, nodes)
	for _, n := range nodes {
		if err := n.PollReady(readyTimeout); err != nil {
			t.Fatalf("flanneld on %s: %v", n.Name, err)
		}
	}
	if code, out, stderr := runEtcdDiagnose(t, l, e, nodes[0]); code != 0 {
		t.Fatalf("diagnose on a clean host: exit %d\n%s\n%s", code, out, tailLines(stderr, 20))
	}

	nodes[0].Flanneld().Stop()
	peer := hosts[1].subnet.String()
	if _, err := lab.Exec(nodes[0].Netns, "ip", "route", "del", peer); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runEtcdDiagnose(t, l, e, nodes[0])
	if code != 1 {
		t.Fatalf("diagnose with a deleted route: exit %d, want 1\n%s\n%s", code, out, tailLines(stderr, 20))
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, peer) && strings.Contains(line, "missing") {
			return
		}
	}
	t.Fatalf("diagnose does not report the route to %s as missing:\n%s", peer, out)
}

// TestEtcdModeDiagnoseDualStack: on two dual-stack bare hosts, diagnose
// compares the IPv6 half of the etcd lease too (PublicIPv6,
// BackendV6Data) and finds nothing wrong; with the daemon stopped and the
// IPv6 route to the peer deleted, exit 1 and exactly that route missing
// (issue 15.13).
func TestEtcdModeDiagnoseDualStack(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.NewBare(t, lab.WithIPv6())
	e := l.StartEtcd(t, lab.EtcdOptions{})
	e.PutNetworkConfig(t, etcdDualStackNetConf)
	// One host after the other: two dual-stack hosts acquiring at the same
	// moment can both get the same IPv4 subnet (with different IPv6 ones),
	// which is not what this test is about.
	nodes := []*lab.Node{l.AddBareNode(t, "n1"), l.AddBareNode(t, "n2")}
	for _, n := range nodes {
		l.StartEtcdFlanneld(t, e, n, nil)
		n.WaitReady(t, readyTimeout)
	}
	hosts := describeDualHosts(t, nodes)
	waitDualPeerStates(t, hosts)
	code, out, stderr := runEtcdDiagnose(t, l, e, nodes[0], "--json")
	if code != 0 {
		t.Fatalf("diagnose on a clean host: exit %d\n%s\n%s", code, out, tailLines(stderr, 20))
	}
	for _, want := range []string{`"publicIPv6"`, hosts[0].mac6, `"wantAddress": "` + hosts[0].subnet6.Addr().String() + `/128"`} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %s:\n%s", want, out)
		}
	}

	nodes[0].Flanneld().Stop()
	peer := hosts[1].subnet6
	mustExec(t, nodes[0].Netns, "ip", "-6", "route", "del", peer.String(), "dev", vxlanDevice6)
	code, out, stderr = runEtcdDiagnose(t, l, e, nodes[0])
	want := fmt.Sprintf("  - peer %s: route %s via %s dev %s onlink: missing", hosts[1].keyName(), peer, peer.Addr(), vxlanDevice6)
	if code != 1 || !slices.Contains(strings.Split(out, "\n"), want) || !strings.Contains(out, "RESULT: 1 problem\n") {
		t.Fatalf("diagnose with a deleted IPv6 route: exit %d, want 1 and only the problem %q\n%s\n%s", code, want, out, tailLines(stderr, 20))
	}
}

// runEtcdDiagnose runs `flanneld diagnose` with the daemon's etcd-mode lab
// flags on bare host n and returns its exit status and output.
func runEtcdDiagnose(t *testing.T, l *lab.Lab, e *lab.Etcd, n *lab.Node, extraArgs ...string) (int, string, string) {
	t.Helper()
	bin := lab.RequireBinary(t, lab.BinaryFlanneld)
	args := append(append([]string{bin, "diagnose"}, l.EtcdFlanneldArgs(e, n)...), extraArgs...)
	p := l.Start(t, n.Netns, "diagnose-"+n.Name, nil, args...)
	code, exited := p.WaitExit(diagnoseTimeout)
	if !exited {
		p.Stop()
		t.Fatalf("diagnose still running; stderr:\n%s", p.Log())
	}
	return code, p.Stdout(), p.Log()
}
