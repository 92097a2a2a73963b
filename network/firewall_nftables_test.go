package network

import (
	"context"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"
)

var nftUpdate = flag.Bool("update", false, "rewrite the nftables golden files in testdata")

// nftSet is the reference IPv4 rule set with both kinds of rules.
func nftSet(c FirewallConfig) RuleSet { return RuleSet{FirewallConfig: c, Masq: true, Forward: true} }

// nftCheckGolden compares got with testdata/name, or rewrites it with -update.
func nftCheckGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *nftUpdate {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	fwDiffLines(t, got, fwReadGolden(t, name))
}

// nftEnsure runs Ensure and fails the test on an error.
func nftEnsure(t *testing.T, fw *NFTFirewall) []string {
	t.Helper()
	repairs, err := fw.Ensure()
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return repairs
}

// nftAssertQuiet checks that Ensure, on fw and on a new NFTFirewall for the
// same tables (a restarted daemon), repairs nothing and runs no transaction.
func nftAssertQuiet(t *testing.T, nft *FakeNFTables, fw *NFTFirewall) {
	t.Helper()
	for _, fw := range []*NFTFirewall{fw, NewNFTFirewall(nft, fw.Tables())} {
		nft.LastTransaction = nil
		if repairs := nftEnsure(t, fw); len(repairs) != 0 {
			t.Errorf("Ensure on correct tables repaired %q", repairs)
		}
		if nft.LastTransaction != nil {
			t.Errorf("Ensure on correct tables ran a transaction:\n%s", nft.LastTransaction)
		}
		if problems, err := fw.Check(); err != nil || len(problems) != 0 {
			t.Errorf("Check on correct tables: %q, %v", problems, err)
		}
	}
}

// nftRun runs a transaction on the fake as another agent would.
func nftRun(t *testing.T, nft *FakeNFTables, build func(tx *knftables.Transaction)) {
	t.Helper()
	tx := nft.NewTransaction()
	build(tx)
	if err := nft.Run(context.Background(), tx); err != nil {
		t.Fatalf("damaging the fake: %v", err)
	}
}

// nftRuleHandle returns the handle of rule i of chain in the IPv4 table.
func nftRuleHandle(t *testing.T, nft *FakeNFTables, chain string, i int) *int {
	t.Helper()
	c := nft.Tables[knftables.IPv4Family][NFTTableIPv4].Chains[chain]
	if c == nil || i >= len(c.Rules) {
		t.Fatalf("no rule %d in chain %s", i, chain)
	}
	return c.Rules[i].Handle
}

func TestNFTRulesGolden(t *testing.T) {
	noRandom := fwReferenceConfig
	noRandom.MasqFullyRandom = false
	unmasked := fwReferenceConfig
	unmasked.Network = netip.MustParsePrefix("10.244.3.7/16")
	unmasked.Lease = netip.MustParsePrefix("10.244.1.1/24")
	tests := []struct {
		name   string
		set    RuleSet
		golden string
	}{
		{"ipv4", nftSet(fwReferenceConfig), "nftables_ipv4.golden"},
		{"unmasked prefixes", nftSet(unmasked), "nftables_ipv4.golden"},
		{"fully random disabled", nftSet(noRandom), "nftables_ipv4_no_random_fully.golden"},
		{"ipv6", nftSet(fwReferenceIPv6Config), "nftables_ipv6.golden"},
		{"ipv6 fully random disabled", RuleSet{FirewallConfig: FirewallConfig{
			Network: fwReferenceIPv6Config.Network, Lease: fwReferenceIPv6Config.Lease}, Masq: true, Forward: true},
			"nftables_ipv6_no_random_fully.golden"},
		{"masquerade only", RuleSet{FirewallConfig: fwReferenceConfig, Masq: true}, "nftables_masq_only.golden"},
		{"forward only", RuleSet{FirewallConfig: fwReferenceConfig, Forward: true}, "nftables_forward_only.golden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nft := NewFakeNFTables()
			fw := NewNFTFirewall(nft, []NFTTable{tt.set.NFTTable()})
			repairs := nftEnsure(t, fw)
			if want := []string{tt.set.NFTTable().String() + ": table missing"}; !slices.Equal(repairs, want) {
				t.Errorf("repairs = %q, want %q", repairs, want)
			}
			nftCheckGolden(t, tt.golden, nft.Dump())
			nftAssertQuiet(t, nft, fw)
		})
	}
}

