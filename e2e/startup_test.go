package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

const exitTimeout = 30 * time.Second

// TestFlanneldStartup checks how flanneld starts: it refuses a bad
// configuration before touching anything, and it waits for a Node without
// a podCIDR instead of exiting (REFERENCE sections 2 and 3).
func TestFlanneldStartup(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)

	t.Run("bad net-conf JSON", func(t *testing.T) {
		n := l.AddNode(t, "n2", podCIDR(2))
		conf := writeNodeFile(t, n, "net-conf.json", `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}`)
		checkRefusesConfig(t, l, n, conf, regexp.MustCompile(`(?i)json|net-conf|config`))
	})

	t.Run("unknown backend type", func(t *testing.T) {
		n := l.AddNode(t, "n3", podCIDR(3))
		conf := writeNodeFile(t, n, "net-conf.json", `{"Network":"10.244.0.0/16","Backend":{"Type":"foo"}}`)
		checkRefusesConfig(t, l, n, conf, regexp.MustCompile(`foo`))
	})

	t.Run("waits for podCIDR", func(t *testing.T) {
		n := l.AddNode(t, "n1", "")
		p := l.StartFlanneld(t, n)
		mentionsPodCIDR := regexp.MustCompile(`(?i)pod ?cidr`)
		lab.WaitFor(t, "flanneld to log that it waits for a podCIDR", exitTimeout, func() error {
			if !p.Running() {
				return fmt.Errorf("flanneld exited (status %d); stderr:\n%s", p.ExitCode(), p.Log())
			}
			if line := firstMatchingLine(p.Log(), mentionsPodCIDR); line == "" {
				return fmt.Errorf("no log line mentions the podCIDR yet")
			}
			return nil
		})
		t.Logf("flanneld says: %s", firstMatchingLine(p.Log(), mentionsPodCIDR))
		if _, err := os.Stat(n.SubnetFile); err == nil {
			t.Errorf("subnet.env written before the Node has a podCIDR")
		}

		l.SetPodCIDR(t, n, podCIDR(1))
		got := n.WaitSubnetEnv(t, 2*readyTimeout)
		if want := expectedSubnetEnv(1); got != want {
			t.Errorf("subnet.env:\n%s\nwant:\n%s", got, want)
		}
		n.WaitReady(t, readyTimeout)
	})

	// A stop requested by signal is a clean exit at any point, also while
	// flanneld waits during start-up (on 4308a5a: status 1, "context
	// canceled", which systemd records as a failure).
	t.Run("SIGTERM while waiting for the podCIDR", func(t *testing.T) {
		n := l.AddNode(t, "n4", "")
		p := l.StartFlanneld(t, n)
		lab.WaitFor(t, "flanneld to wait for its podCIDR", exitTimeout, func() error {
			if firstMatchingLine(p.Log(), regexp.MustCompile(`Waiting for this node's podCIDR`)) == "" {
				return fmt.Errorf("not waiting yet")
			}
			return nil
		})
		p.Signal(syscall.SIGTERM)
		code, exited := p.WaitExit(exitTimeout)
		if !exited || code != 0 {
			t.Errorf("after SIGTERM during start-up: exited %v, status %d, want 0; stderr:\n%s", exited, code, tailLines(p.Log(), 10))
		}
	})
}

// checkRefusesConfig starts flanneld on n with net-conf.json conf and checks
// that it exits with status 1, says why on stderr (matching why), and left
// no trace: no flannel.1, no subnet.env, no annotations, no rules.
func checkRefusesConfig(t *testing.T, l *lab.Lab, n *lab.Node, conf string, why *regexp.Regexp) {
	t.Helper()
	checkRefusedUntouched(t, l, n, l.StartFlanneld(t, n, "--net-config-path="+conf), why)
}

// checkRefusedUntouched checks that flanneld p, started on n, exits with
// status 1, says why on stderr (matching why), and left no trace.
func checkRefusedUntouched(t *testing.T, l *lab.Lab, n *lab.Node, p *lab.Process, why *regexp.Regexp) {
	t.Helper()
	checkRefusedExit(t, n, p, why)
	if ann, err := nodeAnnotations(l, n.Name); err != nil {
		t.Error(err)
	} else if len(ann) > 0 {
		t.Errorf("Node %s was annotated: %v", n.Name, ann)
	}
	if out, err := lab.Exec(n.Netns, "iptables-save"); err != nil {
		t.Error(err)
	} else if strings.Contains(out, "FLANNEL") {
		t.Errorf("firewall rules were installed:\n%s", out)
	}
}

// checkRefusedExit checks that flanneld p, started on n, exits with status
// 1, says why on stderr (matching why), and created neither flannel.1 nor
// subnet.env (in Kubernetes mode and in etcd mode).
func checkRefusedExit(t *testing.T, n *lab.Node, p *lab.Process, why *regexp.Regexp) {
	t.Helper()
	code, exited := p.WaitExit(exitTimeout)
	if !exited {
		t.Fatalf("flanneld still running %v after start with a bad configuration; stderr:\n%s", exitTimeout, p.Log())
	}
	stderr := p.Log()
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	if !why.MatchString(stderr) {
		t.Errorf("stderr does not explain the error (want a match for %s):\n%s", why, stderr)
	} else {
		t.Logf("flanneld said: %s", firstMatchingLine(stderr, why))
	}
	if _, err := lab.ShowLink(n.Netns, vxlanDevice); err == nil {
		t.Errorf("%s was created", vxlanDevice)
	}
	if _, err := os.Stat(n.SubnetFile); err == nil {
		t.Errorf("subnet.env was written")
	}
}

func writeNodeFile(t *testing.T, n *lab.Node, name, content string) string {
	t.Helper()
	path := filepath.Join(n.Dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func firstMatchingLine(text string, re *regexp.Regexp) string {
	for _, line := range strings.Split(text, "\n") {
		if re.MatchString(line) {
			return line
		}
	}
	return ""
}
