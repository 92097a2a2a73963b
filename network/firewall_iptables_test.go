package network

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// fwEnsure runs Ensure and fails the test on an error.
func fwEnsure(t *testing.T, fw *Firewall) []string {
	t.Helper()
	repairs, err := fw.Ensure()
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return repairs
}

// fwAssertQuiet checks that Ensure, on fw and on a new Firewall for the same
// rules (a restarted daemon), finds nothing to repair and changes nothing.
func fwAssertQuiet(t *testing.T, ipt *fakeIPTables, fw *Firewall, rules []Rule) {
	t.Helper()
	ipt.takeMutations()
	for _, fw := range []*Firewall{fw, NewFirewall(ipt, rules)} {
		if repairs := fwEnsure(t, fw); len(repairs) != 0 {
			t.Errorf("Ensure on correct rules repaired %q", repairs)
		}
		if m := ipt.takeMutations(); len(m) != 0 {
			t.Errorf("Ensure on correct rules changed the tables: %q", m)
		}
	}
}

// fwInstalled returns a fake holding the reference rules, and its Firewall.
func fwInstalled(t *testing.T) (*fakeIPTables, *Firewall, []Rule) {
	t.Helper()
	ipt := newFakeIPTables()
	rules := fwAllRules(fwReferenceConfig)
	fw := NewFirewall(ipt, rules)
	fwEnsure(t, fw)
	ipt.takeMutations()
	return ipt, fw, rules
}

func TestFirewallEnsureFromScratch(t *testing.T) {
	ipt := newFakeIPTables()
	rules := fwAllRules(fwReferenceConfig)
	fw := NewFirewall(ipt, rules)

	repairs := fwEnsure(t, fw)
	want := []string{
		"nat/FLANNEL-POSTRTG: chain missing",
		"filter/FLANNEL-FWD: chain missing",
		"nat/POSTROUTING: jump missing",
		"filter/FORWARD: jump missing",
	}
	if !slices.Equal(repairs, want) {
		t.Errorf("repairs = %q, want %q", repairs, want)
	}
	fwDiffLines(t, ipt.dump(), fwReadGolden(t, "firewall_ipv4.golden"))
	fwAssertQuiet(t, ipt, fw, rules)
}

