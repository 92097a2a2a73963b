package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flanneld/flanneld/e2e/lab"
)

// Images of the real-node test: the image built from bin/, and the same
// content under a new tag for the rolling upgrade.
const (
	realImage   = "flanneld.test.invalid/flanneld:e2e-1"
	realImageV2 = "flanneld.test.invalid/flanneld:e2e-2"
)

// realCluster is a lab with real nodes running containerd and kubelets.
type realCluster struct {
	l     *lab.Lab
	nodes []*lab.Node
}

// newRealCluster builds the flanneld image, starts a control plane with
// kube-controller-manager and kube-scheduler, and adds names as real nodes
// with the image imported (also as realImageV2).
func newRealCluster(t *testing.T, names ...string) *realCluster {
	t.Helper()
	lab.RequireRoot(t)
	for _, b := range []lab.Binary{lab.BinaryKubelet, lab.BinaryKubeControllerManager, lab.BinaryKubeScheduler, lab.BinaryKubectl} {
		lab.RequireBinary(t, b)
	}
	archive := lab.BuildImage(t, t.TempDir(), realImage).Archive
	l := lab.New(t)
	l.StartKubeControllers(t, lab.DefaultClusterCIDR)
	c := &realCluster{l: l}
	for _, name := range names {
		n := l.AddKubeletNode(t, name)
		n.ImportImage(t, archive)
		if out, err := n.Ctr("images", "tag", realImage, realImageV2); err != nil {
			t.Fatalf("tagging the image on %s: %v\n%s", name, err, out)
		}
		c.nodes = append(c.nodes, n)
	}
	// The manifests bring their own RBAC under the names the lab uses.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = l.Client().RbacV1().ClusterRoleBindings().Delete(ctx, "flannel", metav1.DeleteOptions{})
	_ = l.Client().RbacV1().ClusterRoles().Delete(ctx, "flannel", metav1.DeleteOptions{})
	return c
}

// ourManifest is Documentation/kube-flannel.yml with the test's image,
// then edit applied to the text.
func ourManifest(t *testing.T, edit func(string) string) string {
	t.Helper()
	m := lab.Manifest(t, realImage)
	if edit != nil {
		m = edit(m)
	}
	return m
}

