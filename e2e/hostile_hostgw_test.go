package e2e

// Hostile peers of a host-gw cluster (issue 14): host-gw routes a peer's
// subnet via its public IP on eth0, so a bad public IP would send pod
// traffic into the void, or worse.

import (
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestHostilePeersHostGW gives a host-gw cluster peers with every bad
// public-ip. None gets a route, each is skipped with rule="public_ip", the
// underlay routes stay.
func TestHostilePeersHostGW(t *testing.T) {
	l, nodes := startHostileNodes(t, hostGWNetConf)
	state := func(n *lab.Node) error { return checkDirectRoutes(n.Netns, directRoutesFor(n, nodes...)) }
	c := newHostileCluster(t, l, nodes, state, apiServerReachable)

	t.Run("bad public-ip", func(t *testing.T) { checkBadPublicIPsHostGW(t, c) })
	t.Run("each reason logged once", func(t *testing.T) {
		c.checkLoggedOnce(t)
		c.checkLogsBounded(t)
	})
	t.Run("no ping lost", func(t *testing.T) { c.stopPings(t) })
}

// checkBadPublicIPsHostGW: host-gw peers with every bad public-ip get no
// route and are skipped; each node keeps exactly its real peer's route
// and its underlay routes.
func checkBadPublicIPsHostGW(t *testing.T, c *hostileCluster) {
	n1, n2 := c.nodes[0], c.nodes[1]
	bad := badPublicIPs(n1)
	name := func(i int) string { return "pubip-" + bad[i].name }
	ownOfN1 := "" // the podCIDR of the peer at n1's address
	for i, b := range bad {
		cleanupNodes(t, c.l, name(i))
		createNode(t, c.l, name(i), podCIDR(60+i), hostGWAnnotations(b.ip))
		if b.only != nil {
			ownOfN1 = podCIDR(60 + i)
		}
	}
	for _, n := range c.nodes {
		for i, b := range bad {
			if !refusedBy(b.only, n) {
				continue
			}
			t.Logf("%s: %s", n.Name, waitSkipped(t, n.Flanneld(), name(i), "public_ip"))
			if routes, err := routesTo(n.Netns, podCIDR(60+i)); err != nil || len(routes) > 0 {
				t.Errorf("%s has routes for %s (public-ip %s): %v %v", n.Name, name(i), b.ip, routes, err)
			}
		}
		waitCounter(t, n, rejected("public_ip"))
		// Exactly the real peer's route (n2 may route to the peer at n1's
		// address: it is not n2's own).
		skip := ""
		if n == n2 {
			skip = ownOfN1
		}
		checkDirectRoutesBut(t, n, skip, directRoutesFor(n, c.nodes...))
		c.checkUnderlay(t, n, " with the hostile peers")
	}
	c.pingFirstTwo(t, false)
	for i := range bad {
		deleteNode(t, c.l, name(i))
	}
	c.healthy(t)
}

// checkDirectRoutesBut compares exactly flanneld's routes on eth0 of n,
// but the one to skip (a podCIDR; none if ""), with want.
func checkDirectRoutesBut(t *testing.T, n *lab.Node, skip string, want []string) {
	t.Helper()
	got, err := ownedRoutesOn(n.Netns, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, r := range got {
		if skip == "" || !strings.HasPrefix(r, skip+" ") {
			kept = append(kept, r)
		}
	}
	if err := compareSets("flanneld's routes on eth0", kept, want); err != nil {
		t.Errorf("%s: %v", n.Name, err)
	}
}
