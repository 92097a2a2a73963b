package lab

import (
	"os"
	"path/filepath"
	"testing"
)

// wgRunDir is where userspace WireGuard devices keep their UAPI sockets
// (/var/run/wireguard; /var/run is /run).
const wgRunDir = "/run/wireguard"

// WGKeyFile is where flanneld on n keeps its WireGuard private key
// (WIREGUARD_KEY_FILE), next to its subnet.env.
func (n *Node) WGKeyFile() string { return filepath.Join(n.Dir, "wgkey") }

// WGRunDir is the node's own /run/wireguard. The lab's nodes are network
// namespaces sharing the host's file system, so the UAPI sockets of their
// userspace WireGuard devices (all named flannel-wg) would collide in the
// host's /run/wireguard: each node's processes see this directory there
// instead (WithWGRunDir).
func (n *Node) WGRunDir() string { return filepath.Join(n.Dir, "wireguard") }

// WithWGRunDir wraps argv so it runs with the node's WGRunDir mounted on
// /run/wireguard, in the private mount namespace `ip netns exec` gives
// each command (nothing leaks to the host's).
func (n *Node) WithWGRunDir(argv ...string) []string {
	return append([]string{"sh", "-c", `mkdir -p "$0" && mount --bind "$0" ` + wgRunDir + ` && exec "$@"`, n.WGRunDir()}, argv...)
}

// WG runs wg(8) in node n, seeing its userspace devices.
func (n *Node) WG(args ...string) (string, error) {
	if err := os.MkdirAll(wgRunDir, 0o755); err != nil {
		return "", err
	}
	return Exec(n.Netns, n.WithWGRunDir(append([]string{"wg"}, args...)...)...)
}

// StartFlanneldWG is StartFlanneld for the wireguard backend: flanneld on
// n gets its own private key file (WIREGUARD_KEY_FILE=WGKeyFile) and its
// own /run/wireguard (WithWGRunDir).
func (l *Lab) StartFlanneldWG(t testing.TB, n *Node, extraArgs ...string) *Process {
	t.Helper()
	bin := RequireBinary(t, BinaryFlanneld)
	if err := os.MkdirAll(wgRunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := mergeArgs(l.FlanneldArgs(n), extraArgs)
	env := []string{"NODE_NAME=" + n.Name, "WIREGUARD_KEY_FILE=" + n.WGKeyFile()}
	p := l.Start(t, n.Netns, "flanneld-"+n.Name, env, n.WithWGRunDir(append([]string{bin}, args...)...)...)
	l.mu.Lock()
	n.flanneld = p
	l.mu.Unlock()
	return p
}
