package e2e

// Interoperation with upstream flannel's wireguard nodes: a node configured
// by hand exactly as upstream's flanneld configures it (a reference
// wireguard-go, wg(8), ip), reading our nodes' annotations and publishing
// its own in upstream's format (backend-data without a Port).

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flanneld/flanneld/e2e/lab"
)

// checkWGInterop adds node n4, configured as upstream's flanneld would
// configure it, and checks that pods on it and on our nodes talk both
// ways; then deletes it.
func checkWGInterop(t *testing.T, l *lab.Lab, nodes []*lab.Node, keys map[*lab.Node]string, ours *lab.Pod) {
	wgGo := lab.RequireBinary(t, lab.BinaryWireGuardGo)
	n4 := l.AddNode(t, "n4", podCIDR(4))
	l.Start(t, n4.Netns, "wireguard-go-n4", []string{"WG_PROCESS_FOREGROUND=1"}, n4.WithWGRunDir(wgGo, "-f", wgDevice)...)
	if err := lab.Poll(10*time.Second, func() error { _, err := n4.WG("show", wgDevice); return err }); err != nil {
		t.Fatalf("wireguard-go on n4: %v", err)
	}
	// Upstream: a private key of its own, the device's address, MTU, the
	// route for the Network, and a peer per node from its annotations.
	priv := strings.TrimSpace(mustExec(t, n4.Netns, "wg", "genkey"))
	keyFile := filepath.Join(n4.Dir, "wgkey")
	if err := os.WriteFile(keyFile, []byte(priv+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := lab.Exec(n4.Netns, "sh", "-c", "wg pubkey < "+keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pub := strings.TrimSpace(out)
	wg := func(args ...string) {
		t.Helper()
		if out, err := n4.WG(args...); err != nil {
			t.Fatalf("wg %v: %v %s", args, err, out)
		}
	}
	wg("set", wgDevice, "private-key", keyFile, "listen-port", fmt.Sprint(wgPort))
	mustExec(t, n4.Netns, "ip", "addr", "add", podNetAddr(4)+"/32", "dev", wgDevice)
	mustExec(t, n4.Netns, "ip", "link", "set", wgDevice, "mtu", fmt.Sprint(wgMTU), "up")
	mustExec(t, n4.Netns, "ip", "route", "add", clusterNetwork, "dev", wgDevice)
	for i, n := range nodes {
		var d struct{ PublicKey string }
		node := l.GetNode(t, n)
		if err := json.Unmarshal([]byte(node.Annotations[annotationPrefix+"backend-data"]), &d); err != nil {
			t.Fatal(err)
		}
		wg("set", wgDevice, "peer", d.PublicKey, "endpoint", fmt.Sprintf("%s:%d", node.Annotations[annotationPrefix+"public-ip"], wgPort),
			"allowed-ips", podCIDR(i+1))
	}
	publishUpstreamWGNode(t, l, n4, pub)
	env := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=true\n", clusterNetwork, cniGateway(4), wgMTU)
	if err := os.WriteFile(n4.SubnetFile, []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
	theirs := l.AddPod(t, n4, "p1")

	// Our nodes program it from its upstream-format annotations.
	for _, n := range nodes {
		err := lab.Poll(convergeTimeout, func() error {
			peers, err := wgPeers(n, wgDevice)
			if want := fmt.Sprintf("%s:%d %s 25", n4.IP, wgPort, podCIDR(4)); err == nil && peers[pub] != want {
				err = fmt.Errorf("peer %s: %q, want %q", pub, peers[pub], want)
			}
			return err
		})
		if err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}
	pingAll(t, []*lab.Pod{ours, theirs})
	if err := moveData(ours, theirs, 16<<20); err != nil {
		t.Errorf("ours -> upstream-style: %v", err)
	}
	if err := moveData(theirs, ours, 16<<20); err != nil {
		t.Errorf("upstream-style -> ours: %v", err)
	}

	// Its Node deleted, its peer goes from our nodes.
	l.DeleteNode(t, n4)
	for i, n := range nodes {
		if err := lab.Poll(convergeTimeout, func() error { return checkWGPeers(keys, nodes, i) }); err != nil {
			t.Errorf("%s after deleting n4: %v", n.Name, err)
		}
	}
}

// publishUpstreamWGNode gives n the annotations an upstream wireguard node
// publishes (backend-data with the public key only).
func publishUpstreamWGNode(t testing.TB, l *lab.Lab, n *lab.Node, pub string) {
	t.Helper()
	ann := backendAnnotations("wireguard", fmt.Sprintf(`{"PublicKey":%q}`, pub), n.IP.String())
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := l.Client().CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("annotating Node %s: %v", n.Name, err)
	}
}
