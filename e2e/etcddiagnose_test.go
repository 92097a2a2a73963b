package e2e

import (
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
	run := func() (int, string, string) {
		bin := lab.RequireBinary(t, lab.BinaryFlanneld)
		args := append([]string{bin, "diagnose"}, l.EtcdFlanneldArgs(e, nodes[0])...)
		p := l.Start(t, nodes[0].Netns, "diagnose-"+nodes[0].Name, nil, args...)
		code, exited := p.WaitExit(diagnoseTimeout)
		if !exited {
			p.Stop()
			t.Fatalf("diagnose still running; stderr:\n%s", p.Log())
		}
		return code, p.Stdout(), p.Log()
	}
	if code, out, stderr := run(); code != 0 {
		t.Fatalf("diagnose on a clean host: exit %d\n%s\n%s", code, out, tailLines(stderr, 20))
	}

	nodes[0].Flanneld().Stop()
	peer := hosts[1].subnet.String()
	if _, err := lab.Exec(nodes[0].Netns, "ip", "route", "del", peer); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run()
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
