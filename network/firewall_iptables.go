package network

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"k8s.io/klog/v2"
)

// IPTables is the subset of *iptables.IPTables the firewall uses, so the
// logic is unit-tested with a fake.
type IPTables interface {
	// ChainExists reports whether table has chain.
	ChainExists(table, chain string) (bool, error)
	// NewChain creates chain in table; it fails if the chain exists.
	NewChain(table, chain string) error
	// List returns chain's definition and rules in iptables -S form
	// ("-N CHAIN" or "-P CHAIN POLICY", then "-A CHAIN ..." lines).
	List(table, chain string) ([]string, error)
	// Exists reports whether chain has a rule equal to rulespec (iptables -C).
	Exists(table, chain string, rulespec ...string) (bool, error)
	// Append adds a rule at the end of chain.
	Append(table, chain string, rulespec ...string) error
	// Insert adds a rule at 1-based position pos of chain.
	Insert(table, chain string, pos int, rulespec ...string) error
	// DeleteById deletes the rule at 1-based position id of chain.
	DeleteById(table, chain string, id int) error
	// Delete deletes the first rule of chain equal to rulespec (iptables -D).
	Delete(table, chain string, rulespec ...string) error
	// ClearAndDeleteChain flushes and deletes chain; nothing happens when
	// the chain does not exist.
	ClearAndDeleteChain(table, chain string) error
}

var (
	_ IPTables   = (*iptables.IPTables)(nil)
	_ RuleKeeper = (*Firewall)(nil)
)

// xtablesLockWaitSeconds bounds how long one iptables call waits for the
// xtables lock held by another agent (kube-proxy, ...): a stuck lock fails
// the call, and the next resync retries, instead of hanging the loop.
const xtablesLockWaitSeconds = 10

// NewIPTables returns the real go-iptables client for proto (iptables or
// ip6tables), waiting for the xtables lock on every call.
func NewIPTables(proto iptables.Protocol) (IPTables, error) {
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(xtablesLockWaitSeconds))
	if err != nil {
		return nil, fmt.Errorf("initialising iptables (protocol %d): %w", proto, err)
	}
	return ipt, nil
}

// builtinChains are the chains iptables itself provides. flanneld only
// ensures its own rules exist in them; it never rewrites them.
var builtinChains = map[string]bool{
	"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true,
}

// errChainMismatch reports that a chain still differs from the wanted rules
// right after flanneld rewrote it.
var errChainMismatch = errors.New("chain differs from the wanted rules after rewriting it")

// Firewall keeps a set of rules in place: chains flanneld owns hold exactly
// their wanted rules, and each rule in a built-in chain (the jumps into the
// owned chains) exists. It is safe for concurrent use.
type Firewall struct {
	ipt   IPTables
	rules []Rule // as given, for Status

	mu     sync.Mutex
	chains []*ownedChain // in the order their first rule appears
	hooks  []Rule        // rules in built-in chains, in order

	// OnRestore, if set, is called by Run with the repairs of each pass
	// after the first (the first installs the rules).
	OnRestore func(repairs []string)
}

// ownedChain is a chain flanneld owns and its wanted content.
type ownedChain struct {
	table, name string
	specs       [][]string
	// want holds the comparison key (see ruleKey) of each wanted rule.
	want []string
	// printed holds the keys of the rules as iptables listed them right after
	// flanneld wrote them, when that differs from want: the form this
	// iptables version normalises them to. Nil when iptables prints exactly
	// what flanneld generates (the case with iptables 1.8).
	printed []string
}

func (c *ownedChain) String() string { return c.table + "/" + c.name }

// NewFirewall returns a Firewall that keeps rules in place through ipt.
// Rules in built-in chains are kept present; rules in any other chain make
// that chain owned by flanneld, with exactly those rules in order.
func NewFirewall(ipt IPTables, rules []Rule) *Firewall {
	f := &Firewall{ipt: ipt}
	byName := map[string]*ownedChain{}
	for _, r := range rules {
		f.rules = append(f.rules, Rule{Table: r.Table, Chain: r.Chain, Spec: slices.Clone(r.Spec)})
		if builtinChains[r.Chain] {
			f.hooks = append(f.hooks, r)
			continue
		}
		id := r.Table + "/" + r.Chain
		c, ok := byName[id]
		if !ok {
			c = &ownedChain{table: r.Table, name: r.Chain}
			byName[id] = c
			f.chains = append(f.chains, c)
		}
		spec := slices.Clone(r.Spec)
		c.specs = append(c.specs, spec)
		c.want = append(c.want, ruleKey(append([]string{"-A", r.Chain}, spec...)))
	}
	return f
}

