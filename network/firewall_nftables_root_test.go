//go:build linux

package network

import (
	"context"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-iptables/iptables"
	"sigs.k8s.io/knftables"

	"github.com/flanneld/flanneld/network/nstest"
)

// The tests in this file run the real nft (and iptables) binaries inside a
// throwaway network namespace (fwNewNS): calls that touch the kernel run
// in it through fwIn (nstest's Do), commands through `ip netns exec`. They
// need root and skip without it.

// nftCountingRuns wraps an NFTables and counts its transactions.
type nftCountingRuns struct {
	NFTables
	runs int
}

func (c *nftCountingRuns) Run(ctx context.Context, tx *knftables.Transaction) error {
	c.runs++
	return c.NFTables.Run(ctx, tx)
}

// nftListTable is `nft list table FAMILY NAME` in netns name; "" when the
// table does not exist.
func nftListTable(t *testing.T, name string, family knftables.Family, table string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", name, "nft", "list", "table", string(family), table).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file or directory") {
			return ""
		}
		t.Fatalf("nft list table %s %s: %v: %s", family, table, err, out)
	}
	return string(out)
}

// nftHandleOf returns the handle of the first rule of chain whose text
// contains match, from `nft -a list chain`.
func nftHandleOf(t *testing.T, name, chain, match string) string {
	t.Helper()
	out := fwRun(t, "ip", "netns", "exec", name, "nft", "-a", "list", "chain", "ip", NFTTableIPv4, chain)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, match) {
			if m := regexp.MustCompile(`# handle (\d+)$`).FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				return m[1]
			}
		}
	}
	t.Fatalf("no rule matching %q in chain %s:\n%s", match, chain, out)
	return ""
}

// nftAssertListings checks that the kernel lists both tables exactly as
// generated (testdata/nftables_ipv{4,6}.list.golden).
func nftAssertListings(t *testing.T, name string) {
	t.Helper()
	fwDiffLines(t, nftListTable(t, name, knftables.IPv4Family, NFTTableIPv4), fwReadGolden(t, "nftables_ipv4.list.golden"))
	fwDiffLines(t, nftListTable(t, name, knftables.IPv6Family, NFTTableIPv6), fwReadGolden(t, "nftables_ipv6.list.golden"))
}

// nftAssertQuietReal checks that Ensure, on fw and on a new NFTFirewall for
// the same tables, repairs nothing and runs no transaction.
func nftAssertQuietReal(t *testing.T, ns *nstest.NS, nft NFTables, fw *NFTFirewall) {
	t.Helper()
	for _, fw := range []*NFTFirewall{fw, NewNFTFirewall(nft, fw.Tables())} {
		counting := &nftCountingRuns{NFTables: nft}
		fw.nft = counting
		repairs, err := fwIn(t, ns, fw.Ensure)
		fw.nft = nft
		if err != nil {
			t.Fatalf("Ensure: %v", err)
		}
		if len(repairs) != 0 || counting.runs != 0 {
			t.Errorf("Ensure on correct tables repaired %q with %d transactions", repairs, counting.runs)
		}
	}
}

// nftRootDamage is a change to flanneld's tables, made by a command run in the
// namespace, and the problems Check (and the repairs Ensure) report for it.
type nftRootDamage struct {
	name    string
	command func() []string
	want    []string
}

