package network

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"
)

// The firewall mode (iptables, or nftables with EnableNFTables) and the
// switch between them: the keeper of the mode in use, and the removal of
// the other mode's rules, which a node switched from one mode to the other
// still has.

// NewRuleKeeper returns the keeper of sets on this host: in nftables mode
// one NFTFirewall for every set (through nft), else one Firewall per set
// (through iptables for IPv4, ip6tables for IPv6). onRestore, if set, gets
// the repairs of every pass of Run after the first.
func NewRuleKeeper(nftMode bool, sets []RuleSet, onRestore func(repairs []string)) (RuleKeeper, error) {
	if nftMode {
		nft, err := NewNFTables()
		if err != nil {
			return nil, err
		}
		tables := make([]NFTTable, len(sets))
		for i, s := range sets {
			tables[i] = s.NFTTable()
		}
		fw := NewNFTFirewall(nft, tables)
		fw.OnRestore = onRestore
		return fw, nil
	}
	var keepers RuleKeepers
	for _, s := range sets {
		ipt, err := NewIPTables(iptablesProtocol(s.IPv6()))
		if err != nil {
			return nil, err
		}
		fw := NewFirewall(ipt, s.IPTablesRules())
		fw.OnRestore = onRestore
		keepers = append(keepers, fw)
	}
	if len(keepers) == 1 {
		return keepers[0], nil
	}
	return keepers, nil
}

// RemoveOtherModeRules removes flanneld's rules of the firewall mode not in
// use: in nftables mode (nftMode) the iptables and ip6tables rules
// (RemoveIPTablesRules), else the nftables tables (RemoveNFTTables). A tool
// that is not installed is skipped, and what does not exist is not an
// error. It returns what it removed.
func RemoveOtherModeRules(nftMode bool) ([]string, error) {
	return otherModeRules(nftMode, false)
}

// FindOtherModeRules returns what RemoveOtherModeRules would remove,
// changing nothing.
func FindOtherModeRules(nftMode bool) ([]string, error) {
	return otherModeRules(nftMode, true)
}

func otherModeRules(nftMode, dryRun bool) ([]string, error) {
	if nftMode {
		return hostIPTablesRules(dryRun)
	}
	return hostNFTTables(dryRun)
}

// hostNFTTables finds (and unless dryRun removes) flanneld's nftables
// tables on this host, when nft is installed and usable.
func hostNFTTables(dryRun bool) ([]string, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		klog.V(2).InfoS("nft is not installed: no nftables tables to remove")
		return nil, nil
	}
	nft, err := NewNFTables()
	if err != nil {
		// Without a working nft (a kernel without nf_tables, say) there
		// are no nftables tables either.
		klog.InfoS("nft is unusable: not looking for nftables tables to remove", "err", err)
		return nil, nil
	}
	return nftTables(nft, dryRun)
}

// hostIPTablesRules finds (and unless dryRun removes) flanneld's iptables
// and ip6tables rules on this host, with each tool that is installed.
func hostIPTablesRules(dryRun bool) ([]string, error) {
	var (
		found []string
		errs  []error
	)
	for _, ipv6 := range []bool{false, true} {
		proto := iptablesProtocol(ipv6)
		name := iptablesName(proto)
		if _, err := exec.LookPath(name); err != nil {
			klog.V(2).InfoS("Not installed: no rules of it to remove", "tool", name)
			continue
		}
		ipt, err := NewIPTables(proto)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f, err := iptablesRules(ipt, name, dryRun)
		found = append(found, f...)
		errs = append(errs, err)
	}
	return found, errors.Join(errs...)
}

// RemoveIPTablesRules removes flanneld's rules from ipt (named name in the
// descriptions, "iptables" or "ip6tables"): every rule in nat POSTROUTING
// and filter FORWARD that carries a flanneld comment or jumps into
// FLANNEL-POSTRTG or FLANNEL-FWD, then those two chains. It returns what
// it removed, e.g. "iptables nat/POSTROUTING: -m comment ... -j
// FLANNEL-POSTRTG", "iptables chain nat/FLANNEL-POSTRTG".
func RemoveIPTablesRules(ipt IPTables, name string) ([]string, error) {
	return iptablesRules(ipt, name, false)
}

// iptablesHooks are the built-in chains flanneld adds rules to.
var iptablesHooks = []struct{ table, chain string }{{"nat", "POSTROUTING"}, {"filter", "FORWARD"}}

// iptablesOwnedChains are the chains flanneld creates.
var iptablesOwnedChains = []struct{ table, chain string }{{"nat", MasqChain}, {"filter", ForwardChain}}

