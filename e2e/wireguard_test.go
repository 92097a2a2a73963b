package e2e

// The wireguard backend (issue 18): devices flannel-wg and flannel-wg-v6,
// one route per Network, a WireGuard peer per node, nothing but WireGuard
// datagrams on the underlay. This kernel has no WireGuard, so flanneld
// runs the devices in userspace; the checks hold for both.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

const (
	wgNetConf = `{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,` +
		`"Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25}}`
	wgDevice   = "flannel-wg"
	wgDevice6  = "flannel-wg-v6"
	wgPort     = 51820
	wgPort6    = 51821
	wgMTU      = 1420 // 1500 - 80, as upstream
	wgMetricUS = `flanneld_backend_info{implementation="userspace",type="wireguard"} 1`
)

// wgKeyOf returns the public key node n advertises in backend-data.
func wgKeyOf(t testing.TB, l *lab.Lab, n *lab.Node) string {
	t.Helper()
	var d struct{ PublicKey string }
	raw := l.GetNode(t, n).Annotations[annotationPrefix+"backend-data"]
	if err := json.Unmarshal([]byte(raw), &d); err != nil || d.PublicKey == "" {
		t.Fatalf("backend-data of %s = %q: %v", n.Name, raw, err)
	}
	return d.PublicKey
}

// wgPeers returns `wg show <dev> dump`'s peers of node n: public key ->
// "endpoint allowed-ips keepalive".
func wgPeers(n *lab.Node, dev string) (map[string]string, error) {
	out, err := n.WG("show", dev, "dump")
	if err != nil {
		return nil, err
	}
	peers := map[string]string{}
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(line, "\t")
		if i == 0 || len(f) < 8 {
			continue // the device's own line
		}
		peers[f[0]] = strings.Join([]string{f[2], f[3], f[7]}, " ")
	}
	return peers, nil
}

// wantWGPeers is what node i's device of a family must hold: the other
// nodes, at their underlay address, with their subnet.
func wantWGPeers(keys map[*lab.Node]string, nodes []*lab.Node, i int, ipv6 bool) map[string]string {
	want := map[string]string{}
	for j, n := range nodes {
		if j == i {
			continue
		}
		if ipv6 {
			want[keys[n]] = fmt.Sprintf("[%s]:%d %s 25", n.IPv6, wgPort6, podCIDR6(j+1))
		} else {
			want[keys[n]] = fmt.Sprintf("%s:%d %s 25", n.IP, wgPort, podCIDR(j+1))
		}
	}
	return want
}

func checkWGPeers(keys map[*lab.Node]string, nodes []*lab.Node, i int) error {
	for _, fam := range []struct {
		dev  string
		ipv6 bool
	}{{wgDevice, false}, {wgDevice6, true}} {
		got, err := wgPeers(nodes[i], fam.dev)
		if err != nil {
			return err
		}
		if err := compareMaps(fam.dev+" peers", got, wantWGPeers(keys, nodes, i, fam.ipv6)); err != nil {
			return err
		}
	}
	return nil
}

func compareMaps(what string, got, want map[string]string) error {
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
	return nil
}

// checkWGDevices checks node i's devices: MTU, up, the subnet's first
// address, flanneld's one route per Network, the listen port.
func checkWGDevices(n *lab.Node, i int) error {
	for _, d := range []struct {
		dev, addr, route, port string
		ipv6                   bool
	}{
		{wgDevice, podNetAddr(i) + "/32", clusterNetwork, fmt.Sprint(wgPort), false},
		{wgDevice6, podNetAddr6(i) + "/128", clusterNetwork6, fmt.Sprint(wgPort6), true},
	} {
		link, err := lab.ShowLink(n.Netns, d.dev)
		if err != nil {
			return err
		}
		if link.MTU != wgMTU || !link.IsUp() {
			return fmt.Errorf("%s: mtu %d up %v, want %d and up", d.dev, link.MTU, link.IsUp(), wgMTU)
		}
		show := lab.ShowAddrs
		if d.ipv6 {
			show = lab.ShowAddrs6
		}
		addrs, err := show(n.Netns, d.dev)
		if err != nil {
			return err
		}
		found := false
		for _, a := range addrs {
			found = found || a.String() == d.addr
		}
		if !found {
			return fmt.Errorf("%s: addresses %v, want %s", d.dev, addrs, d.addr)
		}
		owned := ownedRoutesOn
		if d.ipv6 {
			owned = ownedRoutesOn6
		}
		routes, err := owned(n.Netns, d.dev)
		if err != nil {
			return err
		}
		if want := d.route + " dev " + d.dev + " proto " + ownedProto; len(routes) != 1 || !strings.HasPrefix(routes[0], want) {
			return fmt.Errorf("%s: flanneld's routes %v, want %q", d.dev, routes, want)
		}
		if port, err := n.WG("show", d.dev, "listen-port"); err != nil || strings.TrimSpace(port) != d.port {
			return fmt.Errorf("%s: listen port %q (%v), want %s", d.dev, port, err, d.port)
		}
	}
	return nil
}

