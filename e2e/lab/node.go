package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// HealthzPort is where flanneld serves /healthz and /readyz inside its node.
const HealthzPort = 10256

// apiTimeout bounds one API call made by the lab.
const apiTimeout = 15 * time.Second

// Node is a lab machine: a namespace wired to the underlay, plus its Node
// object in the API.
type Node struct {
	Name       string
	Netns      string
	IP         netip.Addr // address of eth0, also the InternalIP
	IPv6       netip.Addr // IPv6 address of eth0 in an IPv6 lab (WithIPv6), also an InternalIP
	Segment    Segment    // the underlay segment eth0 is on
	PodCIDR    string     // the first podCIDR given to AddNode ("" for none): spec.podCIDR
	PodCIDRs   []string   // every podCIDR given to AddNode: spec.podCIDRs
	Dir        string     // per-node scratch directory
	SubnetFile string     // where flanneld writes subnet.env

	lab      *Lab
	flanneld *Process
	kube     *kubeletNode // a real node's containerd and kubelet (AddKubeletNode)
}

// AddNode creates a node namespace (eth0 at 192.168.100.11, .12, ... with a
// default route via UnderlayGateway, IPv4 forwarding on; in an IPv6 lab
// also fd00:100::11, ..., an IPv6 default route and IPv6 forwarding) and
// its Node object with spec.podCIDR and spec.podCIDRs (none when no
// podCIDR or only "" is given; a dual-stack node gets two, e.g.
// "10.244.1.0/24", "fd00:10:244:1::/64") and its InternalIP addresses.
func (l *Lab) AddNode(t testing.TB, name string, podCIDRs ...string) *Node {
	t.Helper()
	return l.AddNodeOn(t, Segment1, name, podCIDRs...)
}

// addNodeNamespace creates a node's namespace on segment seg: eth0 at the
// next host address, a default route via the segment's gateway, IPv4
// forwarding on (IPv6 too in an IPv6 lab), and its scratch directory.
func (l *Lab) addNodeNamespace(t testing.TB, seg Segment, name string) *Node {
	t.Helper()
	l.mu.Lock()
	index := len(l.nodes)
	n := &Node{
		Name:    name,
		Netns:   netnsName(l.runID, name),
		IP:      seg.Host(firstNodeHost + index),
		Segment: seg,
		Dir:     filepath.Join(l.dir, "nodes", name),
		lab:     l,
	}
	n.SubnetFile = filepath.Join(n.Dir, "subnet.env")
	if l.ipv6 {
		n.IPv6 = seg.Host6(firstNodeHost + index)
	}
	l.nodes = append(l.nodes, n)
	l.mu.Unlock()

	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.attachToSegment(n.Netns, ifName("v-"+name, fmt.Sprintf("v-node%d", index)), seg, n.IP); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	if _, err := runIP("-n", n.Netns, "route", "add", "default", "via", seg.Gateway().String(), "dev", "eth0"); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	if l.ipv6 {
		// Also what selects eth0 for an IPv6-only flanneld without --iface.
		if _, err := runIP("-n", n.Netns, "-6", "route", "add", "default", "via", seg.Gateway6().String(), "dev", "eth0"); err != nil {
			t.Fatalf("creating node %s: %v", name, err)
		}
		// eth0 keeps its IPv6 address when set down, as its IPv4 one, so a
		// test can flap it the same way in both families (by default the
		// kernel flushes it, and a node's network configuration puts it
		// back after the link is up).
		if _, err := Exec(n.Netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.keep_addr_on_down=1"); err != nil {
			t.Fatalf("creating node %s: %v", name, err)
		}
	}
	if err := l.enableForwarding(n.Netns); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	return n
}

// AddNodeOn is AddNode on the given underlay segment: the k-th node of the
// lab (counting every segment, from 0) gets host address 11+k on its
// segment and a default route via the segment's gateway (the router). A
// node on Segment2 creates the router first (AddRouter).
func (l *Lab) AddNodeOn(t testing.TB, seg Segment, name string, podCIDRs ...string) *Node {
	t.Helper()
	if !seg.valid() {
		t.Fatalf("creating node %s: unknown underlay segment %d", name, int(seg))
	}
	if seg != Segment1 {
		l.AddRouter(t)
	}
	n := l.addNodeNamespace(t, seg, name)
	n.setPodCIDRs(podCIDRs)
	if err := l.createNodeObject(n); err != nil {
		t.Fatalf("creating Node %s: %v", name, err)
	}
	return n
}

func (l *Lab) createNodeObject(n *Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
	obj.Spec.PodCIDR, obj.Spec.PodCIDRs = n.PodCIDR, n.PodCIDRs
	addresses := []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP.String()}}
	if n.IPv6.IsValid() {
		addresses = append(addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: n.IPv6.String()})
	}
	addresses = append(addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name})
	obj.Status.Addresses = addresses
	created, err := l.Client().CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	if len(created.Status.Addresses) == 0 {
		created.Status.Addresses = addresses
		_, err = l.Client().CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	}
	return err
}

// GetNode reads the Node object of n.
func (l *Lab) GetNode(t testing.TB, n *Node) *corev1.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	obj, err := l.Client().CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting Node %s: %v", n.Name, err)
	}
	return obj
}

