package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/flanneld/flanneld/subnet"
)

// maxSavedConf bounds what is read back from dataDir; a delegate
// configuration is a few hundred bytes.
const maxSavedConf = 1 << 20

// errUnusable marks a saved delegate configuration that exists but cannot
// be used: empty or cut short (a crash during ADD before saves were atomic),
// not JSON, without a plugin type, or not a regular file. No retry will
// make it usable.
var errUnusable = errors.New("unusable saved delegate configuration")

// statePath is where the delegate configuration of containerID is kept.
func statePath(n *NetConf, containerID string) (string, error) {
	if containerID == "" || containerID == "." || containerID == ".." || strings.ContainsAny(containerID, "/\x00") {
		return "", fmt.Errorf("invalid container ID %q", containerID)
	}
	return filepath.Join(n.DataDir, containerID), nil
}

// saveDelegate stores conf at path (mode 0600, in a directory of mode
// 0700) with subnet.WriteFileAtomic: a crash leaves the old file or the new
// one, never a part, and nothing planted at path is written through. sync
// is (*os.File).Sync, or a test's stand-in for a failing disk.
func saveDelegate(path string, conf []byte, sync func(*os.File) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return subnet.WriteFileAtomic(path, conf, 0o600, sync)
}

// savedDelegate is a delegate configuration read back from dataDir.
type savedDelegate struct {
	raw    []byte         // as saved, passed to DEL unchanged
	conf   map[string]any // decoded
	plugin string         // its "type"
}

// loadDelegate reads the configuration saved at path without following a
// symlink there. The error wraps fs.ErrNotExist when there is none and
// errUnusable when what is there cannot be used; other errors (permission,
// I/O) may go away on a retry.
func loadDelegate(path string) (*savedDelegate, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w %s: it is a symbolic link", errUnusable, path)
	}
	if err != nil {
		return nil, fmt.Errorf("read saved delegate configuration: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("read saved delegate configuration: %w", err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w %s: it is not a regular file (%s)", errUnusable, path, fi.Mode().Type())
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxSavedConf+1))
	if err != nil {
		return nil, fmt.Errorf("read saved delegate configuration: %w", err)
	}
	s := &savedDelegate{raw: raw}
	switch {
	case len(raw) == 0:
		return nil, fmt.Errorf("%w %s: it is empty", errUnusable, path)
	case len(raw) > maxSavedConf:
		return nil, fmt.Errorf("%w %s: it is larger than %d bytes", errUnusable, path, maxSavedConf)
	}
	if err := json.Unmarshal(raw, &s.conf); err != nil {
		return nil, fmt.Errorf("%w %s: %v", errUnusable, path, err)
	}
	if t, ok := s.conf["type"].(string); ok && t != "" {
		s.plugin = t
		return s, nil
	}
	return nil, fmt.Errorf("%w %s: it names no delegate plugin type", errUnusable, path)
}

// removeState removes the saved configuration at path; one already gone is
// not an error.
func removeState(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