// waitFlannelReady waits until the DaemonSet ns/kube-flannel-ds runs a
// ready pod of image on every node, every Node is Ready with
// NetworkUnavailable=False, and each node has the plugin and conflist.
func (c *realCluster) waitFlannelReady(t *testing.T, ns, image string) {
	t.Helper()
	lab.WaitFor(t, "flannel's DaemonSet pods ready on every node", 3*time.Minute, func() error {
		pods, err := c.pods(ns, "app=flannel")
		if err != nil {
			return err
		}
		ready := map[string]bool{}
		var states []string
		for _, p := range pods {
			ok := p.DeletionTimestamp == nil && podReady(p) && p.Spec.Containers[0].Image == image
			for _, cs := range p.Status.ContainerStatuses {
				if cs.RestartCount > 0 {
					return fmt.Errorf("flannel pod %s on %s: container %s restarted %d times", p.Name, p.Spec.NodeName, cs.Name, cs.RestartCount)
				}
			}
			ready[p.Spec.NodeName] = ready[p.Spec.NodeName] || ok
			states = append(states, fmt.Sprintf("%s on %s: %s ready=%v image=%s", p.Name, p.Spec.NodeName, p.Status.Phase, podReady(p), p.Spec.Containers[0].Image))
		}
		for _, n := range c.nodes {
			if !ready[n.Name] {
				return fmt.Errorf("no ready flannel pod of %s on %s: %v", image, n.Name, states)
			}
		}
		return nil
	})
	lab.WaitFor(t, "every Node Ready with NetworkUnavailable=False", 2*time.Minute, func() error {
		for _, n := range c.nodes {
			node := c.l.GetNode(t, n)
			conds := map[corev1.NodeConditionType]corev1.ConditionStatus{}
			for _, cond := range node.Status.Conditions {
				conds[cond.Type] = cond.Status
			}
			if conds[corev1.NodeReady] != corev1.ConditionTrue || conds[corev1.NodeNetworkUnavailable] != corev1.ConditionFalse {
				return fmt.Errorf("node %s: Ready=%s NetworkUnavailable=%s", n.Name, conds[corev1.NodeReady], conds[corev1.NodeNetworkUnavailable])
			}
		}
		return nil
	})
	for _, n := range c.nodes {
		for _, f := range []string{"opt/cni/bin/flannel", "etc/cni/net.d/10-flannel.conflist", "run/flannel/subnet.env"} {
			if _, err := os.Stat(filepath.Join(n.Root(), f)); err != nil {
				t.Errorf("node %s: %v", n.Name, err)
			}
		}
	}
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (c *realCluster) pods(ns, selector string) ([]corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	list, err := c.l.Client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}

// toolboxPod is a running toolbox pod.
type toolboxPod struct {
	name, node string
	uid        string
	ip         netip.Addr
}

// waitToolbox waits for one running toolbox pod with an address on every
// node, and checks each address is in its node's podCIDR.
func (c *realCluster) waitToolbox(t *testing.T) map[string]toolboxPod {
	t.Helper()
	var out map[string]toolboxPod
	lab.WaitFor(t, "a running toolbox pod with an address on every node", 2*time.Minute, func() error {
		pods, err := c.pods("default", "app=toolbox")
		if err != nil {
			return err
		}
		out = map[string]toolboxPod{}
		for _, p := range pods {
			if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
				continue
			}
			ip, err := netip.ParseAddr(p.Status.PodIP)
			if err != nil {
				return err
			}
			out[p.Spec.NodeName] = toolboxPod{name: p.Name, node: p.Spec.NodeName, uid: string(p.UID), ip: ip}
		}
		for _, n := range c.nodes {
			if _, ok := out[n.Name]; !ok {
				return fmt.Errorf("no running toolbox pod on %s yet (%d pods)", n.Name, len(pods))
			}
		}
		return nil
	})
	for _, n := range c.nodes {
		node := c.l.GetNode(t, n)
		cidr, err := netip.ParsePrefix(node.Spec.PodCIDR)
		if err != nil {
			t.Fatalf("node %s podCIDR %q: %v", n.Name, node.Spec.PodCIDR, err)
		}
		if p := out[n.Name]; !cidr.Contains(p.ip) {
			t.Errorf("pod %s on %s has %s, outside the node's podCIDR %s", p.name, n.Name, p.ip, cidr)
		}
	}
	return out
}

// exec runs a command in a pod (kubectl exec).
func (c *realCluster) exec(pod string, argv ...string) (string, error) {
	return c.l.Kubectl(append([]string{"exec", "-n", "default", pod, "--"}, argv...)...)
}

// pingAll checks that every toolbox pod pings every other.
func (c *realCluster) pingAll(t *testing.T, pods map[string]toolboxPod) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from.name == to.name {
				continue
			}
			lab.WaitFor(t, fmt.Sprintf("%s (%s) to ping %s (%s)", from.name, from.node, to.name, to.ip), 30*time.Second, func() error {
				_, err := c.exec(from.name, "ping", "-c", "1", "-W", "2", to.ip.String())
				return err
			})
		}
	}
}

// pinger pings from one pod to another every 10 ms in the background
// (inside the pod) until stop.
type pinger struct {
	c        *realCluster
	from, to toolboxPod
}

func (c *realCluster) startPinger(t *testing.T, from, to toolboxPod) *pinger {
	t.Helper()
	script := fmt.Sprintf("ping -i 0.01 %s >/tmp/ping.log 2>&1 & echo $! >/tmp/ping.pid", to.ip)
	if out, err := c.exec(from.name, "sh", "-c", script); err != nil {
		t.Fatalf("starting pings in %s: %v\n%s", from.name, err, out)
	}
	return &pinger{c: c, from: from, to: to}
}

var pingSeq = regexp.MustCompile(`seq=(\d+) `)

