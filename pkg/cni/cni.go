// Package cni is the flannel CNI plugin: it reads subnet.env and delegates
// to the bridge plugin (or another) with host-local IPAM over this node's
// subnet, keeping each container's delegate configuration for DEL.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
)

// Defaults of upstream's flannel plugin.
const (
	DefaultSubnetFile = "/run/flannel/subnet.env"
	DefaultDataDir    = "/var/lib/cni/flannel"
)

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.NetConf
	SubnetFile    string         `json:"subnetFile"`
	DataDir       string         `json:"dataDir"`
	Delegate      map[string]any `json:"delegate"`
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
	// RawIPAM is the ipam object as given, kept whole so that keys other
	// than type, ranges and routes pass through to the delegate.
	RawIPAM map[string]any `json:"-"`
}

// ParseNetConf parses the configuration on the plugin's stdin. The delegate
// block is checked only by DelegateConfig, at ADD: DEL and CHECK use the
// configuration saved then, so a later mistake there must not stop them.
func ParseNetConf(data []byte) (*NetConf, error) {
	n := &NetConf{SubnetFile: DefaultSubnetFile, DataDir: DefaultDataDir}
	if err := json.Unmarshal(data, n); err != nil {
		return nil, fmt.Errorf("parse flannel network configuration: %w", err)
	}
	var raw struct {
		IPAM map[string]any `json:"ipam"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse flannel network configuration: %w", err)
	}
	n.RawIPAM = raw.IPAM
	if n.Delegate == nil {
		n.Delegate = map[string]any{}
	}
	return n, nil
}

// checkDelegate rejects a delegate block that sets what flannel sets, as
// upstream's plugin does, rather than silently overriding it.
func checkDelegate(d map[string]any) error {
	if t, ok := d["type"]; ok {
		if s, isString := t.(string); !isString || s == "" {
			return fmt.Errorf("delegate.type must be a plugin name, not %v", t)
		}
	}
	if _, ok := d["name"]; ok {
		return errors.New(`the delegate block must not set "name": flannel sets it to the network's name`)
	}
	if _, ok := d["ipam"]; ok {
		return errors.New(`the delegate block must not set "ipam": flannel sets it from subnet.env (put IPAM options in the flannel entry's own "ipam")`)
	}
	return nil
}

// DelegateConfig builds the delegate plugin's configuration: the user's
// delegate keys, completed from subnet.env the way upstream's plugin does.
func DelegateConfig(n *NetConf, env SubnetEnv) (map[string]any, error) {
	if err := checkDelegate(n.Delegate); err != nil {
		return nil, err
	}
	if !env.Subnet.IsValid() && !env.IPv6Subnet.IsValid() {
		return nil, errors.New("subnet.env has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET")
	}
	d := maps.Clone(n.Delegate)
	d["name"] = n.Name
	setDefault(d, "type", "bridge")
	setDefault(d, "ipMasq", !env.IPMasq) // masquerade here only if flanneld does not
	setDefault(d, "mtu", env.MTU)
	if d["type"] == "bridge" {
		setDefault(d, "isGateway", true)
	}
	if n.CNIVersion != "" {
		d["cniVersion"] = n.CNIVersion
	}
	ipam, err := delegateIPAM(n.RawIPAM, env)
	if err != nil {
		return nil, err
	}
	d["ipam"] = ipam
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig
	}
	return d, nil
}

// delegateIPAM is the flannel entry's ipam completed from subnet.env:
// host-local unless another type is given, one range per family's subnet,
// and after the given routes one route per cluster network.
func delegateIPAM(given map[string]any, env SubnetEnv) (map[string]any, error) {
	ipam := maps.Clone(given)
	if ipam == nil {
		ipam = map[string]any{}
	}
	setDefault(ipam, "type", "host-local")
	routes, err := givenRoutes(ipam["routes"])
	if err != nil {
		return nil, err
	}
	var ranges []any
	for _, sn := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
		if sn.IsValid() {
			ranges = append(ranges, []any{map[string]any{"subnet": sn.Masked().String()}})
		}
	}
	for _, nw := range slices.Concat(env.Networks, env.IPv6Networks) {
		routes = append(routes, map[string]any{"dst": nw.String()})
	}
	ipam["ranges"] = ranges
	ipam["routes"] = routes
	delete(ipam, "subnet")
	return ipam, nil
}

// givenRoutes checks the flannel entry's ipam.routes (as upstream does, by
// reading them as CNI routes) and returns them as given, so that keys the
// CNI library does not know still reach the IPAM plugin.
func givenRoutes(v any) ([]any, error) {
	if v == nil {
		return nil, nil
	}
	routes, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("ipam.routes must be a list of routes, not %v", v)
	}
	data, err := json.Marshal(routes)
	if err != nil {
		return nil, fmt.Errorf("ipam.routes: %w", err)
	}
	var parsed []types.Route
	if err := json.Unmarshal(data, &parsed); err != nil {
		return nil, fmt.Errorf("ipam.routes: %w", err)
	}
	return slices.Clone(routes), nil
}

func setDefault(m map[string]any, key string, v any) {
	if _, ok := m[key]; !ok {
		m[key] = v
	}
}
