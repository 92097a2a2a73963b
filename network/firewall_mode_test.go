package network

import (
	"slices"
	"testing"

	"sigs.k8s.io/knftables"
)

func TestRemoveIPTablesRules(t *testing.T) {
	ipt, _, _ := fwInstalled(t)
	foreign := []string{"-s", "192.0.2.0/24", "-j", "MASQUERADE"}
	// Upstream flannel before v0.15 put its masquerade rules straight into
	// POSTROUTING, with the same comment.
	legacy := []string{"-s", "10.244.0.0/16", "-d", "10.244.0.0/16", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"}
	ipt.edit(func(ts map[string]*fakeTable) {
		nat := ts["nat"]
		nat.rules["POSTROUTING"] = append([][]string{foreign, legacy}, nat.rules["POSTROUTING"]...)
		ts["filter"].rules["FORWARD"] = append(ts["filter"].rules["FORWARD"], foreign)
	})
	before := ipt.dump()

	found, err := iptablesRules(ipt, "iptables", true)
	if err != nil {
		t.Fatal(err)
	}
	if m := ipt.takeMutations(); len(m) != 0 || ipt.dump() != before {
		t.Fatalf("the dry run changed the tables: %q", m)
	}
	want := []string{
		`iptables nat/POSTROUTING: -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN`,
		`iptables nat/POSTROUTING: -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`,
		`iptables filter/FORWARD: -m comment --comment "flanneld forward" -j FLANNEL-FWD`,
		"iptables chain nat/FLANNEL-POSTRTG",
		"iptables chain filter/FLANNEL-FWD",
	}
	if !slices.Equal(found, want) {
		t.Errorf("dry run found %q, want %q", found, want)
	}

	removed, err := RemoveIPTablesRules(ipt, "iptables")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	wantLeft := "-t nat -A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE\n-t filter -A FORWARD -s 192.0.2.0/24 -j MASQUERADE\n"
	fwDiffLines(t, ipt.dump(), wantLeft)
	for _, c := range iptablesOwnedChains {
		if ok, _ := ipt.ChainExists(c.table, c.chain); ok {
			t.Errorf("chain %s/%s still exists", c.table, c.chain)
		}
	}

	// Nothing left: nothing to do, and no error for the missing chains.
	ipt.takeMutations()
	if removed, err := RemoveIPTablesRules(ipt, "iptables"); err != nil || len(removed) != 0 {
		t.Errorf("second removal: %q, %v", removed, err)
	}
	if m := ipt.takeMutations(); len(m) != 0 {
		t.Errorf("second removal changed the tables: %q", m)
	}
}

func TestRemoveNFTTables(t *testing.T) {
	nft := NewFakeNFTables()
	fw := NewNFTFirewall(nft, []NFTTable{nftSet(fwReferenceConfig).NFTTable(), nftSet(fwReferenceIPv6Config).NFTTable()})
	nftEnsure(t, fw)
	nftRun(t, nft, func(tx *knftables.Transaction) {
		tx.Add(&knftables.Table{Family: knftables.InetFamily, Name: "someone-else"})
		tx.Add(&knftables.Table{Family: knftables.IPv4Family, Name: "flannel-other"})
	})
	before := nft.Dump()

	nft.LastTransaction = nil
	found, err := nftTables(nft, true)
	want := []string{"nftables table ip flannel-ipv4", "nftables table ip6 flannel-ipv6"}
	if err != nil || !slices.Equal(found, want) {
		t.Errorf("dry run = %q, %v; want %q", found, err, want)
	}
	if nft.LastTransaction != nil || nft.Dump() != before {
		t.Fatal("the dry run changed the tables")
	}

	removed, err := RemoveNFTTables(nft)
	if err != nil || !slices.Equal(removed, want) {
		t.Errorf("RemoveNFTTables = %q, %v; want %q", removed, err, want)
	}
	wantLeft := "add table inet someone-else\nadd table ip flannel-other\n"
	fwDiffLines(t, nft.Dump(), wantLeft)

	nft.LastTransaction = nil
	if removed, err := RemoveNFTTables(nft); err != nil || len(removed) != 0 || nft.LastTransaction != nil {
		t.Errorf("second removal: %q, %v, transaction %v", removed, err, nft.LastTransaction)
	}
}

func TestRuleSet(t *testing.T) {
	v4 := RuleSet{FirewallConfig: fwReferenceConfig, Masq: true, Forward: true}
	v6 := RuleSet{FirewallConfig: fwReferenceIPv6Config, Forward: true}
	if v4.IPv6() || !v6.IPv6() {
		t.Errorf("IPv6() = %v, %v", v4.IPv6(), v6.IPv6())
	}
	fwDiffLines(t, Render(v4.IPTablesRules()), fwReadGolden(t, "firewall_ipv4.golden"))
	if got := Render(v6.IPTablesRules()); got != Render(ForwardRules(fwReferenceIPv6Config.Network)) {
		t.Errorf("forward-only IPv6 rules:\n%s", got)
	}
	if tbl := v6.NFTTable(); tbl.String() != "ip6 flannel-ipv6" || len(tbl.Chains) != 1 || tbl.Chains[0].Name != NFTForwardChain {
		t.Errorf("forward-only IPv6 table: %+v", tbl)
	}
}

func TestRuleKeepers(t *testing.T) {
	ipt4, ipt6 := newFakeIPTables(), newFakeIPTables()
	ks := RuleKeepers{
		NewFirewall(ipt4, fwAllRules(fwReferenceConfig)),
		NewFirewall(ipt6, fwAllRules(fwReferenceIPv6Config)),
	}
	problems, err := ks.Check()
	if err != nil || len(problems) != 8 {
		t.Fatalf("Check on empty tables = %q, %v; want 4 problems per family", problems, err)
	}
	repairs, err := ks.Ensure()
	if err != nil || len(repairs) != 8 {
		t.Fatalf("Ensure = %q, %v", repairs, err)
	}
	fwDiffLines(t, ipt4.dump(), fwReadGolden(t, "firewall_ipv4.golden"))
	fwDiffLines(t, ipt6.dump(), fwReadGolden(t, "firewall_ipv6.golden"))
	st, err := ks.Status()
	if err != nil || len(st) != 20 || slices.ContainsFunc(st, func(s RuleStatus) bool { return !s.Present }) {
		t.Errorf("Status = %v, %v; want 20 rules present", st, err)
	}
	if st[10].Rule != MasqRules(fwReferenceIPv6Config)[0].String() {
		t.Errorf("Status keeps the keepers' order: rule 11 is %q", st[10].Rule)
	}
}