// TestNFTListingGolden checks the listing flanneld expects nft to print
// (the root test compares it with the real nft).
func TestNFTListingGolden(t *testing.T) {
	nftCheckGolden(t, "nftables_ipv4.list.golden", RenderNFT(nftSet(fwReferenceConfig).NFTTable()))
	nftCheckGolden(t, "nftables_ipv6.list.golden", RenderNFT(nftSet(fwReferenceIPv6Config).NFTTable()))
}

func TestNFTTransactionGolden(t *testing.T) {
	tables := []NFTTable{nftSet(fwReferenceConfig).NFTTable(), nftSet(fwReferenceIPv6Config).NFTTable()}

	// Both families are installed in one transaction.
	nft := NewFakeNFTables()
	fw := NewNFTFirewall(nft, tables)
	repairs := nftEnsure(t, fw)
	if want := []string{"ip flannel-ipv4: table missing", "ip6 flannel-ipv6: table missing"}; !slices.Equal(repairs, want) {
		t.Errorf("repairs = %q, want %q", repairs, want)
	}
	nftCheckGolden(t, "nftables_dualstack_install.tx.golden", nft.LastTransaction.String())

	// Only the damaged table is rewritten: flushed and refilled.
	nftRun(t, nft, func(tx *knftables.Transaction) {
		tx.Delete(&knftables.Rule{Family: knftables.IPv4Family, Table: NFTTableIPv4, Chain: NFTForwardChain,
			Handle: nftRuleHandle(t, nft, NFTForwardChain, 1)})
	})
	repairs = nftEnsure(t, fw)
	if want := []string{"ip flannel-ipv4/forward: 1 rule missing"}; !slices.Equal(repairs, want) {
		t.Errorf("repairs = %q, want %q", repairs, want)
	}
	nftCheckGolden(t, "nftables_repair.tx.golden", nft.LastTransaction.String())

	// A table holding a foreign chain is re-created.
	nftRun(t, nft, func(tx *knftables.Transaction) {
		tx.Add(&knftables.Chain{Family: knftables.IPv4Family, Table: NFTTableIPv4, Name: "foreign"})
	})
	repairs = nftEnsure(t, fw)
	if want := []string{"ip flannel-ipv4: unexpected chain foreign"}; !slices.Equal(repairs, want) {
		t.Errorf("repairs = %q, want %q", repairs, want)
	}
	nftCheckGolden(t, "nftables_recreate.tx.golden", nft.LastTransaction.String())
	nftAssertQuiet(t, nft, fw)
}

// nftDamage is damage another agent does to the IPv4 table, and the repairs
// it takes.
type nftDamage struct {
	name        string
	damage      func(t *testing.T, nft *FakeNFTables, tx *knftables.Transaction)
	wantRepairs []string
}