func iptablesRules(ipt IPTables, name string, dryRun bool) ([]string, error) {
	var (
		found []string
		errs  []error
	)
	for _, h := range iptablesHooks {
		lines, err := ipt.List(h.table, h.chain)
		if isIPTablesNotExist(err) {
			continue // the kernel has no such table: nothing of flanneld's in it
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: listing %s/%s: %w", name, h.table, h.chain, err))
			continue
		}
		for _, line := range lines {
			args, err := splitRuleLine(line)
			if err != nil || len(args) < 2 || args[0] != "-A" || !isFlanneldRule(args[2:]) {
				continue
			}
			spec := args[2:]
			if !dryRun {
				if err := ipt.Delete(h.table, h.chain, spec...); err != nil {
					errs = append(errs, fmt.Errorf("%s: deleting from %s/%s: %w", name, h.table, h.chain, err))
					continue
				}
			}
			found = append(found, fmt.Sprintf("%s %s/%s: %s", name, h.table, h.chain, quoteSpec(spec)))
		}
	}
	for _, c := range iptablesOwnedChains {
		exists, err := ipt.ChainExists(c.table, c.chain)
		if isIPTablesNotExist(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: checking chain %s/%s: %w", name, c.table, c.chain, err))
			continue
		}
		if !exists {
			continue
		}
		if !dryRun {
			if err := ipt.ClearAndDeleteChain(c.table, c.chain); err != nil {
				errs = append(errs, fmt.Errorf("%s: deleting chain %s/%s: %w", name, c.table, c.chain, err))
				continue
			}
		}
		found = append(found, fmt.Sprintf("%s chain %s/%s", name, c.table, c.chain))
	}
	return found, errors.Join(errs...)
}

// isIPTablesNotExist reports whether err says that a table or chain does
// not exist (e.g. iptables-legacy on a kernel without the nat table).
func isIPTablesNotExist(err error) bool {
	var e *iptables.Error
	return errors.As(err, &e) && e.IsNotExist()
}

// isFlanneldRule reports whether a rule spec is flanneld's: it carries one
// of flanneld's comments or jumps into one of its chains.
func isFlanneldRule(spec []string) bool {
	switch jumpTarget(spec) {
	case MasqChain, ForwardChain:
		return true
	}
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "--comment" && (spec[i+1] == masqComment || spec[i+1] == forwardComment) {
			return true
		}
	}
	return false
}

// nftOwnedTables are the tables flanneld owns in nftables mode.
var nftOwnedTables = []NFTTable{
	{Family: knftables.IPv4Family, Name: NFTTableIPv4},
	{Family: knftables.IPv6Family, Name: NFTTableIPv6},
}

// RemoveNFTTables deletes the tables ip flannel-ipv4 and ip6 flannel-ipv6,
// those that exist, in one transaction, and returns what it removed, e.g.
// "nftables table ip flannel-ipv4".
func RemoveNFTTables(nft NFTables) ([]string, error) {
	return nftTables(nft, false)
}

func nftTables(nft NFTables, dryRun bool) (found []string, err error) {
	tx := nft.NewTransaction()
	err = nftPass(nft, nftOwnedTables, func(t NFTTable, have *NFTTableState) {
		if have == nil {
			return
		}
		found = append(found, "nftables table "+t.String())
		// Adding first makes the deletion succeed even if someone else
		// deleted the table meanwhile.
		tx.Add(&knftables.Table{Family: t.Family, Name: t.Name})
		tx.Delete(&knftables.Table{Family: t.Family, Name: t.Name})
	}, func(ctx context.Context) error {
		if dryRun || tx.NumOperations() == 0 {
			return nil
		}
		if err := nft.Run(ctx, tx); err != nil {
			found = nil
			return fmt.Errorf("deleting tables: %w", err)
		}
		return nil
	})
	return found, err
}

// iptablesProtocol is the iptables protocol of an address family.
func iptablesProtocol(ipv6 bool) iptables.Protocol {
	if ipv6 {
		return iptables.ProtocolIPv6
	}
	return iptables.ProtocolIPv4
}

// iptablesName is the command of proto: iptables or ip6tables.
func iptablesName(proto iptables.Protocol) string {
	if proto == iptables.ProtocolIPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// quoteSpec renders a rule spec as iptables-save does.
func quoteSpec(spec []string) string {
	parts := make([]string, len(spec))
	for i, arg := range spec {
		parts[i] = quoteRuleArg(arg)
	}
	return strings.Join(parts, " ")
}
