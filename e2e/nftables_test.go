package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// nftables mode (issue 10): EnableNFTables in net-conf.json.

const nftNetConf = `{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}`

// expectedNFTTable is `nft list table ip flannel-ipv4` on the node owning
// subnet, with --ip-masq and the default --iptables-forward-rules: the
// rules of REFERENCE section 6 in nftables form.
func expectedNFTTable(subnet string) string {
	n := clusterNetwork
	masq := ` comment "flanneld masq"`
	fwd := ` comment "flanneld forward"`
	return strings.Join([]string{
		"table ip flannel-ipv4 {",
		"\tchain postrtg {",
		"\t\ttype nat hook postrouting priority srcnat; policy accept;",
		"\t\tmeta mark & 0x00004000 == 0x00004000 return" + masq,
		"\t\tip saddr " + subnet + " ip daddr " + n + " return" + masq,
		"\t\tip saddr " + n + " ip daddr " + subnet + " return" + masq,
		"\t\tip saddr != " + n + " ip daddr " + subnet + " return" + masq,
		"\t\tip saddr " + n + " ip daddr != 224.0.0.0/4 masquerade fully-random" + masq,
		"\t\tip saddr != " + n + " ip daddr " + n + " masquerade fully-random" + masq,
		"\t}",
		"",
		"\tchain forward {",
		"\t\ttype filter hook forward priority filter; policy accept;",
		"\t\tip saddr " + n + " accept" + fwd,
		"\t\tip daddr " + n + " accept" + fwd,
		"\t}",
		"}",
		"",
	}, "\n")
}

// checkNodeNFTRules checks that netns ns has exactly flanneld's nftables
// table for subnet, and no IPv6 table (the lab's cluster is IPv4 only).
func checkNodeNFTRules(ns, subnet string) error {
	out, err := lab.Exec(ns, "nft", "list", "table", "ip", "flannel-ipv4")
	if err != nil {
		return err
	}
	if want := expectedNFTTable(subnet); out != want {
		return fmt.Errorf("nft list table ip flannel-ipv4:\n%s\nwant:\n%s", out, want)
	}
	return checkNoNFTTable(ns, "ip6", "flannel-ipv6")
}

// checkNoNFTTable checks that ns has no nftables table family/name.
func checkNoNFTTable(ns, family, name string) error {
	out, err := lab.Exec(ns, "nft", "list", "tables", family)
	if err != nil {
		return err
	}
	if strings.Contains(out, "table "+family+" "+name+"\n") {
		return fmt.Errorf("table %s %s exists", family, name)
	}
	return nil
}

// flannelIPTablesLine matches what flanneld puts in iptables: its chains,
// the jumps into them, and its comments.
var flannelIPTablesLine = regexp.MustCompile(`(?m)^.*(FLANNEL-|flanneld ).*$`)

// checkNoFlannelIPTables checks that neither iptables-save nor
// ip6tables-save of ns shows a flannel chain, jump or comment.
func checkNoFlannelIPTables(ns string) error {
	var left []string
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out, err := lab.Exec(ns, save)
		if err != nil {
			return err
		}
		for _, l := range flannelIPTablesLine.FindAllString(out, -1) {
			left = append(left, save+": "+l)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("flannel iptables rules left:\n  %s", strings.Join(left, "\n  "))
	}
	return nil
}

// nftHandle returns the handle of the first rule of chain (in ip
// flannel-ipv4 of ns) whose text contains match.
func nftHandle(t testing.TB, ns, chain, match string) string {
	t.Helper()
	out := mustExec(t, ns, "nft", "-a", "list", "chain", "ip", "flannel-ipv4", chain)
	re := regexp.MustCompile(`# handle (\d+)$`)
	for _, line := range strings.Split(out, "\n") {
		if m := re.FindStringSubmatch(strings.TrimSpace(line)); m != nil && strings.Contains(line, match) {
			return m[1]
		}
	}
	t.Fatalf("no rule matching %q in chain %s:\n%s", match, chain, out)
	return ""
}

