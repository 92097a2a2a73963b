package network

import (
	"context"
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

// ListTable lists the fake's table as the real NFTables does
// (listNFTTable), through a knftables Fake for that one table, which sees
// the fake's table; what nft would print (nftListing) comes from the
// fake's chains: each base chain's line, each rule with its comment.
func (f *FakeNFTables) ListTable(ctx context.Context, family knftables.Family, name string) (*NFTTableState, error) {
	f.RLock()
	defer f.RUnlock()
	view := knftables.NewFake(family, name)
	view.Table = f.Tables[family][name]
	return listNFTTable(ctx, view, func(context.Context) (*nftListing, error) {
		return fakeListing(view.Table), nil
	})
}

// fakeListing is what nft would print of t (nftListing).
func fakeListing(t *knftables.FakeTable) *nftListing {
	l := &nftListing{chains: map[string]string{}, rules: map[int]string{}}
	for _, flag := range t.Flags {
		l.flags = append(l.flags, "flags "+string(flag))
	}
	for name, c := range t.Chains {
		if c.Hook != nil {
			policy := knftables.AcceptPolicy
			if c.Policy != nil {
				policy = *c.Policy
			}
			spec := NFTChain{Type: deref(c.Type), Hook: *c.Hook, Priority: deref(c.Priority)}.Spec()
			l.chains[name] = strings.Replace(spec, "policy accept;", "policy "+string(policy)+";", 1)
		} else {
			l.chains[name] = ""
		}
		for _, r := range c.Rules {
			text := r.Rule
			if r.Comment != nil {
				text += " comment " + quoteNFT(*r.Comment)
			}
			l.rules[deref(r.Handle)] = text
		}
	}
	return l
}

// deref returns *p, or the zero value for nil.
func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