// nftDamages are the cases of TestNFTEnsureRepairs.
func nftDamages() []nftDamage {
	v4 := knftables.IPv4Family
	rule := func(chain, text string) *knftables.Rule {
		return &knftables.Rule{Family: v4, Table: NFTTableIPv4, Chain: chain, Rule: text}
	}
	return []nftDamage{{
		name: "rule deleted",
		damage: func(t *testing.T, nft *FakeNFTables, tx *knftables.Transaction) {
			tx.Delete(&knftables.Rule{Family: v4, Table: NFTTableIPv4, Chain: NFTMasqChain, Handle: nftRuleHandle(t, nft, NFTMasqChain, 2)})
		},
		wantRepairs: []string{"ip flannel-ipv4/postrtg: 1 rule missing"},
	}, {
		name: "chain flushed",
		damage: func(_ *testing.T, _ *FakeNFTables, tx *knftables.Transaction) {
			tx.Flush(&knftables.Chain{Family: v4, Table: NFTTableIPv4, Name: NFTMasqChain})
		},
		wantRepairs: []string{"ip flannel-ipv4/postrtg: 6 rules missing"},
	}, {
		name: "chain deleted",
		damage: func(_ *testing.T, _ *FakeNFTables, tx *knftables.Transaction) {
			tx.Delete(&knftables.Chain{Family: v4, Table: NFTTableIPv4, Name: NFTForwardChain})
		},
		wantRepairs: []string{"ip flannel-ipv4/forward: chain missing"},
	}, {
		name: "table deleted",
		damage: func(_ *testing.T, _ *FakeNFTables, tx *knftables.Transaction) {
			tx.Delete(&knftables.Table{Family: v4, Name: NFTTableIPv4})
		},
		wantRepairs: []string{"ip flannel-ipv4: table missing"},
	}, {
		name: "foreign rule appended",
		damage: func(_ *testing.T, _ *FakeNFTables, tx *knftables.Transaction) {
			tx.Add(rule(NFTForwardChain, "ip saddr 192.0.2.0/24 drop"))
		},
		wantRepairs: []string{"ip flannel-ipv4/forward: 1 unexpected rule"},
	}, {
		name: "rule changed",
		damage: func(t *testing.T, nft *FakeNFTables, tx *knftables.Transaction) {
			r := rule(NFTMasqChain, "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade")
			r.Handle = nftRuleHandle(t, nft, NFTMasqChain, 4)
			tx.Replace(r)
		},
		wantRepairs: []string{"ip flannel-ipv4/postrtg: 1 rule missing, 1 unexpected rule"},
	}, {
		name: "rules reordered",
		damage: func(t *testing.T, nft *FakeNFTables, tx *knftables.Transaction) {
			first := nft.Tables[v4][NFTTableIPv4].Chains[NFTForwardChain].Rules[0]
			tx.Delete(&knftables.Rule{Family: v4, Table: NFTTableIPv4, Chain: NFTForwardChain, Handle: first.Handle})
			tx.Add(rule(NFTForwardChain, first.Rule))
		},
		wantRepairs: []string{"ip flannel-ipv4/forward: rules out of order"},
	}, {
		name: "foreign chain added",
		damage: func(_ *testing.T, _ *FakeNFTables, tx *knftables.Transaction) {
			tx.Add(&knftables.Chain{Family: v4, Table: NFTTableIPv4, Name: "extra"})
			tx.Add(rule("extra", "drop"))
		},
		wantRepairs: []string{"ip flannel-ipv4: unexpected chain extra"},
	}, {
		name: "set added",
		damage: func(_ *testing.T, _ *FakeNFTables, tx *knftables.Transaction) {
			tx.Add(&knftables.Set{Family: v4, Table: NFTTableIPv4, Name: "blocked", Type: "ipv4_addr"})
		},
		wantRepairs: []string{"ip flannel-ipv4: unexpected set blocked"},
	}, {
		name: "base chain replaced by a regular chain",
		damage: func(_ *testing.T, _ *FakeNFTables, tx *knftables.Transaction) {
			tx.Delete(&knftables.Chain{Family: v4, Table: NFTTableIPv4, Name: NFTMasqChain})
			tx.Add(&knftables.Chain{Family: v4, Table: NFTTableIPv4, Name: NFTMasqChain})
		},
		wantRepairs: []string{`ip flannel-ipv4/postrtg: chain is "", want "type nat hook postrouting priority srcnat; policy accept;"`},
	}, {
		name: "base chain policy changed",
		damage: func(_ *testing.T, _ *FakeNFTables, tx *knftables.Transaction) {
			tx.Delete(&knftables.Chain{Family: v4, Table: NFTTableIPv4, Name: NFTForwardChain})
			tx.Add(&knftables.Chain{Family: v4, Table: NFTTableIPv4, Name: NFTForwardChain, Type: knftables.PtrTo(knftables.FilterType),
				Hook: knftables.PtrTo(knftables.ForwardHook), Priority: knftables.PtrTo(knftables.FilterPriority), Policy: knftables.PtrTo(knftables.DropPolicy)})
		},
		wantRepairs: []string{`ip flannel-ipv4/forward: chain is "type filter hook forward priority filter; policy drop;", want "type filter hook forward priority filter; policy accept;"`},
	}, {
		name: "table dormant",
		damage: func(_ *testing.T, nft *FakeNFTables, _ *knftables.Transaction) {
			// The fake does not change an existing table's flags.
			nft.Lock()
			defer nft.Unlock()
			nft.Tables[v4][NFTTableIPv4].Flags = []knftables.TableFlag{knftables.DormantFlag}
		},
		wantRepairs: []string{"ip flannel-ipv4: unexpected flags dormant"},
	}}
}

