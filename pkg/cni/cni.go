// Package cni is the flannel CNI plugin: it reads subnet.env and delegates
// to the bridge plugin (or another) with host-local IPAM over this node's
// subnet, keeping each container's delegate configuration for DEL.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/flanneld/flanneld/subnet"
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

// ParseNetConf parses the configuration on the plugin's stdin.
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
	if t, ok := n.Delegate["type"]; ok {
		if s, isString := t.(string); !isString || s == "" {
			return nil, fmt.Errorf("delegate.type must be a plugin name, not %v", t)
		}
	}
	return n, nil
}

// ReadSubnetEnv reads subnet.env, saying what it means when it is missing.
func ReadSubnetEnv(path string) (subnet.Env, error) {
	env, err := subnet.ReadEnvFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return env, fmt.Errorf("%s does not exist: flanneld is not running on this node, or has not finished starting (check the kube-flannel pod on this node)", path)
	}
	return env, err
}

// DelegateConfig builds the delegate plugin's configuration: the user's
// delegate keys, completed from subnet.env the way upstream's plugin does.
func DelegateConfig(n *NetConf, env subnet.Env) (map[string]any, error) {
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

	ipam := maps.Clone(n.RawIPAM)
	if ipam == nil {
		ipam = map[string]any{}
	}
	setDefault(ipam, "type", "host-local")
	var ranges []any
	var routes []any
	if r, ok := ipam["routes"].([]any); ok {
		routes = r
	}
	if env.Subnet.IsValid() {
		ranges = append(ranges, []any{map[string]any{"subnet": env.Subnet.Masked().String()}})
		routes = append(routes, map[string]any{"dst": env.Network.String()})
	}
	if env.IPv6Subnet.IsValid() {
		ranges = append(ranges, []any{map[string]any{"subnet": env.IPv6Subnet.Masked().String()}})
		routes = append(routes, map[string]any{"dst": env.IPv6Network.String()})
	}
	ipam["ranges"] = ranges
	ipam["routes"] = routes
	delete(ipam, "subnet")
	d["ipam"] = ipam
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig
	}
	return d, nil
}

func setDefault(m map[string]any, key string, v any) {
	if _, ok := m[key]; !ok {
		m[key] = v
	}
}

// Delegator runs the delegate plugin; invoke's functions in production.
type Delegator interface {
	Add(ctx context.Context, plugin string, conf []byte) (types.Result, error)
	Check(ctx context.Context, plugin string, conf []byte) error
	Del(ctx context.Context, plugin string, conf []byte) error
}

// Invoke is the Delegator that execs plugins from CNI_PATH.
type Invoke struct{}

// Add implements Delegator.
func (Invoke) Add(ctx context.Context, plugin string, conf []byte) (types.Result, error) {
	return invoke.DelegateAdd(ctx, plugin, conf, nil)
}

// Check implements Delegator.
func (Invoke) Check(ctx context.Context, plugin string, conf []byte) error {
	return invoke.DelegateCheck(ctx, plugin, conf, nil)
}

// Del implements Delegator.
func (Invoke) Del(ctx context.Context, plugin string, conf []byte) error {
	return invoke.DelegateDel(ctx, plugin, conf, nil)
}

// Plugin is the flannel plugin's logic, independent of how it is invoked.
type Plugin struct {
	Delegator Delegator
}

func statePath(n *NetConf, containerID string) string {
	return filepath.Join(n.DataDir, containerID)
}

// Add delegates ADD and keeps the delegate configuration for DEL.
func (p Plugin) Add(ctx context.Context, containerID string, stdin []byte) (types.Result, string, error) {
	n, err := ParseNetConf(stdin)
	if err != nil {
		return nil, "", err
	}
	env, err := ReadSubnetEnv(n.SubnetFile)
	if err != nil {
		return nil, "", err
	}
	d, err := DelegateConfig(n, env)
	if err != nil {
		return nil, "", err
	}
	conf, err := json.Marshal(d)
	if err != nil {
		return nil, "", err
	}
	path := statePath(n, containerID)
	if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("create %s: %w", n.DataDir, err)
	}
	if err := os.WriteFile(path, conf, 0o600); err != nil {
		return nil, "", fmt.Errorf("save delegate configuration: %w", err)
	}
	plugin := d["type"].(string)
	res, err := p.Delegator.Add(ctx, plugin, conf)
	if err != nil {
		// Undo what the delegate may have done; the runtime will not call
		// DEL for a failed ADD in every case.
		_ = p.Delegator.Del(ctx, plugin, conf)
		_ = os.Remove(path)
		return nil, "", err
	}
	return res, n.CNIVersion, nil
}

// loadDelegate reads the saved delegate configuration; ok is false when
// there is none.
func loadDelegate(n *NetConf, containerID string) (conf map[string]any, ok bool, err error) {
	data, err := os.ReadFile(statePath(n, containerID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read saved delegate configuration: %w", err)
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		return nil, false, fmt.Errorf("saved delegate configuration %s: %w", statePath(n, containerID), err)
	}
	return conf, true, nil
}

// Del delegates DEL with the configuration saved at ADD. It succeeds when
// that is already gone: DEL must be idempotent.
func (p Plugin) Del(ctx context.Context, containerID string, stdin []byte) error {
	n, err := ParseNetConf(stdin)
	if err != nil {
		return err
	}
	d, ok, err := loadDelegate(n, containerID)
	if err != nil || !ok {
		return err
	}
	conf, err := json.Marshal(d)
	if err != nil {
		return err
	}
	plugin, _ := d["type"].(string)
	if err := p.Delegator.Del(ctx, plugin, conf); err != nil {
		return err
	}
	if err := os.Remove(statePath(n, containerID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Check delegates CHECK with the saved configuration and the runtime's
// prevResult.
func (p Plugin) Check(ctx context.Context, containerID string, stdin []byte) error {
	n, err := ParseNetConf(stdin)
	if err != nil {
		return err
	}
	d, ok, err := loadDelegate(n, containerID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no saved configuration for container %s: it was not added by this plugin", containerID)
	}
	var raw struct {
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return err
	}
	if len(raw.PrevResult) > 0 {
		d["prevResult"] = raw.PrevResult
	}
	conf, err := json.Marshal(d)
	if err != nil {
		return err
	}
	plugin, _ := d["type"].(string)
	return p.Delegator.Check(ctx, plugin, conf)
}