func TestFirewallEnsureRepairs(t *testing.T) {
	foreign := []string{"-s", "192.0.2.0/24", "-j", "ACCEPT"}
	tests := []struct {
		name        string
		damage      func(tables map[string]*fakeTable)
		wantRepairs []string
		// wantMutations, when set, are the exact calls of the repair.
		wantMutations []string
	}{{
		name:        "rule deleted",
		damage:      func(ts map[string]*fakeTable) { fwDeleteRule(ts["nat"], MasqChain, 2) },
		wantRepairs: []string{"nat/FLANNEL-POSTRTG: 1 rule missing"},
	}, {
		name:        "last rule deleted",
		damage:      func(ts map[string]*fakeTable) { fwDeleteRule(ts["filter"], ForwardChain, 1) },
		wantRepairs: []string{"filter/FLANNEL-FWD: 1 rule missing"},
		wantMutations: []string{
			`Insert filter FLANNEL-FWD 2 -d 10.244.0.0/16 -m comment --comment flanneld forward -j ACCEPT`,
		},
	}, {
		name:        "chain flushed",
		damage:      func(ts map[string]*fakeTable) { ts["nat"].rules[MasqChain] = nil },
		wantRepairs: []string{"nat/FLANNEL-POSTRTG: 6 rules missing"},
	}, {
		name: "chain and jump deleted",
		damage: func(ts map[string]*fakeTable) {
			fwDeleteRule(ts["nat"], "POSTROUTING", 0)
			delete(ts["nat"].rules, MasqChain)
			ts["nat"].chains = slices.DeleteFunc(ts["nat"].chains, func(c string) bool { return c == MasqChain })
		},
		wantRepairs: []string{"nat/FLANNEL-POSTRTG: chain missing", "nat/POSTROUTING: jump missing"},
	}, {
		name:          "jump removed",
		damage:        func(ts map[string]*fakeTable) { fwDeleteRule(ts["filter"], "FORWARD", 0) },
		wantRepairs:   []string{"filter/FORWARD: jump missing"},
		wantMutations: []string{`Append filter FORWARD -m comment --comment flanneld forward -j FLANNEL-FWD`},
	}, {
		name: "foreign rule first in owned chain",
		damage: func(ts map[string]*fakeTable) {
			ts["filter"].rules[ForwardChain] = slices.Insert(ts["filter"].rules[ForwardChain], 0, foreign)
		},
		wantRepairs: []string{"filter/FLANNEL-FWD: 1 unexpected rule"},
	}, {
		name: "foreign rule last in owned chain",
		damage: func(ts map[string]*fakeTable) {
			ts["filter"].rules[ForwardChain] = append(ts["filter"].rules[ForwardChain], foreign)
		},
		wantRepairs:   []string{"filter/FLANNEL-FWD: 1 unexpected rule"},
		wantMutations: []string{"DeleteById filter FLANNEL-FWD 3"},
	}, {
		name: "rule duplicated",
		damage: func(ts map[string]*fakeTable) {
			rules := ts["nat"].rules[MasqChain]
			ts["nat"].rules[MasqChain] = slices.Insert(rules, 0, rules[3])
		},
		wantRepairs: []string{"nat/FLANNEL-POSTRTG: 1 unexpected rule"},
	}, {
		name: "rules reordered",
		damage: func(ts map[string]*fakeTable) {
			rules := ts["nat"].rules[MasqChain]
			rules[0], rules[5] = rules[5], rules[0]
		},
		wantRepairs: []string{"nat/FLANNEL-POSTRTG: rules out of order"},
	}, {
		name: "rule changed and both chains damaged",
		damage: func(ts map[string]*fakeTable) {
			ts["nat"].rules[MasqChain][4] = []string{"-j", "MASQUERADE"}
			ts["filter"].rules[ForwardChain] = nil
		},
		wantRepairs: []string{
			"nat/FLANNEL-POSTRTG: 1 rule missing, 1 unexpected rule",
			"filter/FLANNEL-FWD: 2 rules missing",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ipt, fw, rules := fwInstalled(t)
			ipt.edit(tt.damage)

			repairs := fwEnsure(t, fw)
			if !slices.Equal(repairs, tt.wantRepairs) {
				t.Errorf("repairs = %q, want %q", repairs, tt.wantRepairs)
			}
			m := ipt.takeMutations()
			if tt.wantMutations != nil && !slices.Equal(m, tt.wantMutations) {
				t.Errorf("mutations = %q, want %q", m, tt.wantMutations)
			}
			fwDiffLines(t, ipt.dump(), fwReadGolden(t, "firewall_ipv4.golden"))
			fwAssertQuiet(t, ipt, fw, rules)
		})
	}
}

// fwDeleteRule removes rule i (0-based) of chain.
func fwDeleteRule(t *fakeTable, chain string, i int) {
	t.rules[chain] = slices.Delete(t.rules[chain], i, i+1)
}

func TestFirewallLeavesForeignRulesInBuiltinChains(t *testing.T) {
	ipt, fw, rules := fwInstalled(t)
	before := []string{"-s", "192.0.2.0/24", "-j", "RETURN"}
	after := []string{"-d", "198.51.100.0/24", "-j", "MASQUERADE"}
	ipt.edit(func(ts map[string]*fakeTable) {
		nat := ts["nat"]
		nat.rules["POSTROUTING"] = append([][]string{before}, append(nat.rules["POSTROUTING"], after)...)
		ts["filter"].rules["FORWARD"] = append([][]string{before}, ts["filter"].rules["FORWARD"]...)
	})
	want := ipt.dump()

	fwAssertQuiet(t, ipt, fw, rules)
	if got := ipt.dump(); got != want {
		t.Errorf("foreign rules were touched:\n got:\n%s\nwant:\n%s", got, want)
	}
}

// TestFirewallLearnsPrintedForm covers an iptables that prints rules in
// another form than generated: the chain is written once, then recognised.
func TestFirewallLearnsPrintedForm(t *testing.T) {
	ipt := newFakeIPTables()
	ipt.format = func(spec []string) string {
		s := fakeFormat(spec)
		s = strings.ReplaceAll(s, "--mark 0x4000/0x4000", "--mark 0x4000")
		return strings.ReplaceAll(s, `"flanneld masq"`, `'flanneld masq'`)
	}
	rules := fwAllRules(fwReferenceConfig)
	fw := NewFirewall(ipt, rules)
	fwEnsure(t, fw)
	ipt.takeMutations()

	for range 2 {
		if repairs := fwEnsure(t, fw); len(repairs) != 0 {
			t.Errorf("Ensure repaired %q again", repairs)
		}
		if m := ipt.takeMutations(); len(m) != 0 {
			t.Errorf("Ensure changed the tables again: %q", m)
		}
	}

	// Damage is still noticed and described against the printed form.
	ipt.edit(func(ts map[string]*fakeTable) { fwDeleteRule(ts["nat"], MasqChain, 0) })
	if repairs := fwEnsure(t, fw); !slices.Equal(repairs, []string{"nat/FLANNEL-POSTRTG: 1 rule missing"}) {
		t.Errorf("repairs = %q", repairs)
	}
	fwDiffLines(t, ipt.dump(), fwReadGolden(t, "firewall_ipv4.golden"))
}