func TestNFTEnsureRepairs(t *testing.T) {
	for _, tt := range nftDamages() {
		t.Run(tt.name, func(t *testing.T) {
			nft := NewFakeNFTables()
			tables := []NFTTable{nftSet(fwReferenceConfig).NFTTable(), nftSet(fwReferenceIPv6Config).NFTTable()}
			fw := NewNFTFirewall(nft, tables)
			nftEnsure(t, fw)
			golden := nft.Dump()

			nftRun(t, nft, func(tx *knftables.Transaction) { tt.damage(t, nft, tx) })
			if nft.Dump() == golden {
				t.Fatal("the damage changed nothing: the test is wrong")
			}
			problems, err := fw.Check()
			if err != nil || !slices.Equal(problems, tt.wantRepairs) {
				t.Errorf("Check = %q, %v; want %q", problems, err, tt.wantRepairs)
			}
			repairs := nftEnsure(t, fw)
			if !slices.Equal(repairs, tt.wantRepairs) {
				t.Errorf("repairs = %q, want %q", repairs, tt.wantRepairs)
			}
			if tx := nft.LastTransaction.String(); strings.Contains(tx, NFTTableIPv6) {
				t.Errorf("the intact IPv6 table was rewritten:\n%s", tx)
			}
			fwDiffLines(t, nft.Dump(), golden)
			nftAssertQuiet(t, nft, fw)
		})
	}
}

func TestNFTStatus(t *testing.T) {
	nft := NewFakeNFTables()
	fw := NewNFTFirewall(nft, []NFTTable{nftSet(fwReferenceConfig).NFTTable()})
	st, err := fw.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 8 || slices.ContainsFunc(st, func(s RuleStatus) bool { return s.Present }) {
		t.Fatalf("Status without the table = %v, want 8 rules absent", st)
	}
	if nft.LastTransaction != nil {
		t.Fatal("Status changed the tables")
	}
	nftEnsure(t, fw)
	nftRun(t, nft, func(tx *knftables.Transaction) {
		tx.Delete(&knftables.Rule{Family: knftables.IPv4Family, Table: NFTTableIPv4, Chain: NFTForwardChain,
			Handle: nftRuleHandle(t, nft, NFTForwardChain, 0)})
	})
	if st, err = fw.Status(); err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, s := range st {
		if !s.Present {
			missing = append(missing, s.Rule)
		}
	}
	want := []string{`ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept comment "flanneld forward"`}
	if len(st) != 8 || !slices.Equal(missing, want) {
		t.Errorf("missing rules %q of %d, want %q", missing, len(st), want)
	}
}

// nftPrinting is a FakeNFTables whose listing prints rules in another form,
// as another nft version might, and which can fail calls.
type nftPrinting struct {
	*FakeNFTables
	print   func(rule string) string
	listErr map[string]error // table name -> error of ListTable
	runErr  error
}

func (p *nftPrinting) ListTable(ctx context.Context, family knftables.Family, name string) (*NFTTableState, error) {
	if err := p.listErr[name]; err != nil {
		return nil, err
	}
	s, err := p.FakeNFTables.ListTable(ctx, family, name)
	if s != nil && p.print != nil {
		for i := range s.Chains {
			for j, r := range s.Chains[i].Rules {
				s.Chains[i].Rules[j] = p.print(r)
			}
		}
	}
	return s, err
}

func (p *nftPrinting) Run(ctx context.Context, tx *knftables.Transaction) error {
	if p.runErr != nil {
		return p.runErr
	}
	return p.FakeNFTables.Run(ctx, tx)
}

