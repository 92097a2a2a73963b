//go:build linux

package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// runInNetns marks the test process re-executed in a network namespace of
// its own, where Run may program the kernel.
const runInNetns = "FLANNELD_TEST_RUN_IN_NETNS"

// TestRunOwnsItsGoroutines runs the daemon in this process (etcd mode,
// vxlan, --ip-masq, health and metrics) and stops it while /metrics is
// being scraped: Run must return only once every goroutine it started
// (health server, firewall keeper, kernel watch, sync loop, ready
// reporter) has ended, since it closes the netlink handle they use. (On
// 4308a5a Run returned with them still running.) The whole test process
// runs in a network namespace of its own (`unshare --net`), so that every
// thread of Run touches only that namespace.
func TestRunOwnsItsGoroutines(t *testing.T) {
	if os.Getenv(runInNetns) == "" {
		if os.Geteuid() != 0 {
			t.Skip("skipping: needs root")
		}
		for _, bin := range []string{"unshare", "etcd", "iptables"} {
			if _, err := exec.LookPath(bin); err != nil {
				t.Skipf("skipping: %s not installed", bin)
			}
		}
		cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run=^TestRunOwnsItsGoroutines$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), runInNetns+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in a network namespace of its own: %v\n%s", err, out)
		}
		return
	}
	dir := t.TempDir()
	setUpNamespace(t)
	endpoint := startTestEtcd(t, dir)

	o := DefaultOptions()
	o.EtcdEndpoints = []string{endpoint}
	o.SubnetFile = filepath.Join(dir, "subnet.env")
	o.Iface = []string{"ext0"}
	o.IPMasq = true
	o.HealthzIP, o.HealthzPort = "127.0.0.1", 19481
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	base := fmt.Sprintf("http://127.0.0.1:%d", o.HealthzPort)
	waitReady(t, base+"/readyz", done)

	stopScraping := make(chan struct{})
	scraped := make(chan int, 1)
	go func() {
		n := 0
		client := &http.Client{Timeout: time.Second}
		for {
			select {
			case <-stopScraping:
				scraped <- n
				return
			default:
			}
			if resp, err := client.Get(base + "/metrics"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				n++
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after a clean stop: %v", err)
	}
	// Right after Run returned: none of its goroutines may be left.
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	close(stopScraping)
	t.Logf("%d scrapes of /metrics while stopping", <-scraped)
	for _, g := range strings.Split(stacks, "\n\n") {
		for _, pkg := range []string{"flanneld/pkg/health.", "flanneld/network.", "flanneld/pkg/daemon.(*syncLoop)", "flanneld/pkg/daemon.readyReporter", "flanneld/backend/"} {
			if strings.Contains(g, pkg) {
				t.Errorf("a goroutine of Run is still running after it returned:\n%s", g)
				break
			}
		}
	}
}

// setUpNamespace gives the (new, empty) network namespace a loopback and
// an external interface ext0 with a default route.
func setUpNamespace(t *testing.T) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ext0"}, PeerName: "ext0p"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ext0", "ext0p"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if name == "ext0" {
			addr, _ := netlink.ParseAddr("192.168.77.2/24")
			if err := netlink.AddrAdd(l, addr); err != nil {
				t.Fatal(err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	ext0, _ := netlink.LinkByName("ext0")
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: ext0.Attrs().Index, Gw: net.ParseIP("192.168.77.1")}); err != nil {
		t.Fatal(err)
	}
}

// startTestEtcd runs etcd on the namespace's loopback with the network
// configuration in place and returns its client URL.
func startTestEtcd(t *testing.T, dir string) string {
	t.Helper()
	const url = "http://127.0.0.1:23791"
	cmd := exec.Command("etcd", "--data-dir", filepath.Join(dir, "etcd"), "--listen-client-urls", url,
		"--advertise-client-urls", url, "--listen-peer-urls", "http://127.0.0.1:23801")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Put(ctx, "/coreos.com/network/config", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
		cancel()
		if err == nil {
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not start: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitReady polls url until it answers 200, failing if Run returns.
func waitReady(t *testing.T, url string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("Run returned before it was ready: %v", err)
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
