package daemon

import (
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

// FirewallRules are the iptables rules the daemon keeps in place for the
// node's lease: the masquerade rules with --ip-masq, the forward rules with
// --iptables-forward-rules; none without either.
func FirewallRules(o *Options, cfg *subnet.Config, lease subnet.Lease) []network.Rule {
	var rules []network.Rule
	if o.IPMasq {
		rules = append(rules, network.MasqRules(network.FirewallConfig{
			Network:         cfg.Network,
			Lease:           lease.Subnet,
			MasqFullyRandom: !o.IPMasqFullyRandomDisable,
		})...)
	}
	if o.IPTablesForwardRules {
		rules = append(rules, network.ForwardRules(cfg.Network)...)
	}
	return rules
}
