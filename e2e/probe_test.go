package e2e

import (
	"net/http"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestPeerProbes (issue 19): flanneld probes its peers through the
// overlay; a peer that stops answering (its underlay link down) is counted
// in flanneld_peers_unreachable and reported by an Event, the node stays
// ready, and the peer is reported again once it answers.
func TestPeerProbes(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	nodes := []*lab.Node{l.AddNode(t, "n1", podCIDR(1)), l.AddNode(t, "n2", podCIDR(2)), l.AddNode(t, "n3", podCIDR(3))}
	startAll(t, l, nodes, "--peer-probe-interval=1s")
	n1, n3 := nodes[0], nodes[2]
	gauge := func(n *lab.Node, name string, want float64) func() error {
		return func() error {
			m, err := scrapeMetrics(n)
			if err != nil {
				return err
			}
			return m.expect(map[string]float64{name: want})
		}
	}
	d := measure(t, "n1 to probe both peers", convergeTimeout, gauge(n1, "flanneld_peers_probed", 2))
	metric(t, "peers_probed_seconds", d)
	if err := gauge(n1, "flanneld_peers_unreachable", 0)(); err != nil {
		t.Error(err)
	}

	mustExec(t, n3.Netns, "ip", "link", "set", "eth0", "down")
	d = measure(t, "n1 to find n3 unreachable", convergeTimeout, gauge(n1, "flanneld_peers_unreachable", 1))
	metric(t, "peer_unreachable_detected_seconds", d)
	t.Logf("Event: %s", waitEvent(t, l, n1.Name, "PeerNotResponding"))
	if code, body, err := getProbe(n1, "/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("n1 /readyz with a dead peer: %d %q %v, want 200", code, body, err)
	}
	r := runDiagnoseJSON(t, l, n1, 1)
	if len(r.Unreachable) != 1 || r.Unreachable[0].Name != n3.Name || r.Unreachable[0].For == "" {
		t.Errorf("flanneld diagnose on n1 lists unreachable peers %+v, want n3 with how long", r.Unreachable)
	} else {
		t.Logf("diagnose: %s unreachable at %s for %s", r.Unreachable[0].Name, r.Unreachable[0].Address, r.Unreachable[0].For)
	}

	mustExec(t, n3.Netns, "ip", "link", "set", "eth0", "up")
	mustExec(t, n3.Netns, "ip", "route", "replace", "default", "via", lab.UnderlayGateway.String())
	d = measure(t, "n1 to find n3 answering again", convergeTimeout, gauge(n1, "flanneld_peers_unreachable", 0))
	metric(t, "peer_recovered_detected_seconds", d)
	t.Logf("Event: %s", waitEvent(t, l, n1.Name, "PeerResponding"))
}
