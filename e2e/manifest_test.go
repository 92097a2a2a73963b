package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"

	"github.com/flanneld/flanneld/e2e/lab"
)

// manifestObjects decodes Documentation/kube-flannel.yml.
func manifestObjects(t *testing.T) []runtime.Object {
	t.Helper()
	objs, err := lab.ManifestObjects()
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// createObject creates one manifest object, as a server-side dry run or for real.
func createObject(ctx context.Context, c kubernetes.Interface, obj runtime.Object, dryRun bool) error {
	opts := metav1.CreateOptions{FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var err error
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
	case *corev1.ConfigMap:
		_, err = c.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, opts)
	case *rbacv1.ClusterRole:
		_, err = c.RbacV1().ClusterRoles().Create(ctx, o, opts)
	case *rbacv1.ClusterRoleBinding:
		_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
	case *appsv1.DaemonSet:
		_, err = c.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, opts)
	default:
		return fmt.Errorf("unexpected object %T in the manifest", obj)
	}
	return err
}

// TestManifest applies Documentation/kube-flannel.yml to the lab's real
// kube-apiserver, then runs flanneld with the ServiceAccount's token, so
// the RBAC the manifest grants is proven to be what flanneld needs.
func TestManifest(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	c := l.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	objs := manifestObjects(t)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, fmt.Sprintf("%T", o))
	}
	for _, want := range []string{"*v1.ServiceAccount", "*v1.ClusterRole", "*v1.ClusterRoleBinding", "*v1.ConfigMap", "*v1.DaemonSet"} {
		if !slices.Contains(kinds, want) {
			t.Fatalf("manifest lacks a %s (has %v)", want, kinds)
		}
	}

	// The lab's own grant uses the same names; the manifest replaces it.
	_ = c.RbacV1().ClusterRoleBindings().Delete(ctx, "flannel", metav1.DeleteOptions{})
	_ = c.RbacV1().ClusterRoles().Delete(ctx, "flannel", metav1.DeleteOptions{})

	for _, dryRun := range []bool{true, false} {
		for _, o := range objs {
			if err := createObject(ctx, c, o, dryRun); err != nil {
				t.Fatalf("create %T (dry run %v): %v", o, dryRun, err)
			}
		}
	}

	var cm *corev1.ConfigMap
	var role *rbacv1.ClusterRole
	var ds *appsv1.DaemonSet
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			cm = o
		case *rbacv1.ClusterRole:
			role = o
		case *appsv1.DaemonSet:
			ds = o
		}
	}
	t.Run("daemonset", func(t *testing.T) { checkDaemonSet(t, ds) })
	t.Run("least privilege", func(t *testing.T) {
		want := []string{"events:create,patch", "nodes/status:patch", "nodes:get,list,watch", "pods:get"} // sorted
		var got []string
		for _, r := range role.Rules {
			for _, res := range r.Resources {
				got = append(got, res+":"+strings.Join(r.Verbs, ","))
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("ClusterRole flannel grants %v, want exactly %v", got, want)
		}
	})

	// flanneld with the ServiceAccount's token and the ConfigMap's net-conf.json.
	tr, err := c.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "flannel",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for the flannel ServiceAccount: %v", err)
	}
	kubeconfig := filepath.Join(l.Dir(), "sa.kubeconfig")
	if err := lab.WriteKubeconfig(kubeconfig, "flannel", tr.Status.Token); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteNetConf(cm.Data["net-conf.json"]); err != nil {
		t.Fatal(err)
	}
	nodes := []*lab.Node{l.AddNode(t, "n1", podCIDR(1)), l.AddNode(t, "n2", podCIDR(2))}
	procs := make([]*lab.Process, len(nodes))
	for i, n := range nodes {
		procs[i] = l.StartFlanneld(t, n, "--kubeconfig-file="+kubeconfig)
	}
	for _, n := range nodes {
		if err := n.PollReady(readyTimeout); err != nil {
			t.Fatalf("flanneld on %s with the ServiceAccount token: %v", n.Name, err)
		}
	}
	for i, n := range nodes {
		mac := vtepMAC(t, n)
		if err := lab.Poll(convergeTimeout, func() error { return checkNodeObjectUp(l.GetNode(t, n), mac, underlayIP(i+1)) }); err != nil {
			t.Errorf("Node %s: %v", n.Name, err)
		}
	}
	pods := []*lab.Pod{l.AddPod(t, nodes[0], "p1"), l.AddPod(t, nodes[1], "p1")}
	pingAll(t, pods)
	for i, p := range procs {
		if log := p.Log(); strings.Contains(strings.ToLower(log), "forbidden") {
			t.Errorf("flanneld on %s was refused something by RBAC:\n%s", nodes[i].Name, log)
		}
	}
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	spec := ds.Spec.Template.Spec
	if ds.Name != "kube-flannel-ds" || ds.Namespace != "kube-system" {
		t.Errorf("DaemonSet %s/%s, want kube-system/kube-flannel-ds", ds.Namespace, ds.Name)
	}
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != "flannel" {
		t.Errorf("hostNetwork %v, priorityClass %q, serviceAccount %q", spec.HostNetwork, spec.PriorityClassName, spec.ServiceAccountName)
	}
	if len(spec.InitContainers) != 2 || len(spec.Containers) != 1 {
		t.Fatalf("%d init containers and %d containers, want 2 and 1", len(spec.InitContainers), len(spec.Containers))
	}
	main := spec.Containers[0]
	if !slices.Contains(main.Args, "--kube-subnet-mgr") || !slices.Contains(main.Args, "--ip-masq") {
		t.Errorf("args %v lack --kube-subnet-mgr/--ip-masq", main.Args)
	}
	caps := main.SecurityContext.Capabilities.Add
	if !slices.Contains(caps, "NET_ADMIN") || !slices.Contains(caps, "NET_RAW") {
		t.Errorf("capabilities %v", caps)
	}
	if main.LivenessProbe == nil || main.LivenessProbe.HTTPGet.Path != "/healthz" ||
		main.ReadinessProbe == nil || main.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("probes must use /healthz and /readyz")
	}
	if main.Resources.Requests.Cpu().IsZero() || main.Resources.Requests.Memory().IsZero() {
		t.Error("resource requests missing")
	}
	var env []string
	for _, e := range main.Env {
		env = append(env, e.Name)
	}
	if !slices.Contains(env, "NODE_NAME") {
		t.Errorf("env %v lacks NODE_NAME", env)
	}
	var paths []string
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			paths = append(paths, v.HostPath.Path)
		}
	}
	for _, p := range []string{"/run/flannel", "/opt/cni/bin", "/etc/cni/net.d", "/run/xtables.lock"} {
		if !slices.Contains(paths, p) {
			t.Errorf("hostPath volumes %v lack %s", paths, p)
		}
	}
}
