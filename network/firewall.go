package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// This file holds flanneld's firewall rules as data: pure functions that turn
// the cluster network and the node's lease into iptables rules, and the text
// helpers that render and parse iptables-save style lines. Applying the rules
// is the job of a RuleKeeper: Firewall (iptables, firewall_iptables.go) or
// NFTFirewall (nftables, firewall_nftables.go).

// RuleKeeper keeps flanneld's firewall rules in place in one mode: the
// iptables Firewall (one per address family, joined with RuleKeepers) or
// the nftables NFTFirewall (every family in one transaction). The daemon
// and `flanneld diagnose` use either through this interface.
type RuleKeeper interface {
	// Ensure makes the kernel match the rules, changing nothing when it
	// already does, and describes what it repaired.
	Ensure() (repairs []string, err error)
	// Check compares the kernel with the rules without changing anything,
	// and describes each difference the way Ensure would report its repair.
	Check() (problems []string, err error)
	// Status says for each wanted rule, in order, whether the kernel has
	// it, without changing anything.
	Status() ([]RuleStatus, error)
	// Run calls Ensure at once and then every interval until ctx is done,
	// logging each repair and each error.
	Run(ctx context.Context, interval time.Duration)
}

// RuleStatus is one wanted rule, as the keeper's mode writes it (an
// iptables-save line, or an nft rule with its table and chain), and whether
// the kernel has it.
type RuleStatus struct {
	Rule    string
	Present bool
}

// RuleKeepers keeps the rules of several keepers as one, e.g. the iptables
// and the ip6tables rules of a dual-stack node.
type RuleKeepers []RuleKeeper

// Ensure runs every keeper's Ensure and joins their repairs and errors.
func (ks RuleKeepers) Ensure() ([]string, error) {
	return ks.each(RuleKeeper.Ensure)
}

// Check runs every keeper's Check and joins their problems and errors.
func (ks RuleKeepers) Check() ([]string, error) {
	return ks.each(RuleKeeper.Check)
}

// Status joins the keepers' rule statuses, in order.
func (ks RuleKeepers) Status() ([]RuleStatus, error) {
	var (
		all  []RuleStatus
		errs []error
	)
	for _, k := range ks {
		st, err := k.Status()
		all = append(all, st...)
		errs = append(errs, err)
	}
	return all, errors.Join(errs...)
}

// Run runs every keeper's loop until ctx is done.
func (ks RuleKeepers) Run(ctx context.Context, interval time.Duration) {
	var wg sync.WaitGroup
	for _, k := range ks {
		wg.Go(func() { k.Run(ctx, interval) })
	}
	wg.Wait()
}

func (ks RuleKeepers) each(fn func(RuleKeeper) ([]string, error)) ([]string, error) {
	var (
		all  []string
		errs []error
	)
	for _, k := range ks {
		out, err := fn(k)
		all = append(all, out...)
		errs = append(errs, err)
	}
	return all, errors.Join(errs...)
}

