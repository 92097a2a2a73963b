package lab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// modulePath is the module whose root holds bin/.
const modulePath = "github.com/flanneld/flanneld"

// Binary names the programs a lab runs, with the environment variable that
// overrides each path.
type Binary struct {
	Env      string // e.g. "FLANNELD"
	Relative string // default path relative to the repository root; empty if Absolute is used
	Absolute string // default absolute path
}

var (
	BinaryFlanneld      = Binary{Env: "FLANNELD", Relative: "bin/flanneld"}
	BinaryKubeAPIServer = Binary{Env: "KUBE_APISERVER", Relative: "bin/kube-apiserver"}
	BinaryEtcd          = Binary{Env: "ETCD", Absolute: "/usr/bin/etcd"}

	// The real-node lab (kube.go, kubenode.go).
	BinaryKubelet               = Binary{Env: "KUBELET_BIN", Relative: "bin/kubelet"}
	BinaryKubeControllerManager = Binary{Env: "KUBE_CONTROLLER_MANAGER", Relative: "bin/kube-controller-manager"}
	BinaryKubeScheduler         = Binary{Env: "KUBE_SCHEDULER", Relative: "bin/kube-scheduler"}
	BinaryKubectl               = Binary{Env: "KUBECTL", Relative: "bin/kubectl"}
	BinaryContainerd            = Binary{Env: "CONTAINERD", Absolute: "/usr/bin/containerd"}

	// The reference userspace WireGuard (wireguard interop test).
	BinaryWireGuardGo = Binary{Env: "WIREGUARD_GO", Relative: "bin/wireguard-go"}
)

// RequireBinary returns the path of b, failing the test with a hint when the
// file is missing.
func RequireBinary(t testing.TB, b Binary) string {
	t.Helper()
	path, err := resolveBinary(b)
	if err != nil {
		t.Fatalf("%v: run `make build` first (or set %s)", err, b.Env)
	}
	return path
}

// HaveBinary reports whether b exists, without failing the test.
func HaveBinary(b Binary) bool {
	_, err := resolveBinary(b)
	return err == nil
}

func resolveBinary(b Binary) (string, error) {
	path := os.Getenv(b.Env)
	if path == "" && b.Absolute != "" {
		path = b.Absolute
	}
	if path == "" {
		root, err := FindRepoRoot()
		if err != nil {
			return "", err
		}
		path = filepath.Join(root, b.Relative)
	}
	info, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("binary %s not found at %s", b.Env, path)
	}
	if info.IsDir() || info.Mode()&0o111 == 0 {
		return "", fmt.Errorf("binary %s at %s is not an executable file", b.Env, path)
	}
	return path, nil
}

// FindRepoRoot walks up from the working directory to the directory whose
// go.mod declares the flanneld module (skipping nested modules such as
// e2e/tools).
func FindRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if readModulePath(filepath.Join(dir, "go.mod")) == modulePath {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (go.mod of " + modulePath + ") not found above the working directory")
		}
		dir = parent
	}
}

func readModulePath(goMod string) string {
	f, err := os.Open(goMod)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if rest, ok := strings.CutPrefix(line, "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}
