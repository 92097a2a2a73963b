package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"
)

// nftables mode (EnableNFTables): flanneld owns the tables ip flannel-ipv4
// and ip6 flannel-ipv6 completely. Each holds the base chain postrtg (nat,
// hook postrouting, priority srcnat) with the masquerade rules and the base
// chain forward (filter, hook forward, priority filter) with the forward
// accept rules: the same meanings as the iptables rules of MasqRules and
// ForwardRules. The rules are data (RuleSet.NFTTable), written in the form
// nft lists them, so the kernel's listing compares with them as text.

// The tables and chains flanneld owns in nftables mode.
const (
	NFTTableIPv4    = "flannel-ipv4"
	NFTTableIPv6    = "flannel-ipv6"
	NFTMasqChain    = "postrtg"
	NFTForwardChain = "forward"
)

// nftKubeProxyMark matches the packets kube-proxy masquerades itself: the
// nft form of iptables' `-m mark --mark 0x4000/0x4000`, as nft lists it.
const nftKubeProxyMark = "meta mark & 0x00004000 == 0x00004000"

// nftOpTimeout bounds one pass over the tables (nftPass): their listings
// and the transaction that follows.
const nftOpTimeout = 30 * time.Second

// NFTTable is one nftables table flanneld owns, as data.
type NFTTable struct {
	Family knftables.Family
	Name   string
	Chains []NFTChain
}

// NFTChain is a base chain of an NFTTable with its rules.
type NFTChain struct {
	Name     string
	Type     knftables.BaseChainType
	Hook     knftables.BaseChainHook
	Priority knftables.BaseChainPriority
	// Rules are the chain's rules in order, each as nft lists it, with its
	// comment: `ip saddr 10.244.0.0/16 accept comment "flanneld forward"`.
	Rules []string
}

// Spec is c's base-chain line as nft lists it.
func (c NFTChain) Spec() string {
	return fmt.Sprintf("type %s hook %s priority %s; policy accept;", c.Type, c.Hook, c.Priority)
}

// String names t as nft does: "ip flannel-ipv4".
func (t NFTTable) String() string { return string(t.Family) + " " + t.Name }

// NFTTable returns s as its nftables table: ip flannel-ipv4 for IPv4, ip6
// flannel-ipv6 for IPv6, with chain postrtg (masquerade rules) when s.Masq
// and chain forward (forward accept rules) when s.Forward. The prefixes are
// masked; the caller is expected to have validated s.
func (s RuleSet) NFTTable() NFTTable {
	t := NFTTable{Family: knftables.IPv4Family, Name: NFTTableIPv4}
	if s.IPv6() {
		t.Family, t.Name = knftables.IPv6Family, NFTTableIPv6
	}
	if s.Masq {
		t.Chains = append(t.Chains, NFTChain{
			Name: NFTMasqChain, Type: knftables.NATType, Hook: knftables.PostroutingHook,
			Priority: knftables.SNATPriority, Rules: nftMasqRules(t.Family, s.FirewallConfig),
		})
	}
	if s.Forward {
		t.Chains = append(t.Chains, NFTChain{
			Name: NFTForwardChain, Type: knftables.FilterType, Hook: knftables.ForwardHook,
			Priority: knftables.FilterPriority, Rules: nftForwardRules(t.Family, s.Network),
		})
	}
	return t
}

// nftMasqRules are the rules of MasqRules (without the jump, the chain is a
// base chain) in nft's syntax, for family ip or ip6.
func nftMasqRules(family knftables.Family, c FirewallConfig) []string {
	network := c.Network.Masked().String()
	lease := c.Lease.Masked().String()
	multicast := multicastFor(c.Network).String()
	saddr, daddr := string(family)+" saddr ", string(family)+" daddr "
	masquerade := "masquerade"
	if c.MasqFullyRandom {
		masquerade += " fully-random"
	}
	rule := func(parts ...string) string {
		return strings.Join(parts, " ") + " comment " + quoteNFT(masqComment)
	}
	return []string{
		rule(nftKubeProxyMark, "return"),
		rule(saddr+lease, daddr+network, "return"),
		rule(saddr+network, daddr+lease, "return"),
		rule(saddr+"!= "+network, daddr+lease, "return"),
		rule(saddr+network, daddr+"!= "+multicast, masquerade),
		rule(saddr+"!= "+network, daddr+network, masquerade),
	}
}