// keepRules is the loop of a RuleKeeper's Run: ensure calls Ensure, at once
// and then every interval (5s when not positive) until ctx is done. Repairs
// of the first pass are the initial installation; those of later passes are
// restorations, also handed to onRestore when it is set.
func keepRules(ctx context.Context, interval time.Duration, ensure func() ([]string, error), onRestore func([]string)) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for first := true; ; first = false {
		start := time.Now()
		repairs, err := ensure()
		msg := "Restored firewall rules"
		if first {
			msg = "Installed firewall rules"
		}
		for _, r := range repairs {
			klog.InfoS(msg, "repair", r)
		}
		if !first && len(repairs) > 0 && onRestore != nil {
			onRestore(repairs)
		}
		if err != nil {
			klog.ErrorS(err, "Failed to ensure firewall rules")
		}
		klog.V(2).InfoS("Checked firewall rules", "duration", time.Since(start), "repairs", len(repairs))
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// RuleSet is what flanneld keeps in the firewall for one address family:
// the masquerade rules (--ip-masq) and the forward accept rules
// (--iptables-forward-rules) of the cluster network and this node's lease.
// IPTablesRules renders it for iptables (ip6tables for IPv6), NFTTable for
// nftables; both modes give the rules the same meaning.
type RuleSet struct {
	FirewallConfig
	// Masq selects the masquerade rules, Forward the forward accept rules.
	Masq, Forward bool
}

// IPv6 reports whether s is for IPv6 (ip6tables, the ip6 nftables table).
func (s RuleSet) IPv6() bool { return s.Network.IsValid() && !s.Network.Addr().Is4() }

// IPTablesRules returns s as iptables rules: MasqRules, then ForwardRules.
func (s RuleSet) IPTablesRules() []Rule {
	var rules []Rule
	if s.Masq {
		rules = append(rules, MasqRules(s.FirewallConfig)...)
	}
	if s.Forward {
		rules = append(rules, ForwardRules(s.Network)...)
	}
	return rules
}

// Chains flanneld owns. The built-in POSTROUTING and FORWARD chains only get
// one jump rule each into these.
const (
	// MasqChain (table nat) holds the masquerade rules.
	MasqChain = "FLANNEL-POSTRTG"
	// ForwardChain (table filter) holds the forward accept rules.
	ForwardChain = "FLANNEL-FWD"
)

// Comments on every rule flanneld installs, as upstream flannel writes them,
// so operators' tooling that greps for them keeps working.
const (
	masqComment    = "flanneld masq"
	forwardComment = "flanneld forward"
)

// kubeProxyMasqMark is the fwmark kube-proxy sets on packets it masquerades
// itself; flanneld leaves those alone.
const kubeProxyMasqMark = "0x4000/0x4000"

// Multicast destinations never masqueraded, per address family.
var (
	multicastIPv4 = netip.MustParsePrefix("224.0.0.0/4")
	multicastIPv6 = netip.MustParsePrefix("ff00::/8")
)

// Rule is one iptables rule: table, chain and the rule spec as iptables
// arguments (without -A/-I CHAIN).
type Rule struct {
	Table, Chain string
	Spec         []string
}

// String renders r as an iptables-save style line with its table,
// e.g. `-t nat -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString("-t ")
	b.WriteString(r.Table)
	b.WriteString(" -A ")
	b.WriteString(r.Chain)
	for _, arg := range r.Spec {
		b.WriteByte(' ')
		b.WriteString(quoteRuleArg(arg))
	}
	return b.String()
}

// FirewallConfig is what the rules depend on.
type FirewallConfig struct {
	// Network is the cluster Network (FLANNEL_NETWORK).
	Network netip.Prefix
	// Lease is this node's subnet.
	Lease netip.Prefix
	// MasqFullyRandom adds --random-fully to the MASQUERADE rules; it is
	// false with --ip-masq-fully-random-disable.
	MasqFullyRandom bool
}

// Validate reports whether c can produce meaningful rules: both prefixes
// valid, of the same address family, and the lease inside the network.
func (c FirewallConfig) Validate() error {
	switch {
	case !c.Network.IsValid():
		return errors.New("firewall: network is not a valid prefix")
	case !c.Lease.IsValid():
		return errors.New("firewall: lease is not a valid prefix")
	case c.Network.Addr().Is4() != c.Lease.Addr().Is4():
		return fmt.Errorf("firewall: network %s and lease %s are of different address families", c.Network, c.Lease)
	case c.Lease.Bits() < c.Network.Bits() || !c.Network.Contains(c.Lease.Addr()):
		return fmt.Errorf("firewall: lease %s is not inside network %s", c.Lease, c.Network)
	}
	return nil
}

