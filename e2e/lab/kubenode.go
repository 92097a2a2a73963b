package lab

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A real node (AddKubeletNode) is a node namespace running containerd
// (Debian's package) and a kubelet, as a Kubernetes node does. Both run in
// a mount namespace of the node's own, held by a "mounts" process, where
// the directories a node's runtime and CNI plugins use are private bind
// mounts of directories under the node's scratch directory:
var nodePrivateDirs = []string{
	"/run/flannel", "/etc/cni/net.d", "/opt/cni/bin", "/var/lib/kubelet",
	"/var/lib/cni", "/run/netns", "/run/containerd", "/var/log/pods",
	"/var/log/containers", "/var/lib/containerd",
}

// Images the lab's nodes import (hack/build-lab-images.sh).
const (
	PauseImage   = "lab.invalid/pause:1"
	ToolboxImage = "lab.invalid/toolbox:1"
)

// kubeletNode is what a real node runs besides its namespace.
type kubeletNode struct {
	root       string // the node's view of /, for the private directories
	cgroupRoot string // kubelet's cgroupRoot ("/fl<run>-<node>")
	mounts     *Process
	mntNS      string // the mount namespace's identity, e.g. "mnt:[4026532490]"
	containerd *Process
	kubelet    *Process
}

// AddKubeletNode creates a node namespace as AddNode does (but no Node
// object: the kubelet registers it, and kube-controller-manager gives it a
// podCIDR), starts containerd and a kubelet in it, copies the CNI reference
// plugins (bridge, host-local, portmap, loopback) to its /opt/cni/bin,
// imports the lab's pause and toolbox images, and waits until the kubelet
// has registered the Node. The node's NetworkReady stays false until a CNI
// configuration appears (flannel's DaemonSet installs one).
func (l *Lab) AddKubeletNode(t testing.TB, name string) *Node {
	t.Helper()
	kubelet := RequireBinary(t, BinaryKubelet)
	containerd := RequireBinary(t, BinaryContainerd)
	RequireTool(t, "runc", "runc")
	RequireTool(t, "ctr", "containerd")
	n := l.addNodeNamespace(t, Segment1, name)
	k := &kubeletNode{
		root:       filepath.Join(n.Dir, "root"),
		cgroupRoot: "/" + netnsName(l.runID, name),
	}
	n.kube = k
	n.SubnetFile = filepath.Join(k.root, "run", "flannel", "subnet.env")
	l.addCleanup(func() { k.kill(l.t) })
	start := time.Now()
	if err := k.prepare(); err != nil {
		t.Fatalf("preparing real node %s: %v", name, err)
	}
	if err := l.serviceDNAT(n); err != nil {
		t.Fatalf("preparing real node %s: %v", name, err)
	}
	if err := l.startMounts(n); err != nil {
		t.Fatalf("starting real node %s: %v", name, err)
	}
	if err := l.startContainerd(n, containerd); err != nil {
		t.Fatalf("starting containerd on %s: %v", name, err)
	}
	for _, archive := range []string{"lab-pause-oci.tar", "lab-toolbox-oci.tar"} {
		n.ImportImage(t, filepath.Join(mustRepoRoot(t), "bin", "image", archive))
	}
	if err := l.startKubelet(n, kubelet); err != nil {
		t.Fatalf("starting the kubelet on %s: %v", name, err)
	}
	WaitFor(t, "the kubelet of "+name+" to register its Node", 90*time.Second, func() error {
		if !k.kubelet.Running() {
			return fmt.Errorf("kubelet %s; log tail:\n%s", k.kubelet.describeExit(), tail(k.kubelet.Log(), 30))
		}
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		_, err := l.Client().CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		return err
	})
	t.Logf("real node %s registered after %v", name, time.Since(start).Round(100*time.Millisecond))
	return n
}