// Ensure makes the kernel match the rules: it creates missing chains, makes
// each owned chain contain exactly its wanted rules in order, and appends each
// missing rule of a built-in chain (never duplicating one). When everything is
// already correct it changes nothing, so a restarted daemon does not disturb
// traffic. A chain that differs is rewritten without a window in which its
// wanted rules are absent: the wanted rules are inserted first, then the old
// ones deleted. A jump into an owned chain that could not be made right is
// not added. It returns what it repaired, e.g. "nat/FLANNEL-POSTRTG: 2 rules
// missing" or "nat/POSTROUTING: jump missing"; errors are joined.
func (f *Firewall) Ensure() (repairs []string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	var errs []error
	broken := map[string]bool{}
	for _, c := range f.chains {
		repair, chainErr := f.ensureChain(c)
		if repair != "" {
			repairs = append(repairs, repair)
		}
		if chainErr != nil {
			errs = append(errs, chainErr)
			broken[c.String()] = true
		}
	}
	for _, h := range f.hooks {
		if broken[h.Table+"/"+jumpTarget(h.Spec)] {
			continue
		}
		repair, hookErr := f.ensureHook(h)
		if repair != "" {
			repairs = append(repairs, repair)
		}
		if hookErr != nil {
			errs = append(errs, hookErr)
		}
	}
	return repairs, errors.Join(errs...)
}

// Check compares the kernel with the rules without changing anything, and
// describes each difference the way Ensure would report its repair.
func (f *Firewall) Check() (problems []string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for _, c := range f.chains {
		exists, err := f.ipt.ChainExists(c.table, c.name)
		if err != nil {
			errs = append(errs, fmt.Errorf("checking chain %s: %w", c, err))
			continue
		}
		if !exists {
			problems = append(problems, fmt.Sprintf("%s: chain missing", c))
			continue
		}
		actual, err := f.listRules(c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !c.matches(actual) {
			problems = append(problems, fmt.Sprintf("%s: %s", c, describeDiff(c.reference(), actual)))
		}
	}
	for _, h := range f.hooks {
		ok, err := f.ipt.Exists(h.Table, h.Chain, h.Spec...)
		if err != nil {
			errs = append(errs, fmt.Errorf("checking rule in %s/%s: %w", h.Table, h.Chain, err))
			continue
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("%s/%s: rule missing: %s", h.Table, h.Chain, strings.Join(h.Spec, " ")))
		}
	}
	return problems, errors.Join(errs...)
}

// Run calls Ensure at once and then every interval until ctx is done,
// logging each repair and each error. A non-positive interval means 5s.
func (f *Firewall) Run(ctx context.Context, interval time.Duration) {
	keepRules(ctx, interval, f.Ensure, f.OnRestore)
}

// Status says for each rule, in the order NewFirewall got them, whether
// iptables finds it (iptables -C); it changes nothing.
func (f *Firewall) Status() ([]RuleStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var (
		out  []RuleStatus
		errs []error
	)
	for _, r := range f.rules {
		ok, err := f.ipt.Exists(r.Table, r.Chain, r.Spec...)
		if err != nil {
			errs = append(errs, fmt.Errorf("checking rule %s: %w", r, err))
			continue
		}
		out = append(out, RuleStatus{Rule: r.String(), Present: ok})
	}
	return out, errors.Join(errs...)
}

// ensureChain makes owned chain c exist with exactly its wanted rules, and
// describes what it repaired.
func (f *Firewall) ensureChain(c *ownedChain) (repair string, err error) {
	exists, err := f.ipt.ChainExists(c.table, c.name)
	if err != nil {
		return "", fmt.Errorf("checking chain %s: %w", c, err)
	}
	var actual []string
	if exists {
		if actual, err = f.listRules(c); err != nil {
			return "", err
		}
		if c.matches(actual) {
			return "", nil
		}
		repair = fmt.Sprintf("%s: %s", c, describeDiff(c.reference(), actual))
	} else {
		if err := f.ipt.NewChain(c.table, c.name); err != nil {
			return "", fmt.Errorf("creating chain %s: %w", c, err)
		}
		repair = fmt.Sprintf("%s: chain missing", c)
	}
	if err := f.rewrite(c, actual); err != nil {
		return "", err
	}
	return repair, f.verify(c)
}

// rewrite replaces the rules of c after their longest correct prefix: it
// inserts the wanted rules right after that prefix, then deletes the old
// rules, which now follow the wanted ones.
func (f *Firewall) rewrite(c *ownedChain, actual []string) error {
	keep := 0
	for keep < len(actual) && keep < len(c.want) && c.sameRule(keep, actual[keep]) {
		keep++
	}
	for i := keep; i < len(c.specs); i++ {
		if err := f.ipt.Insert(c.table, c.name, i+1, c.specs[i]...); err != nil {
			return fmt.Errorf("inserting rule %d into %s: %w", i+1, c, err)
		}
	}
	for range len(actual) - keep {
		if err := f.ipt.DeleteById(c.table, c.name, len(c.specs)+1); err != nil {
			return fmt.Errorf("deleting old rule %d of %s: %w", len(c.specs)+1, c, err)
		}
	}
	return nil
}

