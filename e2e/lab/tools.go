package lab

import (
	"os/exec"
	"testing"
)

// RequireTool returns the path of the command name on PATH, failing the
// test with a hint when it is not installed (pkg is its Debian package;
// hack/install-deps.sh installs the packages the tests need).
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (%v): install the Debian package %s (hack/install-deps.sh)", name, err, pkg)
	}
	return path
}
