package e2e

import (
	"fmt"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestAllocCluster runs flanneld with the alloc backend (issue 18) on two
// nodes: each gets its lease (subnet.env with eth0's MTU, the annotations
// with backend-type alloc and no backend data), and nothing is programmed:
// no flannel device, no proto 102 route.
func TestAllocCluster(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	if err := l.WriteNetConf(`{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`); err != nil {
		t.Fatal(err)
	}
	nodes := make([]*lab.Node, 2)
	for i := range nodes {
		nodes[i] = l.AddNode(t, fmt.Sprintf("n%d", i+1), podCIDR(i+1))
	}
	startAll(t, l, nodes)

	t.Run("subnet.env", func(t *testing.T) { checkSubnetEnvs(t, nodes, subnetEnvWithMTU, 1500) })

	t.Run("node annotations", func(t *testing.T) { checkBackendAnnotations(t, l, nodes, "alloc", nullBackendData) })

	t.Run("nothing programmed", func(t *testing.T) {
		for _, n := range nodes {
			if err := checkNoVXLANDevice(n.Netns); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if err := checkNoOwnedRoutes(n.Netns); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			requireRunning(t, n)
		}
	})
}

// checkNoOwnedRoutes checks that ns has no route of flanneld's (proto 102)
// and no flannel device.
func checkNoOwnedRoutes(ns string) error {
	for _, show := range []func(string) ([]lab.Route, error){lab.ShowRoutes, lab.ShowRoutes6} {
		routes, err := show(ns)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Protocol == ownedProto {
				return fmt.Errorf("route %s is flanneld's", r)
			}
		}
	}
	for _, dev := range []string{"flannel.1", "flannel-v6.1", "flannel0"} {
		if _, err := lab.ShowLink(ns, dev); err == nil {
			return fmt.Errorf("%s exists", dev)
		}
	}
	return nil
}