func TestFirewallErrors(t *testing.T) {
	t.Run("chain creation fails", func(t *testing.T) {
		ipt := newFakeIPTables()
		injected := errors.New("permission denied")
		ipt.fail["NewChain nat"] = injected
		fw := NewFirewall(ipt, fwAllRules(fwReferenceConfig))

		repairs, err := fw.Ensure()
		if !errors.Is(err, injected) || !strings.Contains(err.Error(), "nat/FLANNEL-POSTRTG") {
			t.Fatalf("Ensure error = %v, want the injected error naming the chain", err)
		}
		want := []string{"filter/FLANNEL-FWD: chain missing", "filter/FORWARD: jump missing"}
		if !slices.Equal(repairs, want) {
			t.Errorf("repairs = %q, want %q", repairs, want)
		}
		fwAssertNoJump(t, ipt)
	})
	t.Run("errors are joined", func(t *testing.T) {
		ipt := newFakeIPTables()
		injected := errors.New("xtables lock timeout")
		ipt.fail["ChainExists"] = injected
		_, err := NewFirewall(ipt, fwAllRules(fwReferenceConfig)).Ensure()
		if !errors.Is(err, injected) {
			t.Fatalf("Ensure error = %v, want the injected error", err)
		}
		for _, chain := range []string{"nat/FLANNEL-POSTRTG", "filter/FLANNEL-FWD"} {
			if !strings.Contains(err.Error(), chain) {
				t.Errorf("error %q does not name %s", err, chain)
			}
		}
	})
	t.Run("rule does not take effect", func(t *testing.T) {
		ipt := newFakeIPTables()
		last := MasqRules(fwReferenceConfig)[6].Spec
		ipt.swallow = func(spec []string) bool { return slices.Equal(spec, last) }
		_, err := NewFirewall(ipt, fwAllRules(fwReferenceConfig)).Ensure()
		if !errors.Is(err, errChainMismatch) {
			t.Fatalf("Ensure error = %v, want errChainMismatch", err)
		}
		fwAssertNoJump(t, ipt)
	})
}

// fwAssertNoJump checks that no jump into the masquerade chain was added.
func fwAssertNoJump(t *testing.T, ipt *fakeIPTables) {
	t.Helper()
	for _, m := range ipt.takeMutations() {
		if strings.HasPrefix(m, "Append nat POSTROUTING") {
			t.Errorf("jumped into a chain that is not right: %s", m)
		}
	}
}

func TestFirewallRun(t *testing.T) {
	ipt := newFakeIPTables()
	fw := NewFirewall(ipt, fwAllRules(fwReferenceConfig))
	golden := fwReadGolden(t, "firewall_ipv4.golden")

	defer runInBackground(t, fw.Run)()

	fwWaitFor(t, "initial installation", func() bool { return ipt.dump() == golden })
	ipt.edit(func(ts map[string]*fakeTable) { ts["nat"].rules[MasqChain] = nil })
	fwWaitFor(t, "restoration", func() bool { return ipt.dump() == golden })
}

// fwWaitFor polls cond until it holds, failing the test after a while.
func fwWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFirewallCheckIsReadOnly(t *testing.T) {
	ipt := newFakeIPTables()
	rules := append(MasqRules(fwReferenceConfig), ForwardRules(fwReferenceConfig.Network)...)
	f := NewFirewall(ipt, rules)
	problems, err := f.Check()
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 4 { // two chains missing, two jumps missing
		t.Fatalf("problems on empty tables: %v", problems)
	}
	if _, err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	if problems, err := f.Check(); err != nil || len(problems) != 0 {
		t.Fatalf("problems after Ensure: %v, %v", problems, err)
	}
}

// runInBackground starts run with a 5 ms interval and returns the function
// that stops it and checks that it returns.
func runInBackground(t *testing.T, run func(context.Context, time.Duration)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx, 5*time.Millisecond)
	}()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after the context was cancelled")
		}
	}
}
