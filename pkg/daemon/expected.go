package daemon

import (
	"net/netip"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/subnet"
)

// What the daemon derives from its options, shared with `flanneld
// diagnose` so that both expect exactly the same thing.

// InterfaceOptions are the options of the external interface selection
// (--iface, --iface-regex, --iface-can-reach, --public-ip) for cfg. The
// options must have been validated.
func (o *Options) InterfaceOptions(cfg *subnet.Config) ip.InterfaceOptions {
	publicIP, _ := o.publicIP(o.PublicIP, true)
	publicIPv6, _ := o.publicIP(o.PublicIPv6, false)
	return ip.InterfaceOptions{
		Ifaces:     o.Iface,
		IfaceRegex: o.IfaceRegex,
		CanReach:   o.IfaceCanReach,
		PublicIP:   publicIP,
		PublicIPv6: publicIPv6,
		EnableIPv4: cfg.EnableIPv4,
		EnableIPv6: cfg.EnableIPv6,
	}
}

// FirewallRuleSets are the firewall rules the daemon keeps in place for the
// node's lease, one RuleSet per address family: IPv4 from Network and the
// lease's subnet when EnableIPv4, IPv6 from IPv6Network and the lease's IPv6
// subnet when EnableIPv6 and the lease has one. Each has the masquerade
// rules with --ip-masq and the forward rules with --iptables-forward-rules;
// there are none without either. The mode (iptables or nftables) is the
// keeper's business (network.NewRuleKeeper).
func FirewallRuleSets(o *Options, cfg *subnet.Config, lease subnet.Lease) []network.RuleSet {
	if !o.IPMasq && !o.IPTablesForwardRules {
		return nil
	}
	var sets []network.RuleSet
	add := func(clusterNetwork, nodeSubnet netip.Prefix) {
		sets = append(sets, network.RuleSet{
			FirewallConfig: network.FirewallConfig{
				Network:         clusterNetwork,
				Lease:           nodeSubnet,
				MasqFullyRandom: !o.IPMasqFullyRandomDisable,
			},
			Masq:    o.IPMasq,
			Forward: o.IPTablesForwardRules,
		})
	}
	if cfg.EnableIPv4 && cfg.Network.IsValid() && lease.Subnet.IsValid() {
		add(cfg.Network, lease.Subnet)
	}
	if cfg.EnableIPv6 && cfg.IPv6Network.IsValid() && lease.IPv6Subnet.IsValid() {
		add(cfg.IPv6Network, lease.IPv6Subnet)
	}
	return sets
}

// FirewallMode names the firewall mode of cfg: "nftables" with
// EnableNFTables, else "iptables".
func FirewallMode(cfg *subnet.Config) string {
	if cfg.EnableNFTables {
		return "nftables"
	}
	return "iptables"
}
