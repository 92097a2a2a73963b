package e2e

// A hostile configuration (issue 14): a Network that would let peers'
// routes swallow the underlay.

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestHostileNetworkZero: a Network of /0 (every address a pod address:
// peers' routes would swallow the underlay) or one longer than /30 is
// refused at start with exit status 1, naming it, before anything on the
// node is touched; in Kubernetes mode and in etcd mode.
func TestHostileNetworkZero(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)

	t.Run("kubernetes mode", func(t *testing.T) {
		l := lab.New(t)
		for i, c := range []struct {
			name, podCIDR, conf, why string
		}{
			{"Network 0.0.0.0/0", podCIDR(1), `{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}`, `0\.0\.0\.0/0`},
			{"Network longer than /30", "10.244.0.0/31", `{"Network":"10.244.0.0/31","Backend":{"Type":"vxlan"}}`, `10\.244\.0\.0/31`},
		} {
			t.Run(c.name, func(t *testing.T) {
				n := l.AddNode(t, fmt.Sprintf("n%d", i+1), c.podCIDR)
				conf := writeNodeFile(t, n, "net-conf.json", c.conf)
				checkRefusesConfig(t, l, n, conf, regexp.MustCompile(c.why))
				checkNetworkZeroUntouched(t, n)
			})
		}
	})

	t.Run("etcd mode", func(t *testing.T) {
		l := lab.NewBare(t)
		e := l.StartEtcd(t, lab.EtcdOptions{})
		e.PutNetworkConfig(t, `{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}`)
		n := l.AddBareNode(t, "n1")
		checkRefusedExit(t, n, l.StartEtcdFlanneld(t, e, n, nil), regexp.MustCompile(`0\.0\.0\.0/0`))
		if keys := e.LeaseKeys(t); len(keys) > 0 {
			t.Errorf("lease keys written under %s/subnets: %v", lab.EtcdPrefix, keys)
		}
		checkNetworkZeroUntouched(t, n)
	})
}

// checkNetworkZeroUntouched checks that n has no flannel firewall rule of
// any kind (iptables of both families, nftables) and its underlay routes.
func checkNetworkZeroUntouched(t *testing.T, n *lab.Node) {
	t.Helper()
	if err := checkNoFlannelIPTables(n.Netns); err != nil {
		t.Error(err)
	}
	if err := checkNoNFTTable(n.Netns, "ip", "flannel-ipv4"); err != nil {
		t.Error(err)
	}
	routes, err := underlayRoutesOf(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkUnderlayRoutes(n, routes); err != nil {
		t.Error(err)
	}
	if len(routes) != 2 {
		t.Errorf("routes: %q, want only the connected and the default route", routes)
	}
}
