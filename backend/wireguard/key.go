package wireguard

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// DefaultKeyFile is where the node's private key is kept, as upstream;
// the environment variable KeyFileEnv overrides it.
const (
	DefaultKeyFile = "/run/flannel/wgkey"
	KeyFileEnv     = "WIREGUARD_KEY_FILE"
)

// KeyFile is the private key file in use.
func KeyFile() string {
	if p := os.Getenv(KeyFileEnv); p != "" {
		return p
	}
	return DefaultKeyFile
}

// loadOrCreateKey returns the private key kept at path, creating it (mode
// 0600, written atomically) when the file does not exist or is empty. An
// empty file is what a crash can leave on a file system that lost the
// write; a file with anything else than a key in it is someone's doing,
// and an error: flanneld does not silently replace a key it did not write.
func loadOrCreateKey(path string) (kernel.WGKey, error) {
	raw, err := os.ReadFile(path)
	switch {
	case err == nil && len(bytes.TrimSpace(raw)) > 0:
		key, perr := kernel.ParseWGKey(string(bytes.TrimSpace(raw)))
		if perr != nil || key.IsZero() {
			if perr == nil {
				perr = errors.New("all zeros")
			}
			return kernel.WGKey{}, fmt.Errorf("WireGuard private key file %s holds no key (%v): remove it and flanneld creates a new key (peers learn the new public key from this node's annotations)", path, perr)
		}
		return key, nil
	case err == nil:
		klog.InfoS("WireGuard private key file is empty; creating a new key", "path", path)
	case errors.Is(err, fs.ErrNotExist):
		klog.InfoS("Creating a WireGuard private key", "path", path)
	default:
		return kernel.WGKey{}, fmt.Errorf("read WireGuard private key: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return kernel.WGKey{}, fmt.Errorf("generate WireGuard private key: %w", err)
	}
	key := kernel.WGKey(k)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return kernel.WGKey{}, fmt.Errorf("write WireGuard private key: %w", err)
	}
	if err := subnet.WriteFileAtomic(path, []byte(key.String()+"\n"), 0o600, (*os.File).Sync); err != nil {
		return kernel.WGKey{}, fmt.Errorf("write WireGuard private key %s: %w", path, err)
	}
	return key, nil
}

// publicKey is the public key of a private key.
func publicKey(private kernel.WGKey) kernel.WGKey {
	return kernel.WGKey(wgtypes.Key(private).PublicKey())
}
