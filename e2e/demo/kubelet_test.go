package demo

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// demoImage is the name the demo gives the image it builds.
const demoImage = "flanneld.demo.invalid/flanneld:demo"

// demoKubelet is `make demo KUBELET=1`: three real nodes (containerd and a
// kubelet each), flanneld installed from Documentation/kube-flannel.yml with
// the image `make image` builds, and a DaemonSet of busybox pods that ping
// each other through flannel.
func demoKubelet(t *testing.T, step func(string, ...any), backend string) {
	step("building the flanneld image (hack/build-image.sh: Debian base, our binaries)")
	img := lab.BuildImage(t, t.TempDir(), demoImage)
	fmt.Printf("  %s (%s)\n", img.Archive, img.Ref)

	step("starting etcd, kube-apiserver, kube-controller-manager (node IPAM) and kube-scheduler")
	l := lab.New(t)
	l.StartKubeControllers(t, lab.DefaultClusterCIDR)

	step("creating 3 real nodes: containerd and a kubelet in each node's namespace")
	var nodes []*lab.Node
	for i := 1; i <= 3; i++ {
		n := l.AddKubeletNode(t, fmt.Sprintf("node%d", i))
		n.ImportImage(t, img.Archive)
		nodes = append(nodes, n)
	}
	fmt.Print(indent(l.MustKubectl(t, "get", "nodes", "-o", "wide")))

	step("kubectl apply -f Documentation/kube-flannel.yml (image %s, backend %s)", demoImage, backend)
	manifest := lab.Manifest(t, demoImage)
	manifest = strings.Replace(manifest, `"Type": "vxlan"`, fmt.Sprintf("%q: %q", "Type", backend), 1)
	l.KubectlApply(t, manifest)
	lab.WaitFor(t, "flannel's DaemonSet to be ready", 3*time.Minute, func() error {
		_, err := l.Kubectl("-n", "kube-system", "rollout", "status", "daemonset/kube-flannel-ds", "--timeout=5s")
		return err
	})
	fmt.Print(indent(l.MustKubectl(t, "-n", "kube-system", "get", "pods", "-o", "wide")))
	fmt.Print(indent(l.MustKubectl(t, "get", "nodes", "-o",
		`custom-columns=NODE:.metadata.name,PODCIDR:.spec.podCIDR,READY:.status.conditions[?(@.type=="Ready")].status,NETWORK-UNAVAILABLE:.status.conditions[?(@.type=="NetworkUnavailable")].status,PUBLIC-IP:.metadata.annotations.flannel\.alpha\.coreos\.com/public-ip`)))

	step("a DaemonSet of busybox pods; containerd calls flannel -> bridge, host-local for each")
	l.KubectlApply(t, lab.ToolboxDaemonSet)
	lab.WaitFor(t, "the toolbox pods to run", 2*time.Minute, func() error {
		_, err := l.Kubectl("-n", "default", "rollout", "status", "daemonset/toolbox", "--timeout=5s")
		return err
	})
	out := l.MustKubectl(t, "-n", "default", "get", "pods", "-l", "app=toolbox", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}`)
	fmt.Print(indent(out))

	for _, n := range nodes[:1] {
		step("what %s looks like", n.Name)
		show(n.Netns, "cat", n.Root()+"/run/flannel/subnet.env")
		show(n.Netns, "ip", "route")
		show(n.Netns, "ip", "-br", "link", "show", "master", "cni0")
	}

	step("pinging every pod from every pod (kubectl exec ... ping)")
	type pod struct{ name, node, ip string }
	var pods []pod
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 {
			pods = append(pods, pod{f[0], f[1], f[2]})
		}
	}
	failed := 0
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			err := lab.Poll(20*time.Second, func() error {
				_, err := l.Kubectl("exec", from.name, "--", "ping", "-c", "1", "-W", "2", to.ip)
				return err
			})
			result := "ok"
			if err != nil {
				result, failed = "FAILED", failed+1
			}
			fmt.Printf("  %s (%s) -> %s (%s, %s): %s\n", from.name, from.node, to.name, to.node, to.ip, result)
		}
	}
	if failed > 0 {
		t.Fatalf("%d pings failed", failed)
	}
	step("all %d pod pairs reach each other; tearing down", len(pods)*(len(pods)-1))
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}