// verify reads c back after a rewrite. When iptables prints the rules in a
// form other than the generated one, but the chain demonstrably holds the
// wanted rules (same count, each found by iptables -C), that form is
// remembered so the next pass does not rewrite the chain again.
func (f *Firewall) verify(c *ownedChain) error {
	actual, err := f.listRules(c)
	if err != nil {
		return err
	}
	if slices.Equal(actual, c.want) {
		c.printed = nil
		return nil
	}
	if len(actual) != len(c.specs) {
		return fmt.Errorf("%s has %d rules, want %d: %w", c, len(actual), len(c.specs), errChainMismatch)
	}
	for i, spec := range c.specs {
		ok, err := f.ipt.Exists(c.table, c.name, spec...)
		if err != nil {
			return fmt.Errorf("checking rule %d of %s: %w", i+1, c, err)
		}
		if !ok {
			return fmt.Errorf("%s lacks rule %d: %w", c, i+1, errChainMismatch)
		}
	}
	c.printed = actual
	klog.V(2).InfoS("iptables prints flanneld's rules in another form; comparing against that form",
		"chain", c.String(), "rules", actual)
	return nil
}

// listRules returns the comparison keys of c's rules as iptables lists them.
func (f *Firewall) listRules(c *ownedChain) ([]string, error) {
	lines, err := f.ipt.List(c.table, c.name)
	if err != nil {
		return nil, fmt.Errorf("listing chain %s: %w", c, err)
	}
	var keys []string
	for _, line := range lines {
		if !strings.HasPrefix(line, "-A ") {
			continue // the chain's own "-N" or "-P" line
		}
		args, err := splitRuleLine(line)
		if err != nil {
			keys = append(keys, line) // matches no wanted rule, so gets rewritten
			continue
		}
		keys = append(keys, ruleKey(args))
	}
	return keys, nil
}

// ensureHook appends rule h of a built-in chain unless it already exists.
func (f *Firewall) ensureHook(h Rule) (repair string, err error) {
	where := h.Table + "/" + h.Chain
	ok, err := f.ipt.Exists(h.Table, h.Chain, h.Spec...)
	if err != nil {
		return "", fmt.Errorf("checking rule in %s: %w", where, err)
	}
	if ok {
		return "", nil
	}
	if err := f.ipt.Append(h.Table, h.Chain, h.Spec...); err != nil {
		return "", fmt.Errorf("appending rule to %s: %w", where, err)
	}
	if f.ownsChain(h.Table, jumpTarget(h.Spec)) {
		return where + ": jump missing", nil
	}
	return where + ": rule missing", nil
}

// ownsChain reports whether chain of table is one of f's owned chains.
func (f *Firewall) ownsChain(table, chain string) bool {
	return slices.ContainsFunc(f.chains, func(c *ownedChain) bool {
		return c.table == table && c.name == chain
	})
}

// matches reports whether actual is c's wanted content, in either the
// generated or the remembered printed form.
func (c *ownedChain) matches(actual []string) bool {
	return slices.Equal(actual, c.want) || (c.printed != nil && slices.Equal(actual, c.printed))
}

// reference returns the keys actual listings are compared with: the printed
// form when one was learned, else the generated one.
func (c *ownedChain) reference() []string {
	if c.printed != nil {
		return c.printed
	}
	return c.want
}

// sameRule reports whether key, listed at position i, is c's wanted rule i.
func (c *ownedChain) sameRule(i int, key string) bool {
	return key == c.want[i] || (c.printed != nil && key == c.printed[i])
}

// ruleKey is the comparison form of a rule's arguments ("-A", chain, spec):
// independent of how iptables quoted them.
func ruleKey(args []string) string { return strings.Join(args, "\x00") }

// describeDiff says how actual differs from want: rules missing, unexpected
// rules, or, when it holds the same rules, that they are out of order.
func describeDiff(want, actual []string) string {
	count := map[string]int{}
	for _, k := range actual {
		count[k]++
	}
	missing := 0
	for _, k := range want {
		if count[k] > 0 {
			count[k]--
		} else {
			missing++
		}
	}
	unexpected := 0
	for _, n := range count {
		unexpected += n
	}
	var parts []string
	if missing > 0 {
		parts = append(parts, plural(missing, "rule", "rules")+" missing")
	}
	if unexpected > 0 {
		parts = append(parts, plural(unexpected, "unexpected rule", "unexpected rules"))
	}
	if len(parts) == 0 {
		return "rules out of order"
	}
	return strings.Join(parts, ", ")
}

// plural formats n with the singular or plural noun.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
