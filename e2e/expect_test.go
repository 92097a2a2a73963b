package e2e

import (
	"fmt"
	"strings"

	"github.com/flanneld/flanneld/e2e/lab"
)

// What REFERENCE.md says a node running flanneld must show, for the lab's
// cluster: Network 10.244.0.0/16, node i has 10.244.i.0/24 and eth0 at
// 192.168.100.(10+i); with IPv6 (ipv6_test.go), IPv6Network
// fd00:10:244::/56, node i has fd00:10:244:i::/64 and eth0 at
// fd00:100::(10+i) too.

const (
	clusterNetwork   = "10.244.0.0/16"
	annotationPrefix = "flannel.alpha.coreos.com/"
	vxlanDevice      = "flannel.1"

	clusterNetwork6 = "fd00:10:244::/56"
	vxlanDevice6    = "flannel-v6.1"
)

func podCIDR(i int) string    { return fmt.Sprintf("10.244.%d.0/24", i) }
func podNetAddr(i int) string { return fmt.Sprintf("10.244.%d.0", i) }
func underlayIP(i int) string { return fmt.Sprintf("192.168.100.%d", 10+i) }
func cniGateway(i int) string { return fmt.Sprintf("10.244.%d.1/24", i) }
func expectedSubnetEnv(i int) string {
	return fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", clusterNetwork, cniGateway(i))
}

// The IPv6 counterparts (i < 10, so that the IPv6 texts read like the
// IPv4 ones). A node's IPv6 underlay address is its lab.Node.IPv6.
func podCIDR6(i int) string    { return fmt.Sprintf("fd00:10:244:%d::/64", i) }
func podNetAddr6(i int) string { return fmt.Sprintf("fd00:10:244:%d::", i) }
func cniGateway6(i int) string { return fmt.Sprintf("fd00:10:244:%d::1/64", i) }

// podFamily is one address family of the pod network, as the tests see a
// vxlan node of it: the device, its MTU on a 1500-byte eth0, and the
// subnet of node i.
type podFamily struct {
	name                string // "IPv4", "IPv6"
	ipv6                bool
	device              string
	mtu                 int
	podCIDR, podNetAddr func(i int) string
}

var (
	familyIPv4 = podFamily{name: "IPv4", device: vxlanDevice, mtu: 1450, podCIDR: podCIDR, podNetAddr: podNetAddr}
	familyIPv6 = podFamily{name: "IPv6", ipv6: true, device: vxlanDevice6, mtu: 1430, podCIDR: podCIDR6, podNetAddr: podNetAddr6}
)

// nodeIP is the underlay address of n in the family (its public IP).
func (f podFamily) nodeIP(n *lab.Node) string {
	if f.ipv6 {
		return n.IPv6.String()
	}
	return n.IP.String()
}

// hostBits is the length of a single-address prefix of the family (32, 128).
func (f podFamily) hostBits() int {
	if f.ipv6 {
		return 128
	}
	return 32
}

// expectedRules is REFERENCE section 6 for the node owning subnet, as
// iptables-save prints it: table name -> rules in order.
func expectedRules(subnet string) map[string][]string {
	return expectedRulesFor(clusterNetwork, subnet, "224.0.0.0/4")
}

// expectedRules6 is expectedRules for IPv6, as ip6tables-save prints it.
func expectedRules6(subnet string) map[string][]string {
	return expectedRulesFor(clusterNetwork6, subnet, "ff00::/8")
}

// expectedRulesFor is expectedRules for cluster network n, the node's
// subnet and the family's multicast range.
func expectedRulesFor(n, subnet, multicast string) map[string][]string {
	masq := `-m comment --comment "flanneld masq"`
	fwd := `-m comment --comment "flanneld forward"`
	return map[string][]string{
		"nat": {
			"-A POSTROUTING " + masq + " -j FLANNEL-POSTRTG",
			"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 " + masq + " -j RETURN",
			"-A FLANNEL-POSTRTG -s " + subnet + " -d " + n + " " + masq + " -j RETURN",
			"-A FLANNEL-POSTRTG -s " + n + " -d " + subnet + " " + masq + " -j RETURN",
			"-A FLANNEL-POSTRTG ! -s " + n + " -d " + subnet + " " + masq + " -j RETURN",
			"-A FLANNEL-POSTRTG -s " + n + " ! -d " + multicast + " " + masq + " -j MASQUERADE --random-fully",
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
	return checkSavedRules(ns, "iptables-save", expectedRules(subnet))
}

// checkNodeRules6 is checkNodeRules for the ip6tables rules of a node with
// the given IPv6 subnet.
func checkNodeRules6(ns, subnet string) error {
	return checkSavedRules(ns, "ip6tables-save", expectedRules6(subnet))
}

// checkSavedRules compares the output of save (iptables-save or
// ip6tables-save) in ns with want, as checkRules does.
func checkSavedRules(ns, save string, want map[string][]string) error {
	out, err := lab.Exec(ns, save)
	if err != nil {
		return err
	}
	return checkRules(parseIPTablesSave(out), want)
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
