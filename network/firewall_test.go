package network

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fwReferenceConfig is the example of REFERENCE.md section 6.
var fwReferenceConfig = FirewallConfig{
	Network:         netip.MustParsePrefix("10.244.0.0/16"),
	Lease:           netip.MustParsePrefix("10.244.1.0/24"),
	MasqFullyRandom: true,
}

// fwReferenceIPv6Config is the IPv6 counterpart used by the golden tests.
var fwReferenceIPv6Config = FirewallConfig{
	Network:         netip.MustParsePrefix("fd00:10:244::/56"),
	Lease:           netip.MustParsePrefix("fd00:10:244:1::/64"),
	MasqFullyRandom: true,
}

// fwAllRules returns the masquerade and forward rules of c, in the order of
// REFERENCE.md section 6.
func fwAllRules(c FirewallConfig) []Rule {
	return append(MasqRules(c), ForwardRules(c.Network)...)
}

// fwReadGolden returns the content of testdata/name.
func fwReadGolden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fwDiffLines reports the first differing line of two multi-line texts.
func fwDiffLines(t *testing.T, got, want string) {
	t.Helper()
	if got == want {
		return
	}
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			t.Errorf("line %d differs:\n got: %q\nwant: %q", i+1, gl, wl)
		}
	}
}

func TestRulesGolden(t *testing.T) {
	noRandom := fwReferenceConfig
	noRandom.MasqFullyRandom = false
	unmasked := fwReferenceConfig
	unmasked.Network = netip.MustParsePrefix("10.244.3.7/16")
	unmasked.Lease = netip.MustParsePrefix("10.244.1.1/24") // FLANNEL_SUBNET form

	tests := []struct {
		name   string
		config FirewallConfig
		golden string
	}{
		{"reference ipv4", fwReferenceConfig, "firewall_ipv4.golden"},
		{"unmasked prefixes", unmasked, "firewall_ipv4.golden"},
		{"fully random disabled", noRandom, "firewall_ipv4_no_random_fully.golden"},
		{"ipv6", fwReferenceIPv6Config, "firewall_ipv6.golden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.config.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			fwDiffLines(t, Render(fwAllRules(tt.config)), fwReadGolden(t, tt.golden))
		})
	}
}

func TestRulesShape(t *testing.T) {
	masq := MasqRules(fwReferenceConfig)
	if len(masq) != 7 || masq[0].Chain != "POSTROUTING" || jumpTarget(masq[0].Spec) != MasqChain {
		t.Fatalf("MasqRules must start with the POSTROUTING jump, got %v", masq)
	}
	for _, r := range masq {
		if r.Table != "nat" {
			t.Errorf("masquerade rule in table %q: %v", r.Table, r)
		}
	}
	fwd := ForwardRules(fwReferenceConfig.Network)
	if len(fwd) != 3 || fwd[0].Chain != "FORWARD" || jumpTarget(fwd[0].Spec) != ForwardChain {
		t.Fatalf("ForwardRules must start with the FORWARD jump, got %v", fwd)
	}
	// The generated specs are fresh slices: changing one must not leak.
	masq[1].Spec[0] = "changed"
	if again := MasqRules(fwReferenceConfig); again[1].Spec[0] != "-m" {
		t.Errorf("rule specs share memory between calls")
	}
}

