package e2e

// The fat Nodes of TestHostilePeersKube: 200 Nodes with some 250 KB of
// annotations each (the API server takes at most 256 KiB); flanneld's
// memory stays under the manifest's limit, running and starting among
// them.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flanneld/flanneld/e2e/lab"
)

const (
	// fatCount is how many fat Nodes there are.
	fatCount = 200
	// manifestMemoryLimitMiB is the memory limit of Documentation/kube-flannel.yml.
	manifestMemoryLimitMiB = 128
)

// fatNodes are the fat Node objects of a test, created by one subtest and
// deleted by a later one or when the test ends.
type fatNodes struct {
	l *lab.Lab
	// objs are the Nodes, set once their creation starts.
	objs []*corev1.Node
	// good are the peers the even Nodes describe.
	good    []peer
	deleted bool
}

// newFatNodes returns the fat Nodes of t, none created yet; whatever is
// created is deleted when t ends.
func newFatNodes(t *testing.T, l *lab.Lab) *fatNodes {
	f := &fatNodes{l: l}
	t.Cleanup(func() { f.delete(t) })
	return f
}

// buildFatNodes are count Node objects: the even ones are good peers
// carrying foreign annotations, the odd ones have oversized flannel
// annotations.
func buildFatNodes(count int) (objs []*corev1.Node, good []peer) {
	blob := strings.Repeat("x", 63_000)
	bigData := oversizedBackendData(fakeMAC(999), 120_000)
	bigIP := strings.Repeat("192.168.100.250,", 500) // 8,000 bytes
	for i := range count {
		name := fmt.Sprintf("fat-%03d", i)
		cidr := fmt.Sprintf("10.244.%d.%d/26", 200+i/4, 64*(i%4))
		var ann map[string]string
		if i%2 == 0 {
			p := peer{Name: name, PodCIDR: cidr, PublicIP: fmt.Sprintf("192.168.101.%d", 1+i/2), MAC: fakeMAC(1000 + i)}
			good = append(good, p)
			ann = flannelAnnotations(p)
			for k := range 4 {
				ann[fmt.Sprintf("hostile.example.com/blob-%d", k)] = blob
			}
		} else {
			ann = flannelAnnotations(peer{MAC: fakeMAC(1000 + i)})
			ann[backendDataKey] = bigData
			ann[annotationPrefix+"public-ip"] = bigIP
			for k := range 2 {
				ann[fmt.Sprintf("hostile.example.com/blob-%d", k)] = blob[:60_000]
			}
		}
		obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
		obj.Spec.PodCIDR, obj.Spec.PodCIDRs = cidr, []string{cidr}
		objs = append(objs, obj)
	}
	return objs, good
}

// created reports whether the Nodes' creation started.
func (f *fatNodes) created() bool { return f.objs != nil }

// create creates the Nodes objs, of which good are the good peers.
func (f *fatNodes) create(t testing.TB, objs []*corev1.Node, good []peer) {
	t.Helper()
	f.objs, f.good = objs, good
	forEachNode(t, f.objs, 8, func(ctx context.Context, obj *corev1.Node) error {
		_, err := f.l.Client().CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
		return err
	})
}

// delete deletes the Nodes, once, if their creation started.
func (f *fatNodes) delete(t testing.TB) {
	if !f.created() || f.deleted {
		return
	}
	f.deleted = true
	forEachNode(t, f.objs, 8, func(ctx context.Context, obj *corev1.Node) error {
		return deleteNodeIfExists(ctx, f.l, obj.Name)
	})
}

// checkMemoryUnderLimit checks that flanneld p peaked under the manifest's
// memory limit, and logs its VmRSS and VmHWM as the metrics
// rss_<metricSuffix>_mib and hwm_<metricSuffix>_mib; who names p in the
// error.
func checkMemoryUnderLimit(t *testing.T, p *lab.Process, metricSuffix, who string) {
	t.Helper()
	rss, hwm := procStatusMiB(t, p)
	metricValue(t, "rss_"+metricSuffix+"_mib", rss)
	metricValue(t, "hwm_"+metricSuffix+"_mib", hwm)
	if hwm >= manifestMemoryLimitMiB {
		t.Errorf("%s peaked at %.1f MiB (VmHWM; VmRSS %.1f MiB), over the manifest's limit of %d MiB", who, hwm, rss, manifestMemoryLimitMiB)
	}
}

// checkFatNodesMemory: with the fat Nodes created, every node programs the
// good ones and skips the oversized ones, and flanneld on n1 stays under
// the manifest's memory limit.
func checkFatNodesMemory(t *testing.T, c *kubeHostile) {
	objs, good := buildFatNodes(fatCount)
	start := time.Now()
	c.fat.create(t, objs, good)
	metric(t, "fat_nodes_create_seconds", time.Since(start))

	for _, n := range c.nodes {
		want := c.stateWith(n, c.fat.good...)
		d := measure(t, n.Name+" to program the good fat peers", 2*convergeTimeout, func() error { return checkPeerState(n.Netns, want) })
		metric(t, "fat_nodes_programmed_seconds_"+n.Name, d)
		lab.WaitFor(t, n.Name+" to skip the oversized fat peers", convergeTimeout, func() error {
			lines := logLines(n.Flanneld().Log(), `"Skipping peer"`, `node="fat-`, `rule="malformed"`)
			if len(lines) < fatCount/2 {
				return fmt.Errorf("%d Skipping peer lines for fat Nodes, want %d", len(lines), fatCount/2)
			}
			return nil
		})
	}
	checkMemoryUnderLimit(t, c.n1.Flanneld(), "fat_nodes", fmt.Sprintf("flanneld on n1 with %d fat Nodes", fatCount))
	requireRunning(t, c.n1)
}

// checkFatNodesAtStartup: a flanneld (re)starting among the fat Nodes
// lists them all, programs the good ones and stays under the manifest's
// memory limit; then the fat Nodes go.
func checkFatNodesAtStartup(t *testing.T, c *kubeHostile) {
	if !c.fat.created() {
		t.Skip("no fat Nodes (the previous subtest failed)")
	}
	n2 := c.n2
	n2.Flanneld().Stop()
	p := c.l.StartFlanneld(t, n2)
	n2.WaitReady(t, readyTimeout)
	lab.WaitFor(t, "restarted n2 to program the good fat peers", 2*convergeTimeout, func() error {
		return checkPeerState(n2.Netns, c.stateWith(n2, c.fat.good...))
	})
	checkMemoryUnderLimit(t, p, "fat_nodes_restart", fmt.Sprintf("flanneld started on n2 among %d fat Nodes", fatCount))
	c.checkLogsBounded(t)

	start := time.Now()
	c.fat.delete(t)
	metric(t, "fat_nodes_delete_seconds", time.Since(start))
	c.healthy(t)
}
