package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
	"github.com/flanneld/flanneld/network/nstest"
)

// wrapperCase is a namespace's rules and the backend the wrapper must pick.
type wrapperCase struct {
	name  string
	setup []string // shell commands run in the namespace first
	want  string   // legacy or nft
	rule  string   // a line iptables-save (through the wrapper) must print
}

// kubeletHint are the chains a kubelet creates in the backend it uses.
func kubeletHint(variant string) []string {
	return []string{
		variant + " -w -t mangle -N KUBE-IPTABLES-HINT",
		variant + " -w -t mangle -N KUBE-KUBELET-CANARY",
		variant + " -w -t nat -N KUBE-KUBELET-CANARY",
	}
}

var wrapperCases = []wrapperCase{
	{
		name: "legacy",
		setup: append(kubeletHint("iptables-legacy"),
			"iptables-legacy -w -t nat -N KUBE-SERVICES",
			"iptables-legacy -w -t nat -A PREROUTING -j KUBE-SERVICES",
			"iptables-legacy -w -A INPUT -s 192.0.2.1/32 -j ACCEPT"),
		want: "legacy",
		rule: "-A INPUT -s 192.0.2.1/32 -j ACCEPT",
	},
	{
		name: "nft",
		setup: append(kubeletHint("iptables-nft"),
			"iptables-nft -w -t nat -N KUBE-SERVICES",
			"iptables-nft -w -t nat -A PREROUTING -j KUBE-SERVICES",
			"iptables-nft -w -A INPUT -s 192.0.2.2/32 -j ACCEPT"),
		want: "nft",
		rule: "-A INPUT -s 192.0.2.2/32 -j ACCEPT",
	},
	{
		// The kubelet's chains decide over a larger count in the other backend
		// (say, leftovers of a tool that ran with the other variant).
		name: "kubelet hint in legacy, more rules in nft",
		setup: append(kubeletHint("iptables-legacy"),
			"iptables-legacy -w -A INPUT -s 192.0.2.3/32 -j ACCEPT",
			"iptables-nft -w -A INPUT -s 198.51.100.1/32 -j ACCEPT",
			"iptables-nft -w -A INPUT -s 198.51.100.2/32 -j ACCEPT",
			"iptables-nft -w -A INPUT -s 198.51.100.3/32 -j ACCEPT",
			"iptables-nft -w -A INPUT -s 198.51.100.4/32 -j ACCEPT"),
		want: "legacy",
		rule: "-A INPUT -s 192.0.2.3/32 -j ACCEPT",
	},
	{
		// No kubelet: the backend with more rules (here IPv6 ones).
		name: "ip6tables rules in legacy only",
		setup: []string{
			"ip6tables-legacy -w -A INPUT -s 2001:db8::1/128 -j ACCEPT",
		},
		want: "legacy",
	},
	{
		name: "no rules anywhere",
		want: "nft",
	},
}

// requireIPTablesVariants skips t unless both iptables variants are installed.
func requireIPTablesVariants(t *testing.T) {
	t.Helper()
	for _, b := range []string{"iptables-legacy", "iptables-legacy-save", "iptables-nft", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("skipping: %s is missing (Debian package iptables; hack/install-deps.sh)", b)
		}
	}
}

// runIn runs a command inside ns and returns its combined output.
func runIn(ns *nstest.NS, env []string, name string, args ...string) (string, error) {
	var out []byte
	err := ns.Do(func() error {
		cmd := exec.Command(name, args...)
		if env != nil {
			cmd.Env = env
		}
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// TestIPTablesWrapper runs images/iptables-wrapper, from the repository,
// against namespaces whose rules are in iptables-legacy or in iptables-nft
// and checks the backend it picks (--detect) and that iptables-save called
// through it (a symlink named iptables-save, as in the image) shows the
// namespace's rules. Outside the image it never records its choice: the
// host's alternatives stay as they were.
func TestIPTablesWrapper(t *testing.T) {
	lab.RequireRoot(t)
	requireIPTablesVariants(t)
	root, err := lab.FindRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(root, "images", "iptables-wrapper")
	bin := t.TempDir()
	for _, name := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		if err := os.Symlink(wrapper, filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(), "PATH="+bin+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	alternatives, _ := os.Readlink("/etc/alternatives/iptables")

	for _, tc := range wrapperCases {
		t.Run(tc.name, func(t *testing.T) {
			ns := nstest.New(t)
			for _, c := range tc.setup {
				if _, err := runIn(ns, nil, "sh", "-c", c); err != nil {
					t.Fatalf("setup: %v", err)
				}
			}
			out, err := runIn(ns, env, wrapper, "--detect")
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(out); got != tc.want {
				t.Fatalf("iptables-wrapper --detect = %q, want %q", got, tc.want)
			}
			if tc.rule == "" {
				return
			}
			out, err = runIn(ns, env, filepath.Join(bin, "iptables-save"), "-t", "filter")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, tc.rule+"\n") {
				t.Fatalf("iptables-save through the wrapper lacks %q (it should be iptables-%s-save):\n%s", tc.rule, tc.want, out)
			}
			// iptables (not -save) goes to the same backend.
			out, err = runIn(ns, env, filepath.Join(bin, "iptables"), "-w", "-S", "INPUT")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, tc.rule) {
				t.Fatalf("iptables -S INPUT through the wrapper lacks %q:\n%s", tc.rule, out)
			}
		})
	}
	if now, _ := os.Readlink("/etc/alternatives/iptables"); now != alternatives {
		t.Errorf("the host's iptables alternative changed from %q to %q: the wrapper must only switch alternatives that point at it", alternatives, now)
	}
}