// nftForwardRules are the rules of ForwardRules (without the jump) in nft's
// syntax: accept everything from and to the cluster network.
func nftForwardRules(family knftables.Family, network netip.Prefix) []string {
	n := network.Masked().String()
	comment := " comment " + quoteNFT(forwardComment)
	return []string{
		string(family) + " saddr " + n + " accept" + comment,
		string(family) + " daddr " + n + " accept" + comment,
	}
}

// quoteNFT quotes a comment as nft lists it.
func quoteNFT(s string) string { return `"` + s + `"` }

// RenderNFT prints tables as `nft list table` does (without handles), one
// after the other; for golden tests, logs and documentation.
func RenderNFT(tables ...NFTTable) string {
	var b strings.Builder
	for _, t := range tables {
		fmt.Fprintf(&b, "table %s {\n", t)
		for i, c := range t.Chains {
			if i > 0 {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "\tchain %s {\n\t\t%s\n", c.Name, c.Spec())
			for _, r := range c.Rules {
				fmt.Fprintf(&b, "\t\t%s\n", r)
			}
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// NFTables is the nftables access NFTFirewall needs: knftables transactions
// to write (family and table are set on every object, so one transaction
// spans both tables), and the listing of a table to compare with.
type NFTables interface {
	NewTransaction() *knftables.Transaction
	Run(ctx context.Context, tx *knftables.Transaction) error
	// ListTable returns the table as the kernel has it; nil, without an
	// error, when it does not exist.
	ListTable(ctx context.Context, family knftables.Family, name string) (*NFTTableState, error)
}

// NFTTableState is a table as the kernel has it.
type NFTTableState struct {
	// Chains are the table's chains by name.
	Chains []NFTChainState
	// Others are the table's other objects and attributes, e.g.
	// "set blocked" or "flags dormant"; flanneld's tables have none.
	Others []string
}

// NFTChainState is a chain as the kernel has it.
type NFTChainState struct {
	Name string
	// Spec is the base-chain line, e.g. "type nat hook postrouting
	// priority srcnat; policy accept;"; empty for a regular chain.
	Spec string
	// Rules are the chain's rules as nft lists them, without handles.
	Rules []string
}

// chain returns the chain called name, or nil.
func (s *NFTTableState) chain(name string) *NFTChainState {
	for i := range s.Chains {
		if s.Chains[i].Name == name {
			return &s.Chains[i]
		}
	}
	return nil
}

// state is what nft lists for t right after flanneld wrote it.
func (t NFTTable) state() *NFTTableState {
	s := &NFTTableState{}
	for _, c := range t.Chains {
		s.Chains = append(s.Chains, NFTChainState{Name: c.Name, Spec: c.Spec(), Rules: slices.Clone(c.Rules)})
	}
	return s
}

// errTableMismatch reports that a table still differs from the wanted rules
// right after flanneld rewrote it.
var errTableMismatch = errors.New("table differs from the wanted rules after rewriting it")

// NFTFirewall keeps flanneld's nftables tables in place: each holds exactly
// its wanted chains and rules and nothing else. Every table that differs is
// rewritten in one transaction. It is safe for concurrent use.
type NFTFirewall struct {
	nft    NFTables
	tables []NFTTable

	mu sync.Mutex
	// printed holds, per table, the listing right after flanneld wrote it,
	// when it differs from the generated form: the form this nft version
	// prints the rules in. Absent when nft prints exactly what flanneld
	// generates (the case with nft 1.0).
	printed map[string]*NFTTableState

	// OnRestore, if set, is called by Run with the repairs of each pass
	// after the first (the first installs the rules).
	OnRestore func(repairs []string)
}

var _ RuleKeeper = (*NFTFirewall)(nil)

// NewNFTFirewall returns an NFTFirewall that keeps tables in place through
// nft.
func NewNFTFirewall(nft NFTables, tables []NFTTable) *NFTFirewall {
	f := &NFTFirewall{nft: nft, printed: map[string]*NFTTableState{}}
	for _, t := range tables {
		t.Chains = slices.Clone(t.Chains)
		for i := range t.Chains {
			t.Chains[i].Rules = slices.Clone(t.Chains[i].Rules)
		}
		f.tables = append(f.tables, t)
	}
	return f
}

// Tables returns the tables f keeps.
func (f *NFTFirewall) Tables() []NFTTable { return slices.Clone(f.tables) }

// Ensure makes every table hold exactly its wanted chains and rules, in one
// transaction for all the tables that differ; tables that are right are not
// touched, so a restarted daemon does not disturb traffic. A table is
// rewritten atomically: add the table, add its chains, flush them, add the
// rules; a table that holds anything foreign (another chain, a set, a chain
// of the wrong type) is deleted and re-created in the same transaction. It
// returns what it repaired, e.g. "ip flannel-ipv4: table missing" or
// "ip flannel-ipv4/postrtg: 1 rule missing"; errors are joined.
func (f *NFTFirewall) Ensure() (repairs []string, err error) {
	var written []NFTTable
	tx := f.nft.NewTransaction()
	err = f.pass(func(t NFTTable, have *NFTTableState) {
		problems, recreate := diffNFTTable(t, f.reference(t), have)
		if len(problems) == 0 {
			return
		}
		repairs = append(repairs, problems...)
		addNFTTable(tx, t, recreate)
		written = append(written, t)
	}, func(ctx context.Context) error {
		if len(written) == 0 {
			return nil
		}
		if err := f.nft.Run(ctx, tx); err != nil {
			repairs = nil
			names := make([]string, len(written))
			for i, t := range written {
				names[i] = t.String()
			}
			return fmt.Errorf("writing tables %s: %w", strings.Join(names, ", "), err)
		}
		var errs []error
		for _, t := range written {
			errs = append(errs, f.verify(ctx, t))
		}
		return errors.Join(errs...)
	})
	return repairs, err
}

// Check compares the kernel with the tables without changing anything, and
// describes each difference the way Ensure would report its repair.
func (f *NFTFirewall) Check() (problems []string, err error) {
	err = f.pass(func(t NFTTable, have *NFTTableState) {
		p, _ := diffNFTTable(t, f.reference(t), have)
		problems = append(problems, p...)
	}, nil)
	return problems, err
}

// Status says for each wanted rule whether its chain, with the right base
// chain type, holds it; rules are named as `nft add rule` takes them:
// "ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept comment ...".
func (f *NFTFirewall) Status() (out []RuleStatus, err error) {
	err = f.pass(func(t NFTTable, have *NFTTableState) {
		ref := f.reference(t)
		for _, c := range t.Chains {
			want := ref.chain(c.Name)
			var got *NFTChainState
			if have != nil {
				got = have.chain(c.Name)
			}
			for j, r := range c.Rules {
				present := got != nil && want != nil && got.Spec == want.Spec && slices.Contains(got.Rules, want.Rules[j])
				out = append(out, RuleStatus{Rule: fmt.Sprintf("%s %s %s", t, c.Name, r), Present: present})
			}
		}
	}, nil)
	return out, err
}

// pass is one pass of Ensure, Check or Status over f's tables, holding
// f.mu (nftPass).
func (f *NFTFirewall) pass(visit func(t NFTTable, have *NFTTableState), then func(ctx context.Context) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return nftPass(f.nft, f.tables, visit, then)
}

// nftPass is the one way flanneld reads its tables: within one deadline
// (nftOpTimeout), it lists each of tables and hands it to visit (have is
// nil when the table does not exist), then, if then is set, calls then
// with the same deadline (to write what visit found). A table that cannot
// be listed is skipped; the errors, each naming its table, and then's
// error are joined.
func nftPass(nft NFTables, tables []NFTTable, visit func(t NFTTable, have *NFTTableState), then func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), nftOpTimeout)
	defer cancel()
	var errs []error
	for _, t := range tables {
		have, err := nft.ListTable(ctx, t.Family, t.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing table %s: %w", t, err))
			continue
		}
		visit(t, have)
	}
	if then != nil {
		errs = append(errs, then(ctx))
	}
	return errors.Join(errs...)
}

// Run calls Ensure at once and then every interval until ctx is done,
// logging each repair and each error. A non-positive interval means 5s.
func (f *NFTFirewall) Run(ctx context.Context, interval time.Duration) {
	keepRules(ctx, interval, f.Ensure, f.OnRestore)
}

// reference is the listing t is compared with: the printed form learned
// after writing it, else the generated one.
func (f *NFTFirewall) reference(t NFTTable) *NFTTableState {
	if p := f.printed[t.String()]; p != nil {
		return p
	}
	return t.state()
}

// verify lists t after a rewrite. When nft prints it in a form other than
// the generated one, but with the same chains and as many rules in each,
// that form is remembered so the next pass does not rewrite it again.
func (f *NFTFirewall) verify(ctx context.Context, t NFTTable) error {
	have, err := f.nft.ListTable(ctx, t.Family, t.Name)
	if err != nil {
		return fmt.Errorf("listing table %s: %w", t, err)
	}
	want := t.state()
	if problems, _ := diffNFTTable(t, want, have); len(problems) == 0 {
		delete(f.printed, t.String())
		return nil
	}
	if have == nil || len(have.Others) > 0 || len(have.Chains) != len(want.Chains) {
		return fmt.Errorf("%s: %w", t, errTableMismatch)
	}
	for _, c := range want.Chains {
		got := have.chain(c.Name)
		if got == nil || len(got.Rules) != len(c.Rules) {
			return fmt.Errorf("%s/%s: %w", t, c.Name, errTableMismatch)
		}
	}
	f.printed[t.String()] = have
	klog.V(2).InfoS("nft prints flanneld's rules in another form; comparing against that form",
		"table", t.String(), "listing", have)
	return nil
}

// diffNFTTable describes how have differs from ref, the listing of t, and
// whether the table must be re-created (it holds something foreign, or a
// chain of the wrong type) rather than have its chains flushed and refilled.
func diffNFTTable(t NFTTable, ref, have *NFTTableState) (problems []string, recreate bool) {
	if have == nil {
		return []string{t.String() + ": table missing"}, false
	}
	for _, o := range have.Others {
		problems = append(problems, fmt.Sprintf("%s: unexpected %s", t, o))
		recreate = true
	}
	for _, c := range have.Chains {
		if ref.chain(c.Name) == nil {
			problems = append(problems, fmt.Sprintf("%s: unexpected chain %s", t, c.Name))
			recreate = true
		}
	}
	for _, want := range ref.Chains {
		where := t.String() + "/" + want.Name
		got := have.chain(want.Name)
		switch {
		case got == nil:
			problems = append(problems, where+": chain missing")
		case got.Spec != want.Spec:
			problems = append(problems, fmt.Sprintf("%s: chain is %q, want %q", where, got.Spec, want.Spec))
			recreate = true
		case !slices.Equal(got.Rules, want.Rules):
			problems = append(problems, where+": "+describeDiff(want.Rules, got.Rules))
		}
	}
	return problems, recreate
}

// addNFTTable adds to tx the operations that make t exactly right: add the
// table (deleting and re-adding it first when recreate), add its chains,
// flush them, add their rules.
func addNFTTable(tx *knftables.Transaction, t NFTTable, recreate bool) {
	tx.Add(&knftables.Table{Family: t.Family, Name: t.Name})
	if recreate {
		tx.Delete(&knftables.Table{Family: t.Family, Name: t.Name})
		tx.Add(&knftables.Table{Family: t.Family, Name: t.Name})
	}
	for _, c := range t.Chains {
		tx.Add(&knftables.Chain{
			Family: t.Family, Table: t.Name, Name: c.Name,
			Type: knftables.PtrTo(c.Type), Hook: knftables.PtrTo(c.Hook), Priority: knftables.PtrTo(c.Priority),
		})
	}
	for _, c := range t.Chains {
		tx.Flush(&knftables.Chain{Family: t.Family, Table: t.Name, Name: c.Name})
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			tx.Add(&knftables.Rule{Family: t.Family, Table: t.Name, Chain: c.Name, Rule: r})
		}
	}
}