// TestNFTablesCluster runs two vxlan nodes in nftables mode with --ip-masq:
// each has exactly flanneld's table ip flannel-ipv4 and no flannel iptables
// rule, pods ping, and a rule deleted, a chain flushed or deleted, the table
// deleted or a foreign rule added is put back within --iptables-resync
// (METRIC lines), with pods still pinging.
func TestNFTablesCluster(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	lab.RequireTool(t, "nft", "nftables")
	l := lab.New(t)
	if err := l.WriteNetConf(nftNetConf); err != nil {
		t.Fatal(err)
	}
	nodes := []*lab.Node{l.AddNode(t, "n1", podCIDR(1)), l.AddNode(t, "n2", podCIDR(2))}
	startAll(t, l, nodes) // default --iptables-resync (5 s)
	for i, n := range nodes {
		if err := lab.Poll(convergeTimeout, func() error { return checkNodeNFTRules(n.Netns, podCIDR(i+1)) }); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
		if err := checkNoFlannelIPTables(n.Netns); err != nil {
			t.Errorf("%s in nftables mode: %v", n.Name, err)
		}
	}
	pods := []*lab.Pod{l.AddPod(t, nodes[0], "p1"), l.AddPod(t, nodes[1], "p1")}
	pingAll(t, pods)
	// The control plane has no route to the pod network: its replies
	// come back only to a masqueraded source.
	masqueraded := func() error { return lab.Ping(pods[0], lab.ControlPlaneIP) }
	if err := lab.Poll(pingTimeout, masqueraded); err != nil {
		t.Errorf("ping n1/p1 -> control plane %s (masqueraded): %v", lab.ControlPlaneIP, err)
	}
	if t.Failed() {
		t.FailNow()
	}
	n1 := nodes[0]
	ns := n1.Netns
	t.Logf("n1: nft list table ip flannel-ipv4:\n%s", mustExec(t, ns, "nft", "list", "table", "ip", "flannel-ipv4"))

	rulesOK := func() error { return checkNodeNFTRules(ns, podCIDR(1)) }
	for _, c := range []struct {
		name string
		argv func() []string
	}{
		{"delete_masquerade_rule", func() []string {
			return []string{"nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", nftHandle(t, ns, "postrtg", "masquerade")}
		}},
		{"delete_forward_rule", func() []string {
			return []string{"nft", "delete", "rule", "ip", "flannel-ipv4", "forward", "handle", nftHandle(t, ns, "forward", "daddr")}
		}},
		{"flush_postrtg_chain", func() []string { return []string{"nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg"} }},
		{"delete_forward_chain", func() []string { return []string{"nft", "delete", "chain", "ip", "flannel-ipv4", "forward"} }},
		{"delete_table", func() []string { return []string{"nft", "delete", "table", "ip", "flannel-ipv4"} }},
		{"foreign_rule", func() []string {
			return []string{"nft", "insert", "rule", "ip", "flannel-ipv4", "forward", "ip", "saddr", "192.0.2.0/24", "drop"}
		}},
	} {
		t.Run(strings.ReplaceAll(c.name, "_", " "), func(t *testing.T) {
			if err := lab.Poll(convergeTimeout, rulesOK); err != nil {
				t.Fatalf("rules before: %v", err)
			}
			mustExec(t, ns, c.argv()...)
			if rulesOK() == nil {
				t.Fatal("the table looks intact right after breaking it: the test is wrong")
			}
			d := measure(t, "the nftables rules to be restored", repairTimeout, rulesOK)
			metric(t, "nftables_"+c.name+"_repair_seconds", d)
			requireRunning(t, n1)
			if err := checkNoFlannelIPTables(ns); err != nil {
				t.Error(err)
			}
			if err := lab.Poll(pingTimeout, func() error { return lab.Ping(pods[0], pods[1].IP) }); err != nil {
				t.Errorf("ping n1/p1 -> n2/p1: %v", err)
			}
			if err := lab.Poll(pingTimeout, func() error { return lab.Ping(pods[1], pods[0].IP) }); err != nil {
				t.Errorf("ping n2/p1 -> n1/p1: %v", err)
			}
			if err := lab.Poll(pingTimeout, masqueraded); err != nil {
				t.Errorf("ping n1/p1 -> control plane (masqueraded): %v", err)
			}
		})
	}
	if lines := logLines(n1.Flanneld().Log(), "Restored firewall rules"); len(lines) == 0 {
		t.Errorf(`no "Restored firewall rules" log line`)
	} else {
		t.Logf("flanneld logged, e.g.: %s", lines[0])
	}
}