// TestWireGuardCluster runs three dual-stack nodes on the wireguard
// backend (separate mode) in one cluster and checks, in order: the
// devices, annotations and peers; pods talking over both families; the
// underlay carrying nothing but WireGuard; the repair of a deleted route
// and peer; a restart keeping the key (and how long pods lose each
// other); a deleted Node's peer going. An upstream-style node configured
// by hand joins the same cluster (wireguard_interop_test.go).
func TestWireGuardCluster(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	lab.RequireTool(t, "wg", "wireguard-tools")
	l := lab.New(t, lab.WithIPv6())
	if err := l.WriteNetConf(wgNetConf); err != nil {
		t.Fatal(err)
	}
	nodes := make([]*lab.Node, 3)
	for i := range nodes {
		nodes[i] = l.AddNode(t, fmt.Sprintf("n%d", i+1), podCIDR(i+1), podCIDR6(i+1))
	}
	start := time.Now()
	for _, n := range nodes {
		l.StartFlanneldWG(t, n)
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}
	t.Logf("3 nodes ready after %v", time.Since(start).Round(10*time.Millisecond))
	keys := map[*lab.Node]string{}
	for _, n := range nodes {
		keys[n] = wgKeyOf(t, l, n)
	}

	t.Run("annotations, devices and peers", func(t *testing.T) {
		for i, n := range nodes {
			if out, err := n.WG("show", wgDevice, "public-key"); err != nil || strings.TrimSpace(out) != keys[n] {
				t.Errorf("%s: wg public key %q (%v), advertised %s", n.Name, out, err, keys[n])
			}
			want := map[string]string{
				"backend-type":    "wireguard",
				"backend-data":    fmt.Sprintf(`{"PublicKey":%q,"Port":%d}`, keys[n], wgPort),
				"backend-v6-data": fmt.Sprintf(`{"PublicKey":%q,"Port":%d}`, keys[n], wgPort6),
				"public-ip":       n.IP.String(),
				"public-ipv6":     n.IPv6.String(),
			}
			if err := checkFlannelNodeWith(l.GetNode(t, n), want); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if err := lab.Poll(convergeTimeout, func() error { return checkWGDevices(n, i+1) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if err := lab.Poll(convergeTimeout, func() error { return checkWGPeers(keys, nodes, i) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if got := n.WaitSubnetEnv(t, convergeTimeout); !strings.Contains(got, fmt.Sprintf("FLANNEL_MTU=%d\n", wgMTU)) {
				t.Errorf("%s: subnet.env %q, want FLANNEL_MTU=%d", n.Name, got, wgMTU)
			}
			if m := flanneldMetrics(t, n); !strings.Contains(m, wgMetricUS) {
				t.Errorf("%s: /metrics lacks %s", n.Name, wgMetricUS)
			}
		}
		if len(logLines(nodes[0].Flanneld().Log(), "Created WireGuard device", `implementation="userspace"`)) == 0 {
			t.Errorf("flanneld did not log that it runs the device in userspace")
		}
	})

	var pods []*lab.Pod
	t.Run("pods ping and move data", func(t *testing.T) {
		pods = addPods(t, l, nodes)
		checkPodMTU(t, pods, wgMTU)
		pingAll(t, pods)
		pingAll6(t, pods)
	})
	if len(pods) < 4 {
		t.Fatal("no pods; the remaining subtests need them")
	}
	n1p1, n2p1, n3p1 := pods[0], pods[2], pods[3]

	t.Run("only WireGuard on the underlay", func(t *testing.T) {
		checkWGUnderlay(t, l, nodes[0], n1p1, n2p1, n3p1)
	})

	t.Run("upstream-style node interoperates", func(t *testing.T) {
		checkWGInterop(t, l, nodes, keys, n1p1)
	})

	t.Run("deleted route, peer and device are repaired", func(t *testing.T) {
		n1 := nodes[0]
		mustExec(t, n1.Netns, "ip", "route", "del", clusterNetwork, "dev", wgDevice)
		if _, err := n1.WG("set", wgDevice, "peer", keys[nodes[1]], "remove"); err != nil {
			t.Fatal(err)
		}
		if err := lab.Poll(convergeTimeout, func() error { return checkWGDevices(n1, 1) }); err != nil {
			t.Errorf("route: %v", err)
		}
		// WireGuard has no change notifications, but flanneld serves the
		// userspace device's UAPI socket and sees wg's "set": the peer
		// comes back at once (a kernel device's at the next full pass):
		// well before the 30 s resync.
		if err := lab.Poll(10*time.Second, func() error { return checkWGPeers(keys, nodes, 0) }); err != nil {
			t.Errorf("peer: %v", err)
		}
		pingAll(t, []*lab.Pod{n1p1, n2p1})

		// The device itself: flanneld makes a new one (a new TUN and
		// userspace device here) with its address, route and peers.
		mustExec(t, n1.Netns, "ip", "link", "del", wgDevice)
		if err := lab.Poll(convergeTimeout, func() error {
			if err := checkWGDevices(n1, 1); err != nil {
				return err
			}
			return checkWGPeers(keys, nodes, 0)
		}); err != nil {
			t.Errorf("device: %v", err)
		}
		pingAll(t, []*lab.Pod{n1p1, n2p1})
	})

	t.Run("restart keeps the key", func(t *testing.T) {
		checkWGRestart(t, l, nodes[0], keys, n1p1, n2p1)
		if err := lab.Poll(convergeTimeout, func() error { return checkWGPeers(keys, nodes, 0) }); err != nil {
			t.Error(err)
		}
	})

	t.Run("deleted node's peer goes", func(t *testing.T) {
		gone := nodes[2]
		gone.Flanneld().Stop()
		l.DeleteNode(t, gone)
		for i, n := range nodes[:2] {
			if err := lab.Poll(convergeTimeout, func() error { return checkWGPeers(keys, nodes[:2], i) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		pingAll(t, []*lab.Pod{n1p1, n2p1})
	})
}

// flanneldMetrics reads flanneld's /metrics in node n.
func flanneldMetrics(t testing.TB, n *lab.Node) string {
	t.Helper()
	resp, err := lab.HTTPClientIn(n.Netns, 5*time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", lab.HealthzPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkWGUnderlay captures node n's eth0 while its pod from pings and
// sends data to pods on the other nodes over both families: the capture
// must hold WireGuard datagrams on the listen ports and not a single
// packet with a pod address.
func checkWGUnderlay(t *testing.T, l *lab.Lab, n *lab.Node, from *lab.Pod, to ...*lab.Pod) {
	path := filepath.Join(l.Dir(), "wg-underlay.pcap")
	capture := l.Start(t, n.Netns, "tcpdump-wg", nil, "tcpdump", "-i", "eth0", "-n", "-s", "128", "--immediate-mode", "-U", "-w", path)
	time.Sleep(time.Second) // tcpdump is listening
	for _, p := range to {
		if err := lab.Ping(from, p.IP); err != nil {
			t.Error(err)
		}
		if err := lab.Ping(from, p.IPv6); err != nil {
			t.Error(err)
		}
		if err := moveData(from, p, 8<<20); err != nil {
			t.Error(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	capture.Stop()
	out, err := lab.Exec(n.Netns, "tcpdump", "-r", path, "-n", "-nn")
	if err != nil {
		t.Fatal(err)
	}
	wg := regexp.MustCompile(fmt.Sprintf(`\.(%d|%d)[ :].*UDP`, wgPort, wgPort6))
	counts := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.Contains(line, "10.244.") || strings.Contains(line, "fd00:10:244:"):
			counts["pod address"]++
			if counts["pod address"] <= 3 {
				t.Errorf("a pod address on the underlay: %s", line)
			}
		case wg.MatchString(line):
			counts["wireguard"]++
		case line != "":
			counts["other"]++
		}
	}
	t.Logf("underlay packets captured on %s: %v", n.Name, counts)
	if counts["wireguard"] < 100 || counts["pod address"] > 0 {
		t.Errorf("want many WireGuard datagrams and no pod address: %v", counts)
	}
}

// checkWGRestart restarts flanneld on n while pod to (on another node)
// pings pod on (on n) every 20 ms, and checks the key stays and how long
// the pods lose each other (userspace: the device stops with flanneld).
func checkWGRestart(t *testing.T, l *lab.Lab, n *lab.Node, keys map[*lab.Node]string, on, to *lab.Pod) {
	keyBefore, err := os.ReadFile(n.WGKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	checkTUNRestart(t, l, n, wgDevice, "Running WireGuard device on the TUN the previous flanneld left", on, to,
		func() { l.StartFlanneldWG(t, n) })
	keyAfter, err := os.ReadFile(n.WGKeyFile())
	if err != nil || string(keyAfter) != string(keyBefore) {
		t.Errorf("the key file changed over the restart")
	}
	if k := wgKeyOf(t, l, n); k != keys[n] {
		t.Errorf("public key %s after the restart, was %s", k, keys[n])
	}
}
