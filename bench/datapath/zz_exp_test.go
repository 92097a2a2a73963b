package datapath

import (
	"os"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

func TestZZExperiment(t *testing.T) {
	if os.Getenv("ZZ_EXP") != "1" {
		t.Skip()
	}
	l := lab.New(t)
	conf := l.Dir() + "/hg.json"
	os.WriteFile(conf, []byte(netConf("host-gw")), 0o644)
	a := l.AddNode(t, "a", "10.244.1.0/24")
	b := l.AddNode(t, "b", "10.244.2.0/24")
	for _, n := range []*lab.Node{a, b} {
		l.StartFlanneld(t, n, "--net-config-path="+conf)
	}
	a.WaitReady(t, time.Minute)
	b.WaitReady(t, time.Minute)
	pa, pb := l.AddPod(t, a, "p1"), l.AddPod(t, b, "p1")
	lab.WaitPing(t, pa, pb.IP, 30*time.Second)
	under := [2]endpoint{{a.Netns, a.IP.String()}, {b.Netns, b.IP.String()}}
	pods := [2]endpoint{{pa.Netns, pa.IP.String()}, {pb.Netns, pb.IP.String()}}
	// node a to pod b: bridge + routing only on b side
	nodeToPod := [2]endpoint{{a.Netns, a.IP.String()}, {pb.Netns, pb.IP.String()}}
	run := func(label string) {
		for i := 0; i < 3; i++ {
			u, _ := measureLatency(t, l, under[0], under[1], 3*time.Second)
			p, _ := measureLatency(t, l, pods[0], pods[1], 3*time.Second)
			np, _ := measureLatency(t, l, nodeToPod[0], nodeToPod[1], 3*time.Second)
			t.Logf("%s: underlay %.2f pod %.2f node->pod %.2f", label, u, p, np)
		}
	}
	run("with flanneld rules")
	out, _ := lab.Exec(a.Netns, "iptables-save")
	t.Logf("iptables a:\n%s", out)
	for _, n := range []*lab.Node{a, b} {
		n.Flanneld().Stop()
		for _, tb := range []string{"nat", "filter", "mangle", "raw"} {
			lab.Exec(n.Netns, "iptables", "-t", tb, "-F")
			lab.Exec(n.Netns, "iptables", "-t", tb, "-X")
		}
		lab.Exec(n.Netns, "nft", "flush", "ruleset")
	}
	run("no rules at all")
}
