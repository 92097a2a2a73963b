package e2e

// The systemd contract of Documentation/flanneld.service: Type=notify
// (READY=1 on $NOTIFY_SOCKET once the node is ready), settings from the
// EnvironmentFile as FLANNELD_* variables, extra arguments in $FLANNELD_OPTS.

import (
	"bufio"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// docFile reads a file of Documentation/.
func docFile(t *testing.T, name string) string {
	t.Helper()
	root, err := lab.FindRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "Documentation", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unitSettings returns the Key=Value lines of a systemd unit (or an
// environment file), in order, without comments.
func unitSettings(content string) [][2]string {
	var out [][2]string
	s := bufio.NewScanner(strings.NewReader(content))
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "[") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			out = append(out, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	return out
}

func setting(settings [][2]string, key string) (string, bool) {
	for _, kv := range settings {
		if kv[0] == key {
			return kv[1], true
		}
	}
	return "", false
}

// TestEtcdSystemdUnitFiles checks the unit and the example environment
// file against the flanneld binary: every FLANNELD_* variable names a
// flag, the unit is what the docs promise, and systemd accepts it.
func TestEtcdSystemdUnitFiles(t *testing.T) {
	if !lab.HaveBinary(lab.BinaryFlanneld) {
		t.Skip("bin/flanneld not built: run `make build` (needs no root)")
	}
	bin := lab.RequireBinary(t, lab.BinaryFlanneld)
	unit := unitSettings(docFile(t, "flanneld.service"))
	for key, want := range map[string]string{
		"Type":            "notify",
		"ExecStart":       "/usr/local/bin/flanneld $FLANNELD_OPTS",
		"EnvironmentFile": "-/etc/flanneld/flanneld.env",
		"Restart":         "on-failure",
		"LimitNOFILE":     "65536",
	} {
		if got, _ := setting(unit, key); got != want {
			t.Errorf("flanneld.service: %s=%q, want %q", key, got, want)
		}
	}
	if after, _ := setting(unit, "After"); !strings.Contains(after, "network-online.target") || !strings.Contains(after, "etcd.service") {
		t.Errorf("flanneld.service: After=%s, want network-online.target and etcd.service", after)
	}

	help, _ := exec.Command(bin, "--help").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`--([a-z0-9-]+)`).FindAllStringSubmatch(string(help), -1) {
		flags[m[1]] = true
	}
	if !flags["etcd-endpoints"] {
		t.Fatalf("flanneld --help lists no --etcd-endpoints:\n%s", help)
	}
	env := unitSettings(docFile(t, "flanneld.env"))
	if len(env) < 5 {
		t.Fatalf("flanneld.env has only %d settings", len(env))
	}
	for _, kv := range env {
		name, ok := strings.CutPrefix(kv[0], "FLANNELD_")
		if !ok {
			t.Errorf("flanneld.env: %s is not a FLANNELD_ variable", kv[0])
			continue
		}
		if name == "OPTS" {
			continue
		}
		if flag := strings.ToLower(strings.ReplaceAll(name, "_", "-")); !flags[flag] {
			t.Errorf("flanneld.env: %s names no flag (--%s)", kv[0], flag)
		}
	}

	// systemd's own check, where systemd is installed (ExecStart must
	// name an existing binary, so the unit is pointed at ours).
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Logf("systemd-analyze not installed; skipping systemd's check of the unit")
		return
	}
	dir := t.TempDir()
	content := strings.ReplaceAll(docFile(t, "flanneld.service"), "/usr/local/bin/flanneld", bin)
	path := filepath.Join(dir, "flanneld.service")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || strings.Contains(string(out), "flanneld.service") {
		t.Errorf("systemd-analyze verify flanneld.service: %v\n%s", err, out)
	}
}

// TestEtcdSystemdNotify runs flanneld the way flanneld.service does: the
// documented environment file (its etcd and TLS settings pointed at the
// lab's etcd), ExecStart with $FLANNELD_OPTS, and NOTIFY_SOCKET. READY=1
// must not come while etcd is down, and must come once the node is ready.
func TestEtcdSystemdNotify(t *testing.T) {
	l, e, nodes := newBareCluster(t, lab.EtcdOptions{TLS: true}, 1)
	n := nodes[0]
	bin := lab.RequireBinary(t, lab.BinaryFlanneld)

	sockPath := filepath.Join(l.Dir(), "notify.sock")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()

	overrides := map[string]string{
		"FLANNELD_ETCD_ENDPOINTS": e.URL,
		"FLANNELD_ETCD_CAFILE":    e.TLS.CAFile,
		"FLANNELD_ETCD_CERTFILE":  e.TLS.CertFile,
		"FLANNELD_ETCD_KEYFILE":   e.TLS.KeyFile,
		"FLANNELD_SUBNET_FILE":    n.SubnetFile,
	}
	var env []string
	var opts string
	for _, kv := range unitSettings(docFile(t, "flanneld.env")) {
		v := kv[1]
		if o, ok := overrides[kv[0]]; ok {
			v = o
			delete(overrides, kv[0])
		}
		if kv[0] == "FLANNELD_OPTS" {
			opts = v
		}
		env = append(env, kv[0]+"="+v)
	}
	if len(overrides) > 0 {
		t.Fatalf("flanneld.env lacks %v", overrides)
	}
	env = append(env, "NOTIFY_SOCKET="+sockPath)
	// ExecStart=/usr/local/bin/flanneld $FLANNELD_OPTS: systemd splits an
	// unbraced variable at whitespace.
	argv := append([]string{bin}, strings.Fields(opts)...)

	e.Stop(t)
	p := l.StartFlanneldCommand(t, n, env, argv)
	readNotify := func(timeout time.Duration) (string, error) {
		if err := sock.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return "", err
		}
		buf := make([]byte, 4096)
		k, _, err := sock.ReadFromUnix(buf)
		return string(buf[:k]), err
	}
	if msg, err := readNotify(5 * time.Second); err == nil {
		t.Fatalf("flanneld sent %q while etcd was down", msg)
	} else if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatal(err)
	}
	if !p.Running() {
		t.Fatalf("flanneld exited while etcd was down:\n%s", tailLinesOf(p.Log(), 20))
	}

	e.Start(t)
	start := time.Now()
	msg, err := readNotify(readyTimeout)
	if err != nil {
		t.Fatalf("no notification within %v of etcd's return: %v; log:\n%s", readyTimeout, err, tailLinesOf(p.Log(), 30))
	}
	etcdMetric(t, "etcd_systemd_ready_after_etcd_return", time.Since(start))
	if !strings.Contains("\n"+msg+"\n", "\nREADY=1\n") {
		t.Errorf("notification %q, want READY=1", msg)
	}
	// Ready means ready: the probe, the subnet file, the lease.
	if err := n.PollReady(0); err != nil {
		t.Errorf("READY=1 sent but /readyz says: %v", err)
	}
	sn := subnetOf(t, n)
	if _, ok := e.LeaseKeys(t)[etcdKeyName(sn)]; !ok {
		t.Errorf("READY=1 sent but etcd has no lease key for %s", sn)
	}
	// The settings came from the environment file.
	log := p.Log()
	for _, want := range []string{`interface="eth0"`, `endpoints=["` + e.URL + `"]`} {
		if !strings.Contains(log, want) {
			t.Errorf("flanneld's log lacks %s (a setting of flanneld.env)", want)
		}
	}
	if _, err := readNotify(2 * time.Second); err == nil {
		t.Logf("a second notification arrived (harmless for systemd)")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Error(err)
	}
}
