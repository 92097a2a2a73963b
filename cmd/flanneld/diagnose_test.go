package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestDiagnoseCommandLine checks the subcommand's flags and exit statuses
// that need neither root nor a cluster.
func TestDiagnoseCommandLine(t *testing.T) {
	for _, tt := range []struct {
		name     string
		args     []string
		env      []string
		code     int
		stdout   string // substring
		stderr   string // substring
		noStdout bool
	}{
		{name: "help", args: []string{"diagnose", "--help"}, code: 0, stderr: "--probe"},
		{name: "version", args: []string{"diagnose", "--version"}, code: 0, stdout: version},
		{name: "unknown flag", args: []string{"diagnose", "--bogus"}, code: 2, stderr: "unknown flag: --bogus", noStdout: true},
		{name: "stray argument", args: []string{"diagnose", "now"}, code: 2, stderr: "unexpected arguments: now", noStdout: true},
		{name: "bad daemon option", args: []string{"diagnose", "--kube-subnet-mgr", "--iptables-resync=0"}, code: 2,
			stderr: "--iptables-resync must be at least 1", noStdout: true},
		// etcd mode reads the same etcd as the daemon: a bad TLS file fails at once.
		{name: "etcd mode", args: []string{"diagnose", "--json", "--etcd-cafile=/nonexistent/ca.pem"}, code: 2, stderr: "/nonexistent/ca.pem", noStdout: true},
		// The daemon's FLANNELD_* variables apply; diagnose's own flags do not come from the environment.
		{name: "environment", args: []string{"diagnose"}, env: []string{"FLANNELD_KUBE_SUBNET_MGR=true",
			"FLANNELD_NET_CONFIG_PATH=/nonexistent/net-conf.json", "FLANNELD_JSON=notabool"}, code: 2,
			stderr: "/nonexistent/net-conf.json", noStdout: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, tt.env, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) ||
				tt.noStdout && stdout.Len() > 0 {
				t.Errorf("run(%q) = %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q",
					tt.args, code, stdout.String(), stderr.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}