// setPodCIDRs records the podCIDRs given to AddNode, without empty ones.
func (n *Node) setPodCIDRs(podCIDRs []string) {
	n.PodCIDR, n.PodCIDRs = "", nil
	for _, c := range podCIDRs {
		if c != "" {
			n.PodCIDRs = append(n.PodCIDRs, c)
		}
	}
	if len(n.PodCIDRs) > 0 {
		n.PodCIDR = n.PodCIDRs[0]
	}
}

// PodCIDR6 is the node's IPv6 podCIDR ("" if it has none).
func (n *Node) PodCIDR6() string {
	for _, c := range n.PodCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is6() {
			return c
		}
	}
	return ""
}

// SetPodCIDR sets spec.podCIDR and spec.podCIDRs of a Node that has none
// (two podCIDRs for a dual-stack node).
func (l *Lab) SetPodCIDR(t testing.TB, n *Node, podCIDRs ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if len(podCIDRs) == 0 {
		t.Fatalf("setting the podCIDR of Node %s: no podCIDR given", n.Name)
	}
	list, err := json.Marshal(podCIDRs)
	if err != nil {
		t.Fatal(err)
	}
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":%s}}`, podCIDRs[0], list)
	if _, err := l.Client().CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("setting the podCIDR of Node %s: %v", n.Name, err)
	}
	n.setPodCIDRs(podCIDRs)
}

// DeleteNode deletes the Node object of n (the namespace stays).
func (l *Lab) DeleteNode(t testing.TB, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if err := l.Client().CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting Node %s: %v", n.Name, err)
	}
}

// FlanneldArgs are the arguments StartFlanneld gives flanneld on node n.
func (l *Lab) FlanneldArgs(n *Node) []string {
	return []string{
		"--kube-subnet-mgr",
		"--kubeconfig-file=" + l.Kubeconfig(),
		"--iface=eth0",
		"--ip-masq",
		"--subnet-file=" + n.SubnetFile,
		"--net-config-path=" + l.NetConfPath(),
		"--healthz-ip=127.0.0.1",
		fmt.Sprintf("--healthz-port=%d", HealthzPort),
		"-v=2",
	}
}

// StartFlanneld runs flanneld in node n with NODE_NAME set and the default
// arguments (FlanneldArgs). An extra "--name=value" argument replaces the
// default of the same name; other extra arguments are appended.
func (l *Lab) StartFlanneld(t testing.TB, n *Node, extraArgs ...string) *Process {
	t.Helper()
	bin := RequireBinary(t, BinaryFlanneld)
	args := mergeArgs(l.FlanneldArgs(n), extraArgs)
	p := l.Start(t, n.Netns, "flanneld-"+n.Name, []string{"NODE_NAME=" + n.Name}, append([]string{bin}, args...)...)
	l.mu.Lock()
	n.flanneld = p
	l.mu.Unlock()
	return p
}

// mergeArgs overrides defaults with extras of the same flag name.
func mergeArgs(defaults, extras []string) []string {
	flagName := func(arg string) string {
		name, _, _ := strings.Cut(arg, "=")
		return name
	}
	overridden := map[string]bool{}
	for _, e := range extras {
		if strings.HasPrefix(e, "-") && strings.Contains(e, "=") {
			overridden[flagName(e)] = true
		}
	}
	var out []string
	for _, d := range defaults {
		if !overridden[flagName(d)] {
			out = append(out, d)
		}
	}
	return append(out, extras...)
}

// Flanneld is the last flanneld started on n (nil if none).
func (n *Node) Flanneld() *Process {
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	return n.flanneld
}

// WaitReady polls flanneld's /readyz inside the node until it answers 200.
func (n *Node) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	if err := n.PollReady(timeout); err != nil {
		t.Fatalf("flanneld on %s not ready: %v", n.Name, err)
	}
}

// PollReady is WaitReady returning the error instead of failing the test.
func (n *Node) PollReady(timeout time.Duration) error {
	client := HTTPClientIn(n.Netns, 2*time.Second)
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", HealthzPort)
	return Poll(timeout, func() error {
		if p := n.Flanneld(); p != nil && !p.Running() {
			return fmt.Errorf("flanneld %s; log tail:\n%s", p.describeExit(), tail(p.Log(), 30))
		}
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	})
}

// WaitSubnetEnv waits for the node's subnet.env and returns its content.
func (n *Node) WaitSubnetEnv(t testing.TB, timeout time.Duration) string {
	t.Helper()
	var content []byte
	WaitFor(t, "subnet.env of "+n.Name, timeout, func() error {
		var err error
		content, err = os.ReadFile(n.SubnetFile)
		if err != nil {
			if p := n.Flanneld(); p != nil && !p.Running() {
				return fmt.Errorf("%w; flanneld %s", err, p.describeExit())
			}
			return err
		}
		return nil
	})
	return string(content)
}

// ParseSubnetEnv parses KEY=VALUE lines.
func ParseSubnetEnv(content string) map[string]string {
	env := map[string]string{}
	s := bufio.NewScanner(strings.NewReader(content))
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}