// nftRootDamages returns TestNFTRootRules' damages; name is the namespace
// nftHandleOf looks rule handles up in.
func nftRootDamages(t *testing.T, name string) []nftRootDamage {
	return []nftRootDamage{
		{"delete rule", func() []string {
			return []string{"nft", "delete", "rule", "ip", NFTTableIPv4, NFTMasqChain, "handle", nftHandleOf(t, name, NFTMasqChain, "masquerade")}
		}, []string{"ip flannel-ipv4/postrtg: 1 rule missing"}},
		{"flush chain", func() []string {
			return []string{"nft", "flush", "chain", "ip", NFTTableIPv4, NFTForwardChain}
		}, []string{"ip flannel-ipv4/forward: 2 rules missing"}},
		{"delete chain", func() []string {
			return []string{"nft", "delete", "chain", "ip", NFTTableIPv4, NFTForwardChain}
		}, []string{"ip flannel-ipv4/forward: chain missing"}},
		{"delete table", func() []string {
			return []string{"nft", "delete", "table", "ip6", NFTTableIPv6}
		}, []string{"ip6 flannel-ipv6: table missing"}},
		{"foreign rule", func() []string {
			return []string{"nft", "insert", "rule", "ip", NFTTableIPv4, NFTForwardChain, "ip", "saddr", "192.0.2.0/24", "drop"}
		}, []string{"ip flannel-ipv4/forward: 1 unexpected rule"}},
		{"changed rule", func() []string {
			return []string{"nft", "replace", "rule", "ip", NFTTableIPv4, NFTMasqChain, "handle", nftHandleOf(t, name, NFTMasqChain, "224.0.0.0/4"),
				"ip", "saddr", "10.244.0.0/16", "ip", "daddr", "!=", "224.0.0.0/4", "masquerade", "comment", `"flanneld masq"`}
		}, []string{"ip flannel-ipv4/postrtg: 1 rule missing, 1 unexpected rule"}},
		{"foreign chain", func() []string {
			return []string{"nft", "add", "chain", "ip", NFTTableIPv4, "extra"}
		}, []string{"ip flannel-ipv4: unexpected chain extra"}},
		{"chain replaced by another type", func() []string {
			return []string{"sh", "-c", "nft delete chain ip flannel-ipv4 forward && nft 'add chain ip flannel-ipv4 forward { type filter hook forward priority 10; }'"}
		}, []string{`ip flannel-ipv4/forward: chain is "type filter hook forward priority filter + 10; policy accept;", want "type filter hook forward priority filter; policy accept;"`}},
		{"chain policy changed", func() []string {
			return []string{"nft", "add chain ip flannel-ipv4 forward { type filter hook forward priority filter; policy drop; }"}
		}, []string{`ip flannel-ipv4/forward: chain is "type filter hook forward priority filter; policy drop;", want "type filter hook forward priority filter; policy accept;"`}},
		{"chain hook changed", func() []string {
			return []string{"sh", "-c", "nft delete chain ip flannel-ipv4 postrtg && nft 'add chain ip flannel-ipv4 postrtg { type nat hook output priority 100; }'"}
		}, []string{`ip flannel-ipv4/postrtg: chain is "type nat hook output priority 100; policy accept;", want "type nat hook postrouting priority srcnat; policy accept;"`}},
		{"set added", func() []string {
			return []string{"nft", "add set ip flannel-ipv4 blocked { type ipv4_addr; flags interval; }"}
		}, []string{"ip flannel-ipv4: unexpected set blocked"}},
		{"table dormant", func() []string {
			return []string{"nft", "add table ip flannel-ipv4 { flags dormant; }"}
		}, []string{"ip flannel-ipv4: unexpected flags dormant"}},
	}
}

func TestNFTRootRules(t *testing.T) {
	ns := fwNewNS(t, "nft")
	name := ns.Name
	nft, err := fwIn(t, ns, NewNFTables)
	if err != nil {
		t.Fatal(err)
	}
	fw := NewNFTFirewall(nft, []NFTTable{nftSet(fwReferenceConfig).NFTTable(), nftSet(fwReferenceIPv6Config).NFTTable()})
	repairs, err := fwIn(t, ns, fw.Ensure)
	if err != nil {
		t.Fatalf("first Ensure: %v", err)
	}
	if want := []string{"ip flannel-ipv4: table missing", "ip6 flannel-ipv6: table missing"}; !slices.Equal(repairs, want) {
		t.Errorf("repairs = %q, want %q", repairs, want)
	}
	nftAssertListings(t, name)
	if len(fw.printed) != 0 {
		t.Errorf("nft lists the rules in another form than generated: %+v", fw.printed)
	}
	t.Logf("nft list table ip %s:\n%s", NFTTableIPv4, nftListTable(t, name, knftables.IPv4Family, NFTTableIPv4))
	nftAssertQuietReal(t, ns, nft, fw)
	if st, err := fwIn(t, ns, fw.Status); err != nil || len(st) != 16 || slices.ContainsFunc(st, func(s RuleStatus) bool { return !s.Present }) {
		t.Errorf("Status = %v, %v; want 16 rules present", st, err)
	}

	for _, c := range nftRootDamages(t, name) {
		fwRun(t, append([]string{"ip", "netns", "exec", name}, c.command()...)...)
		problems, err := fwIn(t, ns, fw.Check)
		if err != nil || !slices.Equal(problems, c.want) {
			t.Errorf("%s: Check = %q, %v; want %q", c.name, problems, err, c.want)
		}
		repairs, err := fwIn(t, ns, fw.Ensure)
		if err != nil {
			t.Fatalf("%s: Ensure: %v", c.name, err)
		}
		if !slices.Equal(repairs, c.want) {
			t.Errorf("%s: repairs = %q, want %q", c.name, repairs, c.want)
		}
		nftAssertListings(t, name)
		nftAssertQuietReal(t, ns, nft, fw)
	}
}

// nftModeRules runs f (FindOtherModeRules or RemoveOtherModeRules) for
// nftMode in ns.
func nftModeRules(t *testing.T, ns *nstest.NS, f func(nftMode bool) ([]string, error), nftMode bool) ([]string, error) {
	t.Helper()
	return fwIn(t, ns, func() ([]string, error) { return f(nftMode) })
}