func mustRepoRoot(t testing.TB) string {
	t.Helper()
	root, err := FindRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// prepare creates the node's private directories, its CNI plugins and the
// kubelet's cgroupRoot in every cgroup v1 hierarchy.
func (k *kubeletNode) prepare() error {
	for _, d := range nodePrivateDirs {
		if err := os.MkdirAll(filepath.Join(k.root, d), 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(d, 0o755); err != nil { // the mount point
			return err
		}
	}
	root, err := FindRepoRoot()
	if err != nil {
		return err
	}
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback"} {
		src := filepath.Join(root, "bin", "cni", p)
		if out, err := exec.Command("cp", src, filepath.Join(k.root, "opt/cni/bin", p)).CombinedOutput(); err != nil {
			return fmt.Errorf("copying the CNI plugin %s (make lab-binaries): %w: %s", p, err, out)
		}
	}
	hier, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hier {
		if err := os.MkdirAll(filepath.Join(h.mountpoint, k.cgroupRoot), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// cgroupHierarchy is one cgroup v1 mount of the host.
type cgroupHierarchy struct {
	mountpoint string // e.g. /sys/fs/cgroup/memory
	options    string // the super options naming it, e.g. "memory" or "none,name=systemd"
}

// cgroupHierarchies lists the host's cgroup v1 hierarchies from mountinfo.
// `ip netns exec` mounts a new /sys, which hides them, so a node's mount
// namespace mounts them again.
func cgroupHierarchies() ([]cgroupHierarchy, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []cgroupHierarchy
	s := bufio.NewScanner(f)
	for s.Scan() {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fields, postFields := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(postFields) < 3 || postFields[0] != "cgroup" {
			continue
		}
		var opts []string
		for _, o := range strings.Split(postFields[2], ",") {
			if o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		if slices.ContainsFunc(opts, func(o string) bool { return strings.HasPrefix(o, "name=") }) {
			opts = append([]string{"none"}, opts...)
		}
		out = append(out, cgroupHierarchy{mountpoint: fields[4], options: strings.Join(opts, ",")})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no cgroup v1 hierarchy is mounted (the real-node lab runs kubelet on cgroup v1)")
	}
	return out, s.Err()
}

// startMounts starts the process holding the node's mount namespace: the
// cgroup hierarchies mounted again and the private directories bound.
func (l *Lab) startMounts(n *Node) error {
	k := n.kube
	hier, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var script strings.Builder
	script.WriteString("set -e\nmount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n")
	for _, h := range hier {
		fmt.Fprintf(&script, "mkdir -p %s\nmount -t cgroup -o %s cgroup %s\n", h.mountpoint, h.options, h.mountpoint)
	}
	for _, d := range nodePrivateDirs {
		fmt.Fprintf(&script, "mount --bind %s %s\n", filepath.Join(k.root, d), d)
	}
	script.WriteString("echo ready\nexec sleep infinity\n")
	k.mounts, err = l.start(n.Netns, "mounts-"+n.Name, nil,
		[]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script.String()})
	if err != nil {
		return err
	}
	return Poll(20*time.Second, func() error {
		if !k.mounts.Running() {
			return fmt.Errorf("the mount namespace of %s: %s: %s", n.Name, k.mounts.describeExit(), k.mounts.Log())
		}
		if !strings.Contains(k.mounts.Stdout(), "ready") {
			return fmt.Errorf("the mount namespace of %s is not ready", n.Name)
		}
		k.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", k.mounts.Pid()))
		return err
	})
}

// inNode returns argv run inside the node's mount namespace: that of the
// mounts process (`ip netns exec` and unshare exec, and the script ends in
// `exec sleep`, so its pid is the lab Process's).
func (k *kubeletNode) inNode(argv ...string) []string {
	return append([]string{"nsenter", "-t", strconv.Itoa(k.mounts.Pid()), "-m", "--"}, argv...)
}

// containerdConfig is containerd's configuration on a real node.
const containerdConfig = `version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "` + PauseImage + `"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`

func (l *Lab) startContainerd(n *Node, bin string) error {
	k := n.kube
	conf := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig), 0o644); err != nil {
		return err
	}
	var err error
	k.containerd, err = l.start(n.Netns, "containerd-"+n.Name, nil, k.inNode(bin, "--config", conf))
	if err != nil {
		return err
	}
	return Poll(30*time.Second, func() error {
		if !k.containerd.Running() {
			return fmt.Errorf("containerd %s; log tail:\n%s", k.containerd.describeExit(), tail(k.containerd.Log(), 30))
		}
		_, err := n.Ctr("version")
		return err
	})
}

// Root is where a real node keeps its private directories: Root()+"/run/flannel"
// is the node's /run/flannel.
func (n *Node) Root() string { return n.kube.root }

// Ctr runs ctr against the node's containerd, in the k8s.io namespace.
func (n *Node) Ctr(args ...string) (string, error) {
	return Exec(n.Netns, n.kube.inNode(append([]string{"ctr", "-n", "k8s.io"}, args...)...)...)
}

// ImportImage imports an OCI image archive into the node's containerd.
func (n *Node) ImportImage(t testing.TB, archive string) {
	t.Helper()
	if n.kube == nil {
		t.Fatalf("node %s is not a real node", n.Name)
	}
	if _, err := os.Stat(archive); err != nil {
		t.Fatalf("image archive: %v (make lab-binaries builds the lab's images, make image flanneld's)", err)
	}
	if out, err := n.Ctr("images", "import", "--no-unpack", archive); err != nil {
		t.Fatalf("importing %s into %s: %v\n%s", archive, n.Name, err, out)
	}
}

// kubeletConfig is the KubeletConfiguration of a real node: cgroup v1 with
// cgroupfs under a cgroupRoot of the node's own, no OOM score changes (the
// lab lacks CAP_SYS_RESOURCE), no authentication from the API server.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
oomScoreAdj: 0
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
localStorageCapacityIsolation: false
resolvConf: ""
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
fileCheckFrequency: 5s
`

func (l *Lab) startKubelet(n *Node, bin string) error {
	k := n.kube
	conf := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(kubeletConfig, k.cgroupRoot)), 0o644); err != nil {
		return err
	}
	var err error
	k.kubelet, err = l.start(n.Netns, "kubelet-"+n.Name, nil, k.inNode(bin,
		"--config="+conf,
		"--kubeconfig="+l.cp.adminKubeconfig,
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP.String(),
		"--root-dir=/var/lib/kubelet",
		"-v=1"))
	return err
}

// serviceDNAT sends the kubernetes Service's address to the API server, as
// kube-proxy would, for the pods (PREROUTING) and for host-network pods
// such as flanneld's (OUTPUT).
func (l *Lab) serviceDNAT(n *Node) error {
	rules := [][]string{
		{"-t", "nat", "-N", "LAB-SERVICES"},
		{"-t", "nat", "-A", "LAB-SERVICES", "-d", ServiceIP + "/32", "-p", "tcp", "--dport", "443",
			"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", ControlPlaneIP, apiServerPort)},
		{"-t", "nat", "-A", "OUTPUT", "-j", "LAB-SERVICES"},
		{"-t", "nat", "-A", "PREROUTING", "-j", "LAB-SERVICES"},
	}
	for _, r := range rules {
		if _, err := Exec(n.Netns, append([]string{"iptables", "-w"}, r...)...); err != nil {
			return err
		}
	}
	return nil
}

// kill ends every process of a real node that Stop does not reach: the
// containerd shims (in the node's mount namespace) and the containers (in
// the kubelet's cgroupRoot), then removes the cgroups.
func (k *kubeletNode) kill(t testing.TB) {
	hier, _ := cgroupHierarchies()
	for range 50 {
		pids := k.pids(hier, k.mntNS)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, h := range hier {
		removeCgroupTree(filepath.Join(h.mountpoint, k.cgroupRoot))
	}
	// The containerd root holds unpacked images: hundreds of MB per node.
	if err := os.RemoveAll(filepath.Join(k.root, "var/lib/containerd")); err != nil {
		t.Logf("removing a node's containerd root: %v", err)
	}
}

// pids returns the processes in the node's cgroups or mount namespace.
func (k *kubeletNode) pids(hier []cgroupHierarchy, mntNS string) []int {
	var pids []int
	for _, h := range hier {
		_ = filepath.WalkDir(filepath.Join(h.mountpoint, k.cgroupRoot), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	if mntNS != "" {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns == mntNS {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// removeCgroupTree removes a cgroup and its children, deepest first.
func removeCgroupTree(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = syscall.Rmdir(dirs[i])
	}
}