func TestNFTLearnsPrintedForm(t *testing.T) {
	nft := &nftPrinting{FakeNFTables: NewFakeNFTables(), print: func(r string) string {
		return strings.ReplaceAll(r, "0x00004000", "0x4000")
	}}
	fw := NewNFTFirewall(nft, []NFTTable{nftSet(fwReferenceConfig).NFTTable()})
	if repairs := nftEnsure(t, fw); len(repairs) != 1 {
		t.Fatalf("repairs = %q", repairs)
	}
	for range 2 {
		nft.LastTransaction = nil
		if repairs := nftEnsure(t, fw); len(repairs) != 0 || nft.LastTransaction != nil {
			t.Fatalf("Ensure rewrote the table again: %q", repairs)
		}
	}
	st, err := fw.Status()
	if err != nil || slices.ContainsFunc(st, func(s RuleStatus) bool { return !s.Present }) {
		t.Errorf("Status in the printed form = %v, %v", st, err)
	}
	nftRun(t, nft.FakeNFTables, func(tx *knftables.Transaction) {
		tx.Flush(&knftables.Chain{Family: knftables.IPv4Family, Table: NFTTableIPv4, Name: NFTMasqChain})
	})
	if repairs := nftEnsure(t, fw); !slices.Equal(repairs, []string{"ip flannel-ipv4/postrtg: 6 rules missing"}) {
		t.Errorf("repairs = %q", repairs)
	}

}

func TestNFTErrors(t *testing.T) {
	tables := []NFTTable{nftSet(fwReferenceConfig).NFTTable(), nftSet(fwReferenceIPv6Config).NFTTable()}
	t.Run("listing fails for one table", func(t *testing.T) {
		injected := errors.New("permission denied")
		nft := &nftPrinting{FakeNFTables: NewFakeNFTables(), listErr: map[string]error{NFTTableIPv6: injected}}
		repairs, err := NewNFTFirewall(nft, tables).Ensure()
		if !errors.Is(err, injected) || !strings.Contains(err.Error(), "ip6 flannel-ipv6") {
			t.Errorf("Ensure error = %v, want the injected error naming the table", err)
		}
		if !slices.Equal(repairs, []string{"ip flannel-ipv4: table missing"}) {
			t.Errorf("repairs = %q: the IPv4 table must still be installed", repairs)
		}
	})
	t.Run("transaction fails", func(t *testing.T) {
		injected := errors.New("netlink: Error: Could not process rule")
		nft := &nftPrinting{FakeNFTables: NewFakeNFTables(), runErr: injected}
		repairs, err := NewNFTFirewall(nft, tables).Ensure()
		if !errors.Is(err, injected) || len(repairs) != 0 {
			t.Errorf("Ensure = %q, %v; want no repairs and the injected error", repairs, err)
		}
	})
	t.Run("rules do not take effect", func(t *testing.T) {
		swallow := &nftSwallowing{FakeNFTables: NewFakeNFTables()}
		_, err := NewNFTFirewall(swallow, tables[:1]).Ensure()
		if !errors.Is(err, errTableMismatch) {
			t.Errorf("Ensure error = %v, want errTableMismatch", err)
		}
	})
}

// nftSwallowing is a FakeNFTables on which rules never take effect.
type nftSwallowing struct{ *FakeNFTables }

func (s *nftSwallowing) Run(ctx context.Context, tx *knftables.Transaction) error {
	stripped := s.NewTransaction()
	for _, line := range strings.Split(tx.String(), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "add" && f[1] == "table" {
			stripped.Add(&knftables.Table{Family: knftables.Family(f[2]), Name: f[3]})
		}
	}
	return s.FakeNFTables.Run(ctx, stripped)
}

func TestNFTRun(t *testing.T) {
	nft := NewFakeNFTables()
	fw := NewNFTFirewall(nft, []NFTTable{nftSet(fwReferenceConfig).NFTTable()})
	restored := make(chan []string, 10)
	fw.OnRestore = func(r []string) { restored <- r }
	defer runInBackground(t, fw.Run)()
	golden := fwReadGolden(t, "nftables_ipv4.golden")
	fwWaitFor(t, "initial installation", func() bool { return nft.Dump() == golden })
	nftRun(t, nft, func(tx *knftables.Transaction) {
		tx.Delete(&knftables.Table{Family: knftables.IPv4Family, Name: NFTTableIPv4})
	})
	fwWaitFor(t, "restoration", func() bool { return nft.Dump() == golden })
	select {
	case r := <-restored:
		if !slices.Equal(r, []string{"ip flannel-ipv4: table missing"}) {
			t.Errorf("OnRestore got %q", r)
		}
	case <-time.After(5 * time.Second):
		t.Error("OnRestore was not called")
	}
	if len(restored) != 0 {
		t.Errorf("OnRestore called for the installation or more than once: %q", <-restored)
	}
}
