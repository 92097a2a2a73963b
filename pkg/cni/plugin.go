package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
)

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
	// Log receives what the plugin reports without failing (the runtime
	// keeps the plugin's stderr in its log); nil means os.Stderr.
	Log io.Writer
	// Sync flushes a file to disk; nil means (*os.File).Sync (tests
	// simulate a failing disk).
	Sync func(*os.File) error
}

func (p Plugin) logf(format string, args ...any) {
	w := p.Log
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "flannel: "+format+"\n", args...)
}

// Add delegates ADD and keeps the delegate configuration for DEL.
func (p Plugin) Add(ctx context.Context, containerID string, stdin []byte) (types.Result, string, error) {
	n, err := ParseNetConf(stdin)
	if err != nil {
		return nil, "", err
	}
	path, err := statePath(n, containerID)
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
	sync := p.Sync
	if sync == nil {
		sync = (*os.File).Sync
	}
	if err := saveDelegate(path, conf, sync); err != nil {
		return nil, "", fmt.Errorf("save delegate configuration: %w", err)
	}
	plugin := d["type"].(string)
	res, err := p.Delegator.Add(ctx, plugin, conf)
	if err != nil {
		// Undo what the delegate may have done; the runtime does not call
		// DEL for a failed ADD in every case. When that fails too, keep the
		// saved configuration so that the runtime's DEL can retry it.
		if delErr := p.Delegator.Del(ctx, plugin, conf); delErr == nil {
			_ = removeState(path)
		}
		return nil, "", err
	}
	return res, n.CNIVersion, nil
}

// Del delegates DEL with the configuration saved at ADD, and forgets it
// only once the delegate succeeded, so that a retried DEL reaches the
// delegate again. It succeeds when there is nothing saved (DEL must be
// idempotent) and, after saying so, when what is saved cannot be used: no
// retry would change that, and failing would leave the pod stuck.
func (p Plugin) Del(ctx context.Context, containerID string, stdin []byte) error {
	path, s, err := loadState(containerID, stdin)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.Is(err, errUnusable):
		p.logf("DEL of container %s: %v; tearing down without the delegate, whose address reservation may be left behind", containerID, err)
		if err := removeState(path); err != nil {
			p.logf("DEL of container %s: %v", containerID, err)
		}
		return nil
	case err != nil:
		return err
	}
	if err := p.Delegator.Del(ctx, s.plugin, s.raw); err != nil {
		return err
	}
	return removeState(path)
}

// loadState reads the delegate configuration saved for containerID by the
// network configuration stdin, and says where it is kept.
func loadState(containerID string, stdin []byte) (string, *savedDelegate, error) {
	n, err := ParseNetConf(stdin)
	if err != nil {
		return "", nil, err
	}
	path, err := statePath(n, containerID)
	if err != nil {
		return "", nil, err
	}
	s, err := loadDelegate(path)
	return path, s, err
}

// Check delegates CHECK with the saved configuration and the runtime's
// prevResult.
func (p Plugin) Check(ctx context.Context, containerID string, stdin []byte) error {
	_, s, err := loadState(containerID, stdin)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no saved configuration for container %s: it was not added by this plugin", containerID)
	}
	if err != nil {
		return err
	}
	var raw struct {
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return err
	}
	if len(raw.PrevResult) > 0 {
		s.conf["prevResult"] = raw.PrevResult
	}
	conf, err := json.Marshal(s.conf)
	if err != nil {
		return err
	}
	return p.Delegator.Check(ctx, s.plugin, conf)
}
