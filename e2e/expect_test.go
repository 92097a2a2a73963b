package e2e

import (
	"fmt"
	"strings"

	"github.com/flanneld/flanneld/e2e/lab"
)

// What REFERENCE.md says a node running flanneld must show, for the lab's
// cluster: Network 10.244.0.0/16, node i has 10.244.i.0/24 and eth0 at
// 192.168.100.(10+i).

const (
	clusterNetwork   = "10.244.0.0/16"
	annotationPrefix = "flannel.alpha.coreos.com/"
	vxlanDevice      = "flannel.1"
)

func podCIDR(i int) string    { return fmt.Sprintf("10.244.%d.0/24", i) }
func podNetAddr(i int) string { return fmt.Sprintf("10.244.%d.0", i) }
func underlayIP(i int) string { return fmt.Sprintf("192.168.100.%d", 10+i) }
func cniGateway(i int) string { return fmt.Sprintf("10.244.%d.1/24", i) }
func expectedSubnetEnv(i int) string {
	return fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", clusterNetwork, cniGateway(i))
}

// expectedRules is REFERENCE section 6 for the node owning subnet, as
// iptables-save prints it: table name -> rules in order.
func expectedRules(subnet string) map[string][]string {
	masq := `-m comment --comment "flanneld masq"`
	fwd := `-m comment --comment "flanneld forward"`
	n := clusterNetwork
	return map[string][]string{
		"nat": {
			"-A POSTROUTING " + masq + " -j FLANNEL-POSTRTG",
			"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 " + masq + " -j RETURN",
			"-A FLANNEL-POSTRTG -s " + subnet + " -d " + n + " " + masq + " -j RETURN",
			"-A FLANNEL-POSTRTG -s " + n + " -d " + subnet + " " + masq + " -j RETURN",
			"-A FLANNEL-POSTRTG ! -s " + n + " -d " + subnet + " " + masq + " -j RETURN",
			"-A FLANNEL-POSTRTG -s " + n + " ! -d 224.0.0.0/4 " + masq + " -j MASQUERADE --random-fully",
			"-A FLANNEL-POSTRTG ! -s " + n + " -d " + n + " " + masq + " -j MASQUERADE --random-fully",
		},
		"filter": {
			"-A FORWARD " + fwd + " -j FLANNEL-FWD",
			"-A FLANNEL-FWD -s " + n + " " + fwd + " -j ACCEPT",
			"-A FLANNEL-FWD -d " + n + " " + fwd + " -j ACCEPT",
		},
	}
}

// parseIPTablesSave returns the "-A ..." rules of each table, in order.
// checkNodeRules checks that the iptables rules in netns ns are those of
// REFERENCE section 6 for a node with the given subnet.
func checkNodeRules(ns, subnet string) error {
	out, err := lab.Exec(ns, "iptables-save")
	if err != nil {
		return err
	}
	return checkRules(parseIPTablesSave(out), expectedRules(subnet))
}

func parseIPTablesSave(out string) map[string][]string {
	tables := map[string][]string{}
	table := ""
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, "-A ") && table != "":
			tables[table] = append(tables[table], line)
		}
	}
	return tables
}

// checkRules compares the flanneld chains of one table exactly (flanneld
// owns them) and checks that the jumps into them exist.
func checkRules(got, want map[string][]string) error {
	var problems []string
	for table, rules := range want {
		for _, chain := range []string{"FLANNEL-POSTRTG", "FLANNEL-FWD"} {
			wantChain := rulesOfChain(rules, chain)
			if len(wantChain) == 0 {
				continue
			}
			gotChain := rulesOfChain(got[table], chain)
			if strings.Join(gotChain, "\n") != strings.Join(wantChain, "\n") {
				problems = append(problems, fmt.Sprintf("table %s chain %s:\n got:\n  %s\n want:\n  %s",
					table, chain, strings.Join(gotChain, "\n  "), strings.Join(wantChain, "\n  ")))
			}
		}
		for _, rule := range rules {
			if strings.HasPrefix(rule, "-A FLANNEL-") {
				continue
			}
			if !contains(got[table], rule) {
				problems = append(problems, fmt.Sprintf("table %s lacks %q", table, rule))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	return nil
}

func rulesOfChain(rules []string, chain string) []string {
	var out []string
	for _, r := range rules {
		if strings.HasPrefix(r, "-A "+chain+" ") {
			out = append(out, r)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