// TestNFTablesModeSwitch restarts a node of an iptables-mode cluster in
// nftables mode: afterwards iptables-save and ip6tables-save show no
// flannel chain, jump or comment (ip6tables rules of an earlier dual-stack
// run included), the nftables table is exact and pods ping. Restarted in
// iptables mode again, the node has its iptables rules back and no
// flannel nftables table.
func TestNFTablesModeSwitch(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	lab.RequireTool(t, "nft", "nftables")
	l := lab.New(t)
	useNFT := writeNetConfFile(t, l, "nftables", nftNetConf)
	useIPTables := writeNetConfFile(t, l, "iptables", vxlanNetConf)
	nodes := []*lab.Node{l.AddNode(t, "n1", podCIDR(1)), l.AddNode(t, "n2", podCIDR(2))}
	startAll(t, l, nodes, useIPTables)
	n1 := nodes[0]
	ns := n1.Netns
	lab.WaitFor(t, "n1's iptables rules", convergeTimeout, func() error { return checkNodeRules(ns, podCIDR(1)) })
	pods := []*lab.Pod{l.AddPod(t, nodes[0], "p1"), l.AddPod(t, nodes[1], "p1")}
	pingAll(t, pods)
	// What a dual-stack iptables-mode run leaves in ip6tables.
	for _, argv := range [][]string{
		{"ip6tables", "-t", "nat", "-N", "FLANNEL-POSTRTG"},
		{"ip6tables", "-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "fd00:10:244::/56", "!", "-d", "ff00::/8", "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE", "--random-fully"},
		{"ip6tables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"},
		{"ip6tables", "-N", "FLANNEL-FWD"},
		{"ip6tables", "-A", "FLANNEL-FWD", "-s", "fd00:10:244::/56", "-m", "comment", "--comment", "flanneld forward", "-j", "ACCEPT"},
		{"ip6tables", "-A", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"},
		// Other agents' rules, which must stay.
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "MASQUERADE"},
		{"ip6tables", "-A", "FORWARD", "-d", "2001:db8::/32", "-j", "ACCEPT"},
	} {
		mustExec(t, ns, argv...)
	}
	if checkNoFlannelIPTables(ns) == nil {
		t.Fatal("no flannel iptables rules before the switch: the test is wrong")
	}

	t.Run("iptables to nftables", func(t *testing.T) {
		n1.Flanneld().Stop()
		restarted := time.Now()
		l.StartFlanneld(t, n1, useNFT)
		n1.WaitReady(t, readyTimeout)
		metric(t, "nftables_mode_switch_ready_seconds", time.Since(restarted))
		if err := lab.Poll(convergeTimeout, func() error { return checkNodeNFTRules(ns, podCIDR(1)) }); err != nil {
			t.Error(err)
		}
		if err := checkNoFlannelIPTables(ns); err != nil {
			t.Errorf("after the switch to nftables mode: %v", err)
		}
		for _, foreign := range []struct{ save, rule string }{
			{"iptables-save", "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE"},
			{"ip6tables-save", "-A FORWARD -d 2001:db8::/32 -j ACCEPT"},
		} {
			if out := mustExec(t, ns, foreign.save); !strings.Contains(out, foreign.rule+"\n") {
				t.Errorf("another agent's rule %q is gone from %s:\n%s", foreign.rule, foreign.save, out)
			}
		}
		if lines := logLines(n1.Flanneld().Log(), "Removed firewall rule of the other mode"); len(lines) != 8 {
			t.Errorf("want 8 %q log lines (per family 2 jumps, 2 chains), got %d:\n%s",
				"Removed firewall rule of the other mode", len(lines), strings.Join(lines, "\n"))
		}
		pingAll(t, pods)
	})

	t.Run("nftables to iptables", func(t *testing.T) {
		n1.Flanneld().Stop()
		l.StartFlanneld(t, n1, useIPTables)
		n1.WaitReady(t, readyTimeout)
		if err := lab.Poll(convergeTimeout, func() error { return checkNodeRules(ns, podCIDR(1)) }); err != nil {
			t.Error(err)
		}
		for _, family := range []struct{ family, name string }{{"ip", "flannel-ipv4"}, {"ip6", "flannel-ipv6"}} {
			if err := checkNoNFTTable(ns, family.family, family.name); err != nil {
				t.Errorf("after the switch to iptables mode: %v", err)
			}
		}
		pingAll(t, pods)
	})
}
