package lab

// Pods are created the way a container runtime creates them: a network
// namespace per pod, and the CNI conflist from the manifest's ConfigMap
// (the project's flannel plugin delegating to the reference bridge,
// host-local and portmap plugins), run by cnitool inside the node.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	BinaryFlannelCNI = Binary{Env: "FLANNEL_CNI", Relative: "bin/flannel"}
	BinaryCNITool    = Binary{Env: "CNITOOL", Relative: "bin/cnitool"}
	BinaryBridge     = Binary{Env: "CNI_BRIDGE", Relative: "bin/cni/bridge"}
)

// cniNetwork is the network name of the manifest's conflist.
const cniNetwork = "cbr0"

// Pod is a network namespace plugged into its node by CNI.
type Pod struct {
	Name    string
	Node    *Node
	Netns   string
	IP      netip.Addr // the pod's first address (IPv4 when it has one)
	Gateway netip.Addr // the cni0 address of IP's family
	// IPv6 and Gateway6 are the pod's IPv6 address and cni0's, when the
	// node's subnet.env has an IPv6 subnet (equal to IP and Gateway on an
	// IPv6-only node).
	IPv6, Gateway6 netip.Addr

	capArgs string // the CNI capabilities given at ADD, given again at DEL
}

// PortMapping is a CNI portMappings capability entry.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// AddPod waits for the node's subnet.env and creates a pod through CNI ADD.
func (l *Lab) AddPod(t testing.TB, n *Node, name string) *Pod {
	t.Helper()
	return l.AddPodWithPorts(t, n, name, nil)
}

// AddPodWithPorts is AddPod with port mappings for the portmap plugin.
func (l *Lab) AddPodWithPorts(t testing.TB, n *Node, name string, ports []PortMapping) *Pod {
	t.Helper()
	n.WaitSubnetEnv(t, 60*time.Second)
	p := &Pod{Name: name, Node: n, Netns: netnsName(l.runID, n.Name, name)}
	if err := createNetns(p.Netns); err != nil {
		t.Fatalf("creating pod %s on %s: %v", name, n.Name, err)
	}
	if len(ports) > 0 {
		b, _ := json.Marshal(map[string]any{"portMappings": ports})
		p.capArgs = string(b)
	}
	out, err := l.cni(t, n, "add", p)
	if err != nil {
		t.Fatalf("CNI ADD of pod %s on %s: %v\n%s", name, n.Name, err, out)
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
			Gateway string `json:"gateway"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("CNI ADD of pod %s on %s: unexpected result %q: %v", name, n.Name, out, err)
	}
	for i, ip := range res.IPs {
		addr, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			t.Fatalf("CNI result address %q: %v", ip.Address, err)
		}
		gw, _ := netip.ParseAddr(ip.Gateway)
		if i == 0 {
			p.IP, p.Gateway = addr.Addr(), gw
		}
		if addr.Addr().Is6() && !p.IPv6.IsValid() {
			p.IPv6, p.Gateway6 = addr.Addr(), gw
		}
	}
	return p
}

// DelPod runs CNI DEL for the pod (its namespace stays until cleanup).
func (l *Lab) DelPod(t testing.TB, p *Pod) {
	t.Helper()
	if out, err := l.cni(t, p.Node, "del", p); err != nil {
		t.Fatalf("CNI DEL of pod %s on %s: %v\n%s", p.Name, p.Node.Name, err, out)
	}
}

// CNIStateDir is where the flannel plugin of node n keeps its per-container
// delegate configurations, and IPAMDir where host-local keeps its leases.
func (n *Node) CNIStateDir() string { return filepath.Join(n.Dir, "cni", "flannel") }

// IPAMDir is where host-local keeps node n's address leases.
func (n *Node) IPAMDir() string { return filepath.Join(n.Dir, "cni", "ipam") }

// cniConfDir writes node n's conflist: the manifest's, with the flannel
// plugin pointed at the node's own subnet file and state directories (the
// lab's nodes share one file system).
func (l *Lab) cniConfDir(n *Node) (string, error) {
	dir := filepath.Join(n.Dir, "cni", "net.d")
	path := filepath.Join(dir, "10-flannel.conflist")
	if _, err := os.Stat(path); err == nil {
		return dir, nil
	}
	cm, err := ManifestConfigMap()
	if err != nil {
		return "", err
	}
	var conf map[string]any
	if err := json.Unmarshal([]byte(cm.Data["cni-conf.json"]), &conf); err != nil {
		return "", fmt.Errorf("cni-conf.json of the manifest: %w", err)
	}
	plugins, _ := conf["plugins"].([]any)
	for _, p := range plugins {
		if pm, ok := p.(map[string]any); ok && pm["type"] == "flannel" {
			pm["subnetFile"] = n.SubnetFile
			pm["dataDir"] = n.CNIStateDir()
			pm["ipam"] = map[string]any{"dataDir": n.IPAMDir()}
		}
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.WriteFile(path, data, 0o644)
}

// cni runs cnitool add/del for pod p inside node n, as a runtime would.
func (l *Lab) cni(t testing.TB, n *Node, cmd string, p *Pod) (string, error) {
	t.Helper()
	tool := RequireBinary(t, BinaryCNITool)
	flannel := RequireBinary(t, BinaryFlannelCNI)
	bridge := RequireBinary(t, BinaryBridge)
	confDir, err := l.cniConfDir(n)
	if err != nil {
		return "", err
	}
	env := []string{
		"NETCONFPATH=" + confDir,
		"CNI_PATH=" + filepath.Dir(bridge) + ":" + filepath.Dir(flannel),
		"CNI_CACHE_DIR=" + filepath.Join(n.Dir, "cni", "cache"),
		"PATH=" + os.Getenv("PATH"),
	}
	if p.capArgs != "" {
		env = append(env, "CAP_ARGS="+p.capArgs)
	}
	argv := []string{"netns", "exec", n.Netns, "env", "-i"}
	argv = append(argv, env...)
	argv = append(argv, tool, cmd, cniNetwork, "/run/netns/"+p.Netns)
	out, err := exec.Command("ip", argv...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Ping sends one echo request from the pod (2 s timeout), over IPv4 or
// IPv6 as the address is (iputils' ping takes both).
func Ping(from *Pod, to netip.Addr) error {
	_, err := Exec(from.Netns, "ping", "-c", "1", "-W", "2", to.String())
	return err
}

// WaitPing retries Ping until it succeeds or timeout passes.
func WaitPing(t testing.TB, from *Pod, to netip.Addr, timeout time.Duration) {
	t.Helper()
	WaitFor(t, fmt.Sprintf("ping %s/%s -> %s", from.Node.Name, from.Name, to), timeout, func() error {
		return Ping(from, to)
	})
}