// MasqRules returns the masquerade rules for --ip-masq: the jump from nat
// POSTROUTING into MasqChain, then MasqChain's rules in order. Traffic
// kube-proxy already marked, and traffic within the cluster network, is left
// alone; traffic from pods to the outside (except multicast) and traffic from
// outside into the cluster network that is not for this node's pods is
// masqueraded. The prefixes are masked, and IPv6 prefixes get the IPv6
// multicast range, so the same function serves both families (use it with
// ip6tables for IPv6). The caller is expected to have validated c.
func MasqRules(c FirewallConfig) []Rule {
	network := c.Network.Masked().String()
	lease := c.Lease.Masked().String()
	multicast := multicastFor(c.Network).String()

	masquerade := []string{"-j", "MASQUERADE"}
	if c.MasqFullyRandom {
		masquerade = append(masquerade, "--random-fully")
	}
	accept := []string{"-j", "RETURN"}
	rule := func(chain string, match, target []string) Rule {
		return commentedRule("nat", chain, masqComment, match, target)
	}
	return []Rule{
		rule("POSTROUTING", nil, []string{"-j", MasqChain}),
		rule(MasqChain, []string{"-m", "mark", "--mark", kubeProxyMasqMark}, accept),
		rule(MasqChain, []string{"-s", lease, "-d", network}, accept),
		rule(MasqChain, []string{"-s", network, "-d", lease}, accept),
		rule(MasqChain, []string{"!", "-s", network, "-d", lease}, accept),
		rule(MasqChain, []string{"-s", network, "!", "-d", multicast}, masquerade),
		rule(MasqChain, []string{"!", "-s", network, "-d", network}, masquerade),
	}
}

// ForwardRules returns the forward accept rules for --iptables-forward-rules:
// the jump from filter FORWARD into ForwardChain, then ForwardChain's rules,
// which accept everything from and to the cluster network.
func ForwardRules(network netip.Prefix) []Rule {
	n := network.Masked().String()
	rule := func(chain string, match, target []string) Rule {
		return commentedRule("filter", chain, forwardComment, match, target)
	}
	return []Rule{
		rule("FORWARD", nil, []string{"-j", ForwardChain}),
		rule(ForwardChain, []string{"-s", n}, []string{"-j", "ACCEPT"}),
		rule(ForwardChain, []string{"-d", n}, []string{"-j", "ACCEPT"}),
	}
}

// Render prints rules as iptables-save style lines ("-t nat -A CHAIN ..."),
// one per line, each ending in a newline; for golden tests and logs.
func Render(rules []Rule) string {
	var b strings.Builder
	for _, r := range rules {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// commentedRule builds a rule whose spec is match, then the comment match,
// then target: the order iptables itself prints the arguments in.
func commentedRule(table, chain, comment string, match, target []string) Rule {
	spec := make([]string, 0, len(match)+4+len(target))
	spec = append(spec, match...)
	spec = append(spec, "-m", "comment", "--comment", comment)
	spec = append(spec, target...)
	return Rule{Table: table, Chain: chain, Spec: spec}
}

// multicastFor returns the multicast range of p's address family.
func multicastFor(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4() {
		return multicastIPv4
	}
	return multicastIPv6
}

// jumpTarget returns the argument of spec's -j option, or "".
func jumpTarget(spec []string) string {
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "-j" {
			return spec[i+1]
		}
	}
	return ""
}

// quoteRuleArg quotes an argument the way iptables-save does: arguments with
// white space or quoting characters are wrapped in double quotes, with
// backslashes and double quotes escaped.
func quoteRuleArg(arg string) string {
	if arg != "" && !strings.ContainsAny(arg, " \t\n\"'\\") {
		return arg
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(arg) + `"`
}

// splitRuleLine splits an iptables-save style line into its arguments,
// undoing quoteRuleArg: double quotes group, a backslash escapes the next
// character. It fails on an unterminated quote or a trailing backslash.
func splitRuleLine(line string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inArg   bool // cur holds an argument, possibly an empty quoted one
		quoted  bool
		escaped bool
	)
	for _, ch := range line {
		switch {
		case escaped:
			cur.WriteRune(ch)
			escaped = false
		case ch == '\\':
			escaped, inArg = true, true
		case ch == '"':
			quoted, inArg = !quoted, true
		case !quoted && (ch == ' ' || ch == '\t' || ch == '\n'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(ch)
			inArg = true
		}
	}
	if quoted || escaped {
		return nil, fmt.Errorf("unterminated quote or escape in rule %q", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}
