package network

import (
	"context"
	"maps"
	"slices"
	"strings"

	"sigs.k8s.io/knftables"
)

// FakeNFTables is an in-memory NFTables for tests: knftables' Fake (for any
// table), listed the way nft lists a table. Change its state as another
// agent would with transactions of its own (Run), and read it with Dump.
type FakeNFTables struct {
	*knftables.Fake
}

var _ NFTables = (*FakeNFTables)(nil)

// NewFakeNFTables returns an empty FakeNFTables.
func NewFakeNFTables() *FakeNFTables {
	return &FakeNFTables{Fake: knftables.NewFake("", "")}
}

// ListTable lists the fake's table like nft would: chains by name, each
// base chain's line, rules with their comments.
func (f *FakeNFTables) ListTable(_ context.Context, family knftables.Family, name string) (*NFTTableState, error) {
	f.RLock()
	defer f.RUnlock()
	t := f.Tables[family][name]
	if t == nil {
		return nil, nil
	}
	s := &NFTTableState{}
	for _, flag := range t.Flags {
		s.Others = append(s.Others, "flags "+string(flag))
	}
	for _, kind := range []struct {
		name  string
		names []string
	}{
		{"flowtable", slices.Sorted(maps.Keys(t.Flowtables))},
		{"set", slices.Sorted(maps.Keys(t.Sets))},
		{"map", slices.Sorted(maps.Keys(t.Maps))},
		{"counter", slices.Sorted(maps.Keys(t.Counters))},
	} {
		for _, n := range kind.names {
			s.Others = append(s.Others, kind.name+" "+n)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(t.Chains)) {
		c := t.Chains[n]
		cs := NFTChainState{Name: n}
		if c.Hook != nil {
			policy := knftables.AcceptPolicy
			if c.Policy != nil {
				policy = *c.Policy
			}
			cs.Spec = NFTChain{Type: deref(c.Type), Hook: *c.Hook, Priority: deref(c.Priority)}.Spec()
			cs.Spec = strings.Replace(cs.Spec, "policy accept;", "policy "+string(policy)+";", 1)
		}
		for _, r := range c.Rules {
			text := r.Rule
			if r.Comment != nil {
				text += " comment " + quoteNFT(*r.Comment)
			}
			cs.Rules = append(cs.Rules, text)
		}
		s.Chains = append(s.Chains, cs)
	}
	return s, nil
}

// deref returns *p, or the zero value for nil.
func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
