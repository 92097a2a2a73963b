package lab

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ServiceIP is the kubernetes Service's cluster IP (the first address of
// kube-apiserver's --service-cluster-ip-range), which in-cluster clients
// such as flanneld's DaemonSet pods dial; every real node DNATs it to the
// API server (kubenode.go), standing in for kube-proxy.
const ServiceIP = "10.96.0.1"

// DefaultClusterCIDR is the --cluster-cidr kube-controller-manager
// allocates node podCIDRs from, matching DefaultNetConf's Network.
const DefaultClusterCIDR = "10.244.0.0/16"

// ToolboxDaemonSet runs one toolbox pod (busybox: sleep, ping, ...) on
// every real node, in the pod network, in namespace default.
const ToolboxDaemonSet = `apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: toolbox
  namespace: default
spec:
  selector:
    matchLabels:
      app: toolbox
  template:
    metadata:
      labels:
        app: toolbox
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: toolbox
          image: ` + ToolboxImage + `
          command: ["sleep", "100000"]
`

// StartKubeControllers starts kube-controller-manager (node IPAM with
// --allocate-node-cidrs from clusterCIDR, /24 per node; the DaemonSet,
// Deployment, ReplicaSet, service-account and root-CA controllers, ...)
// and kube-scheduler in the control plane, for labs with real nodes
// (AddKubeletNode).
func (l *Lab) StartKubeControllers(t testing.TB, clusterCIDR string) {
	t.Helper()
	kcm := RequireBinary(t, BinaryKubeControllerManager)
	sched := RequireBinary(t, BinaryKubeScheduler)
	cp := l.cp
	l.Start(t, cp.netns, "kube-controller-manager", nil, kcm,
		"--kubeconfig="+cp.adminKubeconfig,
		"--authentication-kubeconfig="+cp.adminKubeconfig,
		"--authorization-kubeconfig="+cp.adminKubeconfig,
		"--leader-elect=false",
		"--allocate-node-cidrs",
		"--cluster-cidr="+clusterCIDR,
		"--node-cidr-mask-size=24",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--root-ca-file="+filepath.Join(cp.dir, "certs", "apiserver.crt"),
		"--service-account-private-key-file="+filepath.Join(cp.dir, "sa.key"),
		"--use-service-account-credentials=false",
		"--bind-address=127.0.0.1",
		"--node-monitor-grace-period=20s",
		"-v=1")
	l.Start(t, cp.netns, "kube-scheduler", nil, sched,
		"--kubeconfig="+cp.adminKubeconfig,
		"--authentication-kubeconfig="+cp.adminKubeconfig,
		"--authorization-kubeconfig="+cp.adminKubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"-v=1")
}

// Kubectl runs kubectl with the admin kubeconfig (from the control plane's
// namespace) and returns its standard output; the error carries stderr.
func (l *Lab) Kubectl(args ...string) (string, error) {
	bin, err := resolveBinary(BinaryKubectl)
	if err != nil {
		return "", err
	}
	return l.kubectlStdin(bin, "", args...)
}

// KubectlApply applies a manifest given as text (kubectl apply -f -).
func (l *Lab) KubectlApply(t testing.TB, manifest string) {
	t.Helper()
	bin := RequireBinary(t, BinaryKubectl)
	if out, err := l.kubectlStdin(bin, manifest, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// KubectlDelete deletes the objects of a manifest given as text and waits
// for them to go (kubectl delete --wait -f -).
func (l *Lab) KubectlDelete(t testing.TB, manifest string) {
	t.Helper()
	bin := RequireBinary(t, BinaryKubectl)
	if out, err := l.kubectlStdin(bin, manifest, "delete", "--wait=true", "--ignore-not-found", "-f", "-"); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
}

// MustKubectl is Kubectl failing the test on error.
func (l *Lab) MustKubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := l.Kubectl(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (l *Lab) kubectlStdin(bin, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append([]string{"netns", "exec", l.cp.netns, bin, "--kubeconfig=" + l.cp.adminKubeconfig}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