// nftInstallIPTablesMode installs flanneld's iptables and ip6tables rules
// in ns, as in iptables mode, next to another agent's rules.
func nftInstallIPTablesMode(t *testing.T, ns *nstest.NS) {
	t.Helper()
	for _, c := range []struct {
		proto  iptables.Protocol
		config FirewallConfig
	}{{iptables.ProtocolIPv4, fwReferenceConfig}, {iptables.ProtocolIPv6, fwReferenceIPv6Config}} {
		ipt, err := fwIn(t, ns, func() (IPTables, error) { return NewIPTables(c.proto) })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fwIn(t, ns, NewFirewall(ipt, fwAllRules(c.config)).Ensure); err != nil {
			t.Fatal(err)
		}
	}
	fwRun(t, "ip", "netns", "exec", ns.Name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "MASQUERADE")
	fwRun(t, "ip", "netns", "exec", ns.Name, "ip6tables", "-A", "FORWARD", "-d", "2001:db8::/32", "-j", "ACCEPT")
}

// nftAssertSwitchToIPTables switches ns from nftables mode back to iptables
// mode and checks that flanneld's tables go and another agent's stays.
func nftAssertSwitchToIPTables(t *testing.T, ns *nstest.NS) {
	t.Helper()
	fwRun(t, "ip", "netns", "exec", ns.Name, "nft", "add", "table", "inet", "someone-else")
	removed, err := nftModeRules(t, ns, RemoveOtherModeRules, false)
	if want := []string{"nftables table ip flannel-ipv4", "nftables table ip6 flannel-ipv6"}; err != nil || !slices.Equal(removed, want) {
		t.Errorf("RemoveOtherModeRules(false) = %q, %v; want %q", removed, err, want)
	}
	for _, tbl := range nftOwnedTables {
		if out := nftListTable(t, ns.Name, tbl.Family, tbl.Name); out != "" {
			t.Errorf("table %s left after the switch to iptables:\n%s", tbl, out)
		}
	}
	if out := nftListTable(t, ns.Name, knftables.InetFamily, "someone-else"); out == "" {
		t.Error("another agent's table was removed")
	}
	if found, err := nftModeRules(t, ns, FindOtherModeRules, false); err != nil || len(found) != 0 {
		t.Errorf("after the switch FindOtherModeRules(false) = %q, %v", found, err)
	}
}

func TestNFTRootModeSwitch(t *testing.T) {
	ns := fwNewNS(t, "nft")
	name := ns.Name
	saved := func() string {
		return fwSavedRules(t, name, "iptables-save") + fwSavedRules(t, name, "ip6tables-save")
	}
	flannelIPTables := regexp.MustCompile(`(?m)^.*(FLANNEL|flanneld).*$`)

	// Nothing of either mode yet: nothing found, nothing to remove.
	for _, nftMode := range []bool{false, true} {
		if found, err := nftModeRules(t, ns, FindOtherModeRules, nftMode); err != nil || len(found) != 0 {
			t.Errorf("FindOtherModeRules(%v) on a clean namespace = %q, %v", nftMode, found, err)
		}
		if removed, err := nftModeRules(t, ns, RemoveOtherModeRules, nftMode); err != nil || len(removed) != 0 {
			t.Errorf("RemoveOtherModeRules(%v) on a clean namespace = %q, %v", nftMode, removed, err)
		}
	}

	// iptables mode, both families, next to another agent's rules.
	nftInstallIPTablesMode(t, ns)
	if got := flannelIPTables.FindAllString(saved(), -1); len(got) != 20 {
		t.Fatalf("iptables mode installed %d flannel rules, want 20:\n%s", len(got), strings.Join(got, "\n"))
	}

	// Switch to nftables mode: the iptables rules go, the others' stay.
	found, err := nftModeRules(t, ns, FindOtherModeRules, true)
	if err != nil || len(found) != 8 { // per family 2 jumps and 2 chains
		t.Errorf("FindOtherModeRules(true) = %q, %v; want 8 entries", found, err)
	}
	nft, err := fwIn(t, ns, NewNFTables)
	if err != nil {
		t.Fatal(err)
	}
	fw := NewNFTFirewall(nft, []NFTTable{nftSet(fwReferenceConfig).NFTTable(), nftSet(fwReferenceIPv6Config).NFTTable()})
	if _, err := fwIn(t, ns, fw.Ensure); err != nil {
		t.Fatal(err)
	}
	removed, err := nftModeRules(t, ns, RemoveOtherModeRules, true)
	if err != nil || !slices.Equal(removed, found) {
		t.Errorf("RemoveOtherModeRules(true) = %q, %v; want %q", removed, err, found)
	}
	after := saved()
	if left := flannelIPTables.FindAllString(after, -1); len(left) != 0 {
		t.Errorf("flannel iptables rules left after the switch to nftables:\n%s", strings.Join(left, "\n"))
	}
	for _, foreign := range []string{"-t nat -A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE", "-t filter -A FORWARD -d 2001:db8::/32 -j ACCEPT"} {
		if !strings.Contains(after, foreign) {
			t.Errorf("another agent's rule %q was removed:\n%s", foreign, after)
		}
	}
	nftAssertListings(t, name)
	if found, err := nftModeRules(t, ns, FindOtherModeRules, true); err != nil || len(found) != 0 {
		t.Errorf("after the switch FindOtherModeRules(true) = %q, %v", found, err)
	}

	// And back to iptables mode: the nftables tables go, the others' stay.
	nftAssertSwitchToIPTables(t, ns)
}
