// Package demo is `make demo`: a three-node flanneld cluster in network
// namespaces on this machine, shown the way a person would inspect it, then
// torn down. It runs only when FLANNELD_DEMO=1 (set by the Makefile). With
// KUBELET=1 the nodes are real: containerd and kubelets, flanneld installed
// by `kubectl apply` of its DaemonSet from the image `make image` builds.
package demo

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

func TestDemo(t *testing.T) {
	if os.Getenv("FLANNELD_DEMO") != "1" {
		t.Skip("the demo runs with `make demo`")
	}
	lab.RequireRoot(t)
	backend := os.Getenv("BACKEND")
	if backend == "" {
		backend = "vxlan"
	}
	// Ctrl-C ends the demo early. The handler stays until after the lab's
	// cleanup (cleanups run last-registered first), so teardown finishes.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)
	step := func(format string, a ...any) {
		if ctx.Err() != nil {
			fmt.Println("\ninterrupted: tearing down")
			t.SkipNow()
		}
		fmt.Printf("\n==> "+format+"\n", a...)
	}

	if os.Getenv("FLANNELD_DEMO_KUBELET") == "1" {
		demoKubelet(t, step, backend)
		return
	}

	step("starting etcd and kube-apiserver in a network namespace")
	l := lab.New(t)
	netconf := fmt.Sprintf(`{"Network": "10.244.0.0/16", "Backend": {"Type": %q}}`, backend)
	if err := l.WriteNetConf(netconf); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("net-conf.json: %s\n", netconf)

	step("creating 3 nodes on an underlay bridge, each running flanneld (backend %s)", backend)
	var nodes []*lab.Node
	for i := 1; i <= 3; i++ {
		n := l.AddNode(t, fmt.Sprintf("node%d", i), fmt.Sprintf("10.244.%d.0/24", i))
		if backend == "wireguard" {
			l.StartFlanneldWG(t, n) // a key and a UAPI socket directory per node
		} else {
			l.StartFlanneld(t, n)
		}
		nodes = append(nodes, n)
		fmt.Printf("  %s: eth0 %s, podCIDR %s\n", n.Name, n.IP, n.PodCIDR)
	}
	for _, n := range nodes {
		start := time.Now()
		if err := n.PollReady(60 * time.Second); err != nil {
			t.Fatalf("flanneld on %s did not become ready: %v", n.Name, err)
		}
		fmt.Printf("  %s: flanneld ready in %s\n", n.Name, time.Since(start).Round(time.Millisecond))
	}

	step("creating 2 pods per node through CNI (flannel -> bridge, host-local, portmap)")
	var pods []*lab.Pod
	for _, n := range nodes {
		for j := 1; j <= 2; j++ {
			p := l.AddPod(t, n, fmt.Sprintf("pod%d", j))
			pods = append(pods, p)
			fmt.Printf("  %s/%s: %s\n", n.Name, p.Name, p.IP)
		}
	}

	for _, n := range nodes {
		step("what %s looks like", n.Name)
		show(n.Netns, "cat", n.SubnetFile)
		show(n.Netns, "ip", "route", "show", "proto", "102")
		if backend == "wireguard" {
			out, err := n.WG("show", "flannel-wg")
			fmt.Println("$ wg show flannel-wg")
			if err != nil {
				fmt.Printf("  (%v)\n", err)
			}
			fmt.Print(indent(out))
		}
		if backend == "vxlan" {
			show(n.Netns, "ip", "-d", "link", "show", "flannel.1")
			show(n.Netns, "ip", "neigh", "show", "dev", "flannel.1")
			show(n.Netns, "bridge", "fdb", "show", "dev", "flannel.1")
		}
		out, _ := lab.Exec(n.Netns, "iptables-save")
		fmt.Println("$ iptables-save | grep -i flannel")
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(strings.ToLower(line), "flannel") {
				fmt.Println("  " + line)
			}
		}
	}

	step("pinging every pod from every pod")
	failed := 0
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			err := lab.Poll(10*time.Second, func() error { return lab.Ping(from, to.IP) })
			result := "ok"
			if err != nil {
				result, failed = "FAILED", failed+1
			}
			fmt.Printf("  %s/%s -> %s/%s (%s): %s\n", from.Node.Name, from.Name, to.Node.Name, to.Name, to.IP, result)
		}
	}
	if failed > 0 {
		t.Fatalf("%d pings failed", failed)
	}
	step("all %d pod pairs reach each other; tearing down", len(pods)*(len(pods)-1))
}

func show(ns string, argv ...string) {
	out, err := lab.Exec(ns, argv...)
	fmt.Printf("$ %s\n", strings.Join(argv, " "))
	if err != nil {
		fmt.Printf("  (%v)\n", err)
	}
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Println("  " + line)
	}
}