// stop ends the pings and returns how many were answered and the sequence
// numbers missing between the first and the last answer (lost pings; the
// one in flight when stopped is not a gap).
func (p *pinger) stop(t *testing.T) (answered int, missing []int) {
	t.Helper()
	if out, err := p.c.exec(p.from.name, "sh", "-c", "kill -INT $(cat /tmp/ping.pid); sleep 0.2"); err != nil {
		t.Fatalf("stopping pings in %s: %v\n%s", p.from.name, err, out)
	}
	log, err := p.c.exec(p.from.name, "cat", "/tmp/ping.log")
	if err != nil {
		t.Fatalf("reading the ping log of %s: %v", p.from.name, err)
	}
	var seqs []int
	for _, m := range pingSeq.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		seqs = append(seqs, n)
	}
	slices.Sort(seqs)
	seqs = slices.Compact(seqs)
	for i := 1; i < len(seqs); i++ {
		for s := seqs[i-1] + 1; s < seqs[i]; s++ {
			missing = append(missing, s)
		}
	}
	if len(seqs) > 0 && seqs[0] != 0 {
		for s := 0; s < seqs[0]; s++ {
			missing = append(missing, s)
		}
	}
	return len(seqs), missing
}

// TestRealNodes runs flanneld the way users do: `kubectl apply` of the
// DaemonSet on real nodes (containerd and kubelets in the lab's node
// namespaces), the image built by `make image`, the CNI plugin called by
// containerd for every pod. On one cluster of two nodes, in order:
//   - our manifest as shipped (but for the image): flannel pods Ready,
//     Nodes NetworkUnavailable=False, plugin and conflist installed, the
//     toolbox DaemonSet's pods get addresses from their node's podCIDR and
//     ping each other;
//   - a rolling upgrade to a new image tag while the pods ping each other
//     every 10 ms: no ping lost, no pod loses its address;
//   - a deleted flannel pod and a deleted toolbox pod come back;
//   - host-gw with --iface=eth0 given through the manifest;
//   - upstream's v0.28.9 manifest with only the image names changed.
func TestRealNodes(t *testing.T) {
	c := newRealCluster(t, "k1", "k2")
	l := c.l

	t.Run("our manifest", func(t *testing.T) {
		l.KubectlApply(t, ourManifest(t, nil))
		c.waitFlannelReady(t, "kube-system", realImage)
		l.KubectlApply(t, lab.ToolboxDaemonSet)
		pods := c.waitToolbox(t)
		c.pingAll(t, pods)
	})
	if t.Failed() {
		return
	}

	t.Run("rolling upgrade without loss", func(t *testing.T) {
		before := c.waitToolbox(t)
		a, b := before["k1"], before["k2"]
		pings := []*pinger{c.startPinger(t, a, b), c.startPinger(t, b, a)}
		time.Sleep(time.Second)
		l.MustKubectl(t, "-n", "kube-system", "set", "image", "daemonset/kube-flannel-ds",
			"kube-flannel="+realImageV2, "install-cni-plugin="+realImageV2, "install-cni="+realImageV2)
		if out, err := l.Kubectl("-n", "kube-system", "rollout", "status", "daemonset/kube-flannel-ds", "--timeout=3m"); err != nil {
			t.Fatalf("rollout: %v\n%s", err, out)
		}
		c.waitFlannelReady(t, "kube-system", realImageV2)
		time.Sleep(time.Second)
		for _, p := range pings {
			answered, missing := p.stop(t)
			t.Logf("%s -> %s: %d pings answered every 10 ms through the upgrade, %d lost", p.from.name, p.to.ip, answered, len(missing))
			if answered < 100 {
				t.Errorf("%s -> %s: only %d pings answered", p.from.name, p.to.ip, answered)
			}
			if len(missing) > 0 {
				t.Errorf("%s -> %s: %d pings lost during the upgrade (seq %v)", p.from.name, p.to.ip, len(missing), missing[:min(len(missing), 20)])
			}
		}
		after := c.waitToolbox(t)
		for node, p := range before {
			if q := after[node]; q.uid != p.uid || q.ip != p.ip {
				t.Errorf("toolbox pod on %s changed: %s %s -> %s %s", node, p.name, p.ip, q.name, q.ip)
			}
		}
	})

	t.Run("deleted pods come back", func(t *testing.T) {
		flannel, err := c.pods("kube-system", "app=flannel")
		if err != nil {
			t.Fatal(err)
		}
		var victim string
		for _, p := range flannel {
			if p.Spec.NodeName == "k1" && p.DeletionTimestamp == nil {
				victim = p.Name
			}
		}
		l.MustKubectl(t, "-n", "kube-system", "delete", "pod", victim, "--wait=true")
		before := c.waitToolbox(t)
		l.MustKubectl(t, "-n", "default", "delete", "pod", before["k2"].name, "--wait=true")
		c.waitFlannelReady(t, "kube-system", realImageV2)
		after := c.waitToolbox(t)
		if after["k2"].uid == before["k2"].uid {
			t.Errorf("the toolbox pod on k2 was not replaced")
		}
		c.pingAll(t, after)
	})

	t.Run("host-gw with --iface through the manifest", func(t *testing.T) {
		hostgw := ourManifest(t, func(m string) string {
			m = strings.Replace(m, `"Type": "vxlan"`, `"Type": "host-gw"`, 1)
			return strings.Replace(m, "            - --kube-subnet-mgr\n", "            - --kube-subnet-mgr\n            - --iface=eth0\n", 1)
		})
		if !strings.Contains(hostgw, "--iface=eth0") || !strings.Contains(hostgw, "host-gw") {
			t.Fatal("could not edit the manifest for host-gw and --iface")
		}
		l.KubectlApply(t, hostgw)
		lab.WaitFor(t, "flannel pods with --iface=eth0", 3*time.Minute, func() error {
			pods, err := c.pods("kube-system", "app=flannel")
			if err != nil {
				return err
			}
			for _, p := range pods {
				if !slices.Contains(p.Spec.Containers[0].Args, "--iface=eth0") {
					return fmt.Errorf("pod %s runs without --iface=eth0", p.Name)
				}
			}
			return nil
		})
		c.waitFlannelReady(t, "kube-system", realImage)
		// host-gw: the peer's podCIDR through its address on eth0.
		k2 := c.l.GetNode(t, c.nodes[1])
		lab.WaitFor(t, "k1's host-gw route to k2's podCIDR", time.Minute, func() error {
			out, err := lab.Exec(c.nodes[0].Netns, "ip", "-4", "route", "show", k2.Spec.PodCIDR)
			if err != nil {
				return err
			}
			if want := "via " + c.nodes[1].IP.String() + " dev eth0"; !strings.Contains(out, want) {
				return fmt.Errorf("route %q, want %q", strings.TrimSpace(out), want)
			}
			return nil
		})
		c.pingAll(t, c.waitToolbox(t))
	})

	t.Run("upstream v0.28.9 manifest, only the images changed", func(t *testing.T) {
		l.KubectlDelete(t, ourManifest(t, nil))
		lab.WaitFor(t, "our flannel pods to go", 2*time.Minute, func() error {
			pods, err := c.pods("kube-system", "app=flannel")
			if err == nil && len(pods) > 0 {
				err = fmt.Errorf("%d flannel pods left in kube-system", len(pods))
			}
			return err
		})
		b, err := os.ReadFile(filepath.Join("testdata", "upstream-kube-flannel-v0.28.9.yml"))
		if err != nil {
			t.Fatal(err)
		}
		upstream := strings.ReplaceAll(string(b), "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.0-flannel1", realImage)
		upstream = strings.ReplaceAll(upstream, "ghcr.io/flannel-io/flannel:v0.28.9", realImage)
		l.KubectlApply(t, upstream)
		c.waitFlannelReady(t, "kube-flannel", realImage)
		c.pingAll(t, c.waitToolbox(t))
	})
}
