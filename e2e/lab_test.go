package e2e

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestLab checks the lab itself, without flanneld: the control plane comes
// up, nodes and pods are wired, processes are managed, and nothing of the
// run is left behind afterwards.
func TestLab(t *testing.T) {
	lab.RequireRoot(t)
	var (
		runID   string
		leftBg  *lab.Process
		labRoot string
	)
	t.Run("cluster", func(t *testing.T) {
		l := lab.New(t)
		runID, labRoot = l.RunID(), l.Dir()

		n1 := l.AddNode(t, "n1", "10.244.1.0/24")
		n2 := l.AddNode(t, "n2", "")
		checkNodeObject(t, l.GetNode(t, n1), "10.244.1.0/24", "192.168.100.11")
		checkNodeObject(t, l.GetNode(t, n2), "", "192.168.100.12")

		// The underlay connects nodes and the control plane.
		for _, to := range []string{"192.168.100.12", lab.ControlPlaneIP.String()} {
			if _, err := lab.Exec(n1.Netns, "ping", "-c", "1", "-W", "2", to); err != nil {
				t.Errorf("underlay: n1 cannot reach %s: %v", to, err)
			}
		}
		if out, err := lab.Exec(n1.Netns, "sysctl", "-n", "net.ipv4.ip_forward"); err != nil || strings.TrimSpace(out) != "1" {
			t.Errorf("n1 ip_forward = %q, %v; want 1", out, err)
		}
		routes, err := lab.ShowRoutes(n1.Netns)
		if err != nil {
			t.Fatal(err)
		}
		if !hasRoute(routes, "default", lab.UnderlayGateway.String(), "eth0") {
			t.Errorf("n1 has no default route via %s dev eth0: %v", lab.UnderlayGateway, routes)
		}

		// Pods, wired by hand from a subnet.env we write ourselves.
		env := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
		if err := os.WriteFile(n1.SubnetFile, []byte(env), 0o644); err != nil {
			t.Fatal(err)
		}
		p1 := l.AddPod(t, n1, "p1")
		p2 := l.AddPod(t, n1, "p2")
		if want := netip.MustParseAddr("10.244.1.2"); p1.IP != want {
			t.Errorf("p1 IP = %s, want %s", p1.IP, want)
		}
		if want := netip.MustParseAddr("10.244.1.3"); p2.IP != want {
			t.Errorf("p2 IP = %s, want %s", p2.IP, want)
		}
		if link, err := lab.ShowLink(p1.Netns, "eth0"); err != nil || link.MTU != 1450 {
			t.Errorf("p1 eth0: MTU %d, %v; want 1450", link.MTU, err)
		}
		lab.WaitPing(t, p1, p1.Gateway, 10*time.Second)
		lab.WaitPing(t, p1, p2.IP, 10*time.Second)

		// Processes: Kill9 and Stop end the whole group; a process left
		// running is stopped by the cleanup.
		k := l.Start(t, n2.Netns, "sleeper", nil, "sh", "-c", "sleep 600 & sleep 600")
		k.Kill9()
		if k.Running() || k.ExitCode() != -1 {
			t.Errorf("after Kill9: running %v, exit code %d", k.Running(), k.ExitCode())
		}
		s := l.Start(t, n2.Netns, "sleeper", nil, "sleep", "600")
		if s.Name != "sleeper-2" {
			t.Errorf("second process named %q, want sleeper-2", s.Name)
		}
		s.Stop()
		if s.Running() || s.ExitCode() != -1 {
			t.Errorf("after Stop: running %v, exit code %d", s.Running(), s.ExitCode())
		}
		e := l.Start(t, n2.Netns, "exiter", nil, "sh", "-c", "echo out; echo err >&2; exit 3")
		if code, ok := e.WaitExit(10 * time.Second); !ok || code != 3 {
			t.Errorf("exit code %d (exited %v), want 3", code, ok)
		}
		if e.Log() != "err\n" || e.Stdout() != "out\n" {
			t.Errorf("stderr %q stdout %q", e.Log(), e.Stdout())
		}
		leftBg = l.Start(t, n2.Netns, "left-running", nil, "sleep", "600")
	})

	if runID == "" {
		t.Fatal("the lab was not created")
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if prefix := "fl" + runID + "-"; strings.Contains(string(out), prefix) {
		t.Errorf("namespaces of run %s left behind:\n%s", runID, out)
	}
	if leftBg != nil && leftBg.Running() {
		t.Errorf("process %s (pid %d) still running after cleanup", leftBg.Name, leftBg.Pid())
		leftBg.Kill9()
	}
	if leftBg != nil {
		// The whole process group must be gone, not just its leader.
		if err := syscall.Kill(-leftBg.Pid(), 0); err == nil {
			t.Errorf("process group %d still has members after cleanup", leftBg.Pid())
		}
	}
	if _, err := os.Stat(filepath.Join(labRoot, "logs")); err == nil {
		t.Errorf("lab directory %s left behind", labRoot)
	}
}

func checkNodeObject(t *testing.T, node *corev1.Node, podCIDR, internalIP string) {
	t.Helper()
	if node.Spec.PodCIDR != podCIDR {
		t.Errorf("Node %s spec.podCIDR = %q, want %q", node.Name, node.Spec.PodCIDR, podCIDR)
	}
	if podCIDR != "" && (len(node.Spec.PodCIDRs) != 1 || node.Spec.PodCIDRs[0] != podCIDR) {
		t.Errorf("Node %s spec.podCIDRs = %v, want [%s]", node.Name, node.Spec.PodCIDRs, podCIDR)
	}
	found := false
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && a.Address == internalIP {
			found = true
		}
	}
	if !found {
		t.Errorf("Node %s addresses %v lack InternalIP %s", node.Name, node.Status.Addresses, internalIP)
	}
}

func hasRoute(routes []lab.Route, dst, gateway, dev string) bool {
	for _, r := range routes {
		if r.Dst == dst && r.Gateway == gateway && r.Dev == dev {
			return true
		}
	}
	return false
}
