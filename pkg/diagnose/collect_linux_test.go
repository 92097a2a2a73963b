package diagnose

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/network/nstest"
)

// TestReadPodBridge reads cni0's ports in a namespace: nothing without
// cni0; with it, exactly the links whose master it is (not another
// bridge's ports, not a veth's peer), with their MTUs.
func TestReadPodBridge(t *testing.T) {
	ns := nstest.New(t)
	h := ns.Handle(t)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}

	ip("link", "add", "veth0", "mtu", "1450", "type", "veth", "peer", "name", "pod0", "mtu", "1450")
	br, err := readPodBridge(h)
	if err != nil || br != nil {
		t.Fatalf("without cni0: %+v, %v; want nil, nil", br, err)
	}

	ip("link", "add", "cni0", "type", "bridge")
	if br, err = readPodBridge(h); err != nil || br == nil || br.Name != "cni0" || br.Ports == nil || len(br.Ports) != 0 {
		t.Fatalf("cni0 without ports: %+v, %v; want cni0 and no ports", br, err)
	}

	ip("link", "add", "veth1", "mtu", "1500", "type", "veth", "peer", "name", "pod1", "mtu", "1500")
	ip("link", "add", "other", "type", "bridge")
	ip("link", "add", "veth2", "mtu", "1400", "type", "veth", "peer", "name", "pod2", "mtu", "1400")
	ip("link", "set", "veth0", "master", "cni0")
	ip("link", "set", "veth1", "master", "cni0")
	ip("link", "set", "veth2", "master", "other")
	br, err = readPodBridge(h)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(br.Ports, func(a, b BridgePort) int { return strings.Compare(a.Name, b.Name) })
	want := []BridgePort{{Name: "veth0", MTU: 1450}, {Name: "veth1", MTU: 1500}}
	if br.Name != "cni0" || !slices.Equal(br.Ports, want) {
		t.Errorf("bridge %+v, want cni0 with ports %+v", br, want)
	}
}