func TestFirewallConfigValidate(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		name    string
		config  FirewallConfig
		wantErr string
	}{
		{"ok", fwReferenceConfig, ""},
		{"ok ipv6", fwReferenceIPv6Config, ""},
		{"no network", FirewallConfig{Lease: p("10.244.1.0/24")}, "network is not a valid prefix"},
		{"no lease", FirewallConfig{Network: p("10.244.0.0/16")}, "lease is not a valid prefix"},
		{"mixed families", FirewallConfig{Network: p("10.244.0.0/16"), Lease: p("fd00::/64")}, "different address families"},
		{"lease outside", FirewallConfig{Network: p("10.244.0.0/16"), Lease: p("10.245.1.0/24")}, "not inside"},
		{"lease larger", FirewallConfig{Network: p("10.244.0.0/16"), Lease: p("10.0.0.0/8")}, "not inside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.config.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRenderQuoting(t *testing.T) {
	r := Rule{Table: "filter", Chain: "X", Spec: []string{"-m", "comment", "--comment", `a "b" c\d`, "--comment", "", "-j", "ACCEPT"}}
	want := `-t filter -A X -m comment --comment "a \"b\" c\\d" --comment "" -j ACCEPT` + "\n"
	if got := Render([]Rule{r}); got != want {
		t.Errorf("Render:\n got %s\nwant %s", got, want)
	}
}

func TestSplitRuleLine(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{`-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT`,
			[]string{"-A", "FLANNEL-FWD", "-s", "10.244.0.0/16", "-m", "comment", "--comment", "flanneld forward", "-j", "ACCEPT"}},
		{`-A X -m comment --comment flannel -j RETURN`, []string{"-A", "X", "-m", "comment", "--comment", "flannel", "-j", "RETURN"}},
		{`-A X --comment "a \"b\" c\\d"  --comment ""`, []string{"-A", "X", "--comment", `a "b" c\d`, "--comment", ""}},
		{"  -A\tX  ", []string{"-A", "X"}},
	}
	for _, tt := range tests {
		got, err := splitRuleLine(tt.line)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("splitRuleLine(%q) = %q, %v; want %q", tt.line, got, err, tt.want)
		}
	}
	for _, bad := range []string{`-A X --comment "open`, `-A X \`} {
		if _, err := splitRuleLine(bad); err == nil {
			t.Errorf("splitRuleLine(%q) succeeded, want an error", bad)
		}
	}
}

// TestRenderSplitRoundTrip checks that every generated rule survives being
// rendered and parsed back, which is how Firewall compares chain contents.
func TestRenderSplitRoundTrip(t *testing.T) {
	for _, r := range fwAllRules(fwReferenceIPv6Config) {
		args, err := splitRuleLine(r.String())
		if err != nil {
			t.Fatal(err)
		}
		want := append([]string{"-t", r.Table, "-A", r.Chain}, r.Spec...)
		if !slices.Equal(args, want) {
			t.Errorf("round trip of %v gave %q", r, args)
		}
	}
}

func TestDescribeDiff(t *testing.T) {
	tests := []struct {
		want, actual []string
		desc         string
	}{
		{[]string{"a", "b", "c"}, []string{"a", "c"}, "1 rule missing"},
		{[]string{"a", "b", "c"}, nil, "3 rules missing"},
		{[]string{"a", "b"}, []string{"a", "x", "b", "y"}, "2 unexpected rules"},
		{[]string{"a", "b"}, []string{"a", "b", "b"}, "1 unexpected rule"},
		{[]string{"a", "b"}, []string{"a", "x"}, "1 rule missing, 1 unexpected rule"},
		{[]string{"a", "b"}, []string{"b", "a"}, "rules out of order"},
	}
	for _, tt := range tests {
		if got := describeDiff(tt.want, tt.actual); got != tt.desc {
			t.Errorf("describeDiff(%q, %q) = %q, want %q", tt.want, tt.actual, got, tt.desc)
		}
	}
}

// The fake below serves the Firewall tests in firewall_iptables_test.go.

// fakeIPTables is an in-memory IPTables with the nat and filter tables and
// their built-in chains. It records every mutating call, behaves like
// iptables where the firewall depends on it (creating an existing chain,
// appending to or jumping into a missing chain, positions out of range all
// fail), and can inject errors and another listing format.
type fakeIPTables struct {
	mu     sync.Mutex
	tables map[string]*fakeTable
	// mutations records each mutating call as "Method table chain ...".
	mutations []string
	// format renders a rule's spec for List; fakeFormat when nil.
	format func(spec []string) string
	// fail makes the calls whose "Method table chain" starts with a key
	// return the key's error.
	fail map[string]error
	// swallow, when set, makes Insert and Append of the specs it selects
	// succeed without adding the rule.
	swallow func(spec []string) bool
}

type fakeTable struct {
	chains []string // in creation order, built-in chains first
	rules  map[string][][]string
}

func newFakeIPTables() *fakeIPTables {
	f := &fakeIPTables{tables: map[string]*fakeTable{}, fail: map[string]error{}}
	builtin := map[string][]string{
		"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
		"filter": {"INPUT", "FORWARD", "OUTPUT"},
	}
	for name, chains := range builtin {
		f.tables[name] = &fakeTable{chains: chains, rules: map[string][][]string{}}
		for _, c := range chains {
			f.tables[name].rules[c] = nil
		}
	}
	return f
}

// fakeFormat prints a spec the way iptables -S does for flanneld's rules.
func fakeFormat(spec []string) string {
	out := make([]string, len(spec))
	for i, a := range spec {
		if strings.Contains(a, " ") {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// fakeTargets are the non-chain targets the fake accepts.
var fakeTargets = map[string]bool{"ACCEPT": true, "DROP": true, "RETURN": true, "MASQUERADE": true}

// check returns the injected error for a call, if any.
func (f *fakeIPTables) check(method, table, chain string) error {
	call := method + " " + table + " " + chain
	for prefix, err := range f.fail {
		if strings.HasPrefix(call, prefix) {
			return fmt.Errorf("fake %s: %w", call, err)
		}
	}
	return nil
}

// lookup returns the rules of table/chain for a call of method, failing
// with an injected error or when the chain does not exist.
func (f *fakeIPTables) lookup(method, table, chain string) ([][]string, error) {
	if err := f.check(method, table, chain); err != nil {
		return nil, err
	}
	if t, ok := f.tables[table]; ok {
		if rules, ok := t.rules[chain]; ok {
			return rules, nil
		}
	}
	return nil, fmt.Errorf("fake: no chain %s/%s", table, chain)
}

// mutate records a mutating call and validates its rule spec.
func (f *fakeIPTables) mutate(method, table, chain string, spec []string, extra ...string) error {
	f.mutations = append(f.mutations, strings.Join(append(append([]string{method, table, chain}, extra...), spec...), " "))
	if _, err := f.lookup(method, table, chain); err != nil {
		return err
	}
	if target := jumpTarget(spec); target != "" && !fakeTargets[target] {
		if _, err := f.lookup(method, table, target); err != nil {
			return fmt.Errorf("fake: jump target: %w", err)
		}
	}
	return nil
}

func (f *fakeIPTables) ChainExists(table, chain string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("ChainExists", table, chain); err != nil {
		return false, err
	}
	_, err := f.lookup("ChainExists", table, chain)
	return err == nil, nil
}

func (f *fakeIPTables) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mutations = append(f.mutations, "NewChain "+table+" "+chain)
	if err := f.check("NewChain", table, chain); err != nil {
		return err
	}
	t := f.tables[table]
	if _, ok := t.rules[chain]; ok {
		return fmt.Errorf("fake: chain %s/%s already exists", table, chain)
	}
	t.chains = append(t.chains, chain)
	t.rules[chain] = nil
	return nil
}

func (f *fakeIPTables) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.lookup("List", table, chain)
	if err != nil {
		return nil, err
	}
	format := f.format
	if format == nil {
		format = fakeFormat
	}
	lines := []string{"-N " + chain}
	if builtinChains[chain] {
		lines[0] = "-P " + chain + " ACCEPT"
	}
	for _, r := range rules {
		lines = append(lines, "-A "+chain+" "+format(r))
	}
	return lines, nil
}

func (f *fakeIPTables) Exists(table, chain string, spec ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.lookup("Exists", table, chain)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(rules, func(r []string) bool { return slices.Equal(r, spec) }), nil
}

func (f *fakeIPTables) Append(table, chain string, spec ...string) error {
	return f.insert(table, chain, 0, spec)
}

func (f *fakeIPTables) Insert(table, chain string, pos int, spec ...string) error {
	if pos < 1 {
		return fmt.Errorf("fake: insert position %d out of range in %s/%s", pos, table, chain)
	}
	return f.insert(table, chain, pos, spec)
}

// insert adds spec at 1-based position pos of chain, or appends it for 0.
func (f *fakeIPTables) insert(table, chain string, pos int, spec []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	method, extra := "Append", []string(nil)
	if pos != 0 {
		method, extra = "Insert", []string{fmt.Sprint(pos)}
	}
	if err := f.mutate(method, table, chain, spec, extra...); err != nil {
		return err
	}
	rules := f.tables[table].rules[chain]
	if pos == 0 {
		pos = len(rules) + 1
	}
	if pos > len(rules)+1 {
		return fmt.Errorf("fake: insert position %d out of range in %s/%s", pos, table, chain)
	}
	if f.swallow == nil || !f.swallow(spec) {
		f.tables[table].rules[chain] = slices.Insert(rules, pos-1, slices.Clone(spec))
	}
	return nil
}

func (f *fakeIPTables) DeleteById(table, chain string, id int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.mutate("DeleteById", table, chain, nil, fmt.Sprint(id)); err != nil {
		return err
	}
	rules := f.tables[table].rules[chain]
	if id < 1 || id > len(rules) {
		return fmt.Errorf("fake: rule %d out of range in %s/%s", id, table, chain)
	}
	f.tables[table].rules[chain] = slices.Delete(rules, id-1, id)
	return nil
}

func (f *fakeIPTables) Delete(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mutations = append(f.mutations, strings.Join(append([]string{"Delete", table, chain}, spec...), " "))
	rules, err := f.lookup("Delete", table, chain)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(rules, func(r []string) bool { return slices.Equal(r, spec) })
	if i < 0 {
		return fmt.Errorf("fake: no such rule in %s/%s", table, chain)
	}
	f.tables[table].rules[chain] = slices.Delete(rules, i, i+1)
	return nil
}

func (f *fakeIPTables) ClearAndDeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("ClearAndDeleteChain", table, chain); err != nil {
		return err
	}
	t := f.tables[table]
	if _, ok := t.rules[chain]; !ok {
		return nil
	}
	f.mutations = append(f.mutations, "ClearAndDeleteChain "+table+" "+chain)
	for name, rules := range t.rules {
		for _, r := range rules {
			if name != chain && jumpTarget(r) == chain {
				return fmt.Errorf("fake: chain %s/%s is still jumped to from %s", table, chain, name)
			}
		}
	}
	delete(t.rules, chain)
	t.chains = slices.DeleteFunc(t.chains, func(c string) bool { return c == chain })
	return nil
}

// dump renders all rules of nat, then filter, like iptables-save would list
// them, in the format of Render.
func (f *fakeIPTables) dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, name := range []string{"nat", "filter"} {
		t := f.tables[name]
		for _, c := range t.chains {
			for _, r := range t.rules[c] {
				fmt.Fprintf(&b, "-t %s -A %s %s\n", name, c, fakeFormat(r))
			}
		}
	}
	return b.String()
}

// edit changes the fake's state directly, as another agent would, without
// recording mutations.
func (f *fakeIPTables) edit(fn func(tables map[string]*fakeTable)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.tables)
}

// takeMutations returns and forgets the recorded mutating calls.
func (f *fakeIPTables) takeMutations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.mutations
	f.mutations = nil
	return m
}
