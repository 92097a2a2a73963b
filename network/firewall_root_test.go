//go:build linux

package network

import (
	"bufio"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-iptables/iptables"

	"github.com/flanneld/flanneld/network/nstest"
)

// The tests in this file run the real iptables binaries inside a throwaway
// network namespace (fwNewNS): every call that touches the kernel runs in
// it through fwIn (nstest's Do), commands through `ip netns exec`, and the
// test goroutine itself never changes namespace. They need root and skip
// without it.

// fwRecordingIPTables wraps a real IPTables and records its mutating calls.
type fwRecordingIPTables struct {
	IPTables
	mutations []string
}

func (r *fwRecordingIPTables) NewChain(table, chain string) error {
	r.mutations = append(r.mutations, "NewChain "+table+" "+chain)
	return r.IPTables.NewChain(table, chain)
}

func (r *fwRecordingIPTables) Append(table, chain string, spec ...string) error {
	r.mutations = append(r.mutations, "Append "+table+" "+chain)
	return r.IPTables.Append(table, chain, spec...)
}

func (r *fwRecordingIPTables) Insert(table, chain string, pos int, spec ...string) error {
	r.mutations = append(r.mutations, "Insert "+table+" "+chain)
	return r.IPTables.Insert(table, chain, pos, spec...)
}

func (r *fwRecordingIPTables) DeleteById(table, chain string, id int) error {
	r.mutations = append(r.mutations, "DeleteById "+table+" "+chain)
	return r.IPTables.DeleteById(table, chain, id)
}

// fwNewNS creates a throwaway network namespace (nstest.New, deleted when
// the test ends) for running the real firewall binaries in. It skips
// without root and when ip, iptables, ip6tables, their -save tools or any
// of extra are not installed.
func fwNewNS(t *testing.T, extra ...string) *nstest.NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and runs iptables in it")
	}
	for _, bin := range append([]string{"ip", "iptables", "iptables-save", "ip6tables", "ip6tables-save"}, extra...) {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed: %v", bin, err)
		}
	}
	ns := nstest.New(t)

	// Processes exec'd inside Do must run in the new namespace.
	out, err := fwIn(t, ns, func() ([]byte, error) { return exec.Command("ip", "netns", "identify").Output() })
	if err != nil || strings.TrimSpace(string(out)) != ns.Name {
		t.Fatalf("exec'd children do not inherit the thread's netns: ip netns identify = %q, %v", out, err)
	}
	return ns
}

// fwIn runs fn inside ns (ns.Do, on a locked OS thread of its own) and
// returns its results to the test goroutine, which asserts on them. Failing
// to enter or leave the namespace fails the test.
func fwIn[T any](t *testing.T, ns *nstest.NS, fn func() (T, error)) (T, error) {
	t.Helper()
	var v T
	var fnErr error
	if err := ns.Do(func() error { v, fnErr = fn(); return nil }); err != nil {
		t.Fatalf("running in netns %s: %v", ns.Name, err)
	}
	return v, fnErr
}

// fwRun runs a command and fails the test if it fails.
func fwRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fwSavedRules returns the rules of the namespace as "-t TABLE -A ..." lines,
// read with `ip netns exec NAME <save>`.
func fwSavedRules(t *testing.T, name, save string) string {
	t.Helper()
	out := fwRun(t, "ip", "netns", "exec", name, save)
	var b strings.Builder
	table := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, "-A "):
			b.WriteString("-t " + table + " " + line + "\n")
		}
	}
	return fwSortTables(b.String())
}

// fwSortTables orders "-t" lines with nat before filter, keeping the order
// within each table, as in REFERENCE.md (iptables-save prints filter first).
func fwSortTables(text string) string {
	lines := strings.SplitAfter(text, "\n")
	slices.SortStableFunc(lines, func(a, b string) int {
		rank := func(l string) int {
			if strings.HasPrefix(l, "-t nat ") {
				return 0
			}
			return 1
		}
		return rank(a) - rank(b)
	})
	return strings.Join(lines, "")
}

// fwEnsureQuietly checks that Ensure, on fw and on a new Firewall for the
// same rules (a restarted daemon), changes nothing.
func fwEnsureQuietly(t *testing.T, ns *nstest.NS, ipt IPTables, fw *Firewall, rules []Rule) {
	t.Helper()
	for _, fw := range []*Firewall{fw, NewFirewall(ipt, rules)} {
		rec := &fwRecordingIPTables{IPTables: ipt}
		fw.ipt = rec
		repairs, err := fwIn(t, ns, fw.Ensure)
		fw.ipt = ipt
		if err != nil {
			t.Fatalf("Ensure: %v", err)
		}
		if len(repairs) != 0 || len(rec.mutations) != 0 {
			t.Errorf("Ensure on correct rules repaired %q with %q", repairs, rec.mutations)
		}
	}
}

// fwAssertGeneratedForm checks that iptables lists fw's chains exactly as
// generated, so Firewall did not need to learn another printed form.
func fwAssertGeneratedForm(t *testing.T, fw *Firewall) {
	t.Helper()
	for _, c := range fw.chains {
		if c.printed != nil {
			t.Errorf("iptables lists %s in another form than generated: %q", c, c.printed)
		}
	}
}

func TestFirewallRootIptables(t *testing.T) {
	ns := fwNewNS(t)
	name := ns.Name

	ipt, err := fwIn(t, ns, func() (IPTables, error) { return NewIPTables(iptables.ProtocolIPv4) })
	if err != nil {
		t.Fatal(err)
	}
	rules := fwAllRules(fwReferenceConfig)
	fw := NewFirewall(ipt, rules)
	golden := fwReadGolden(t, "firewall_ipv4.golden")

	if _, err := fwIn(t, ns, fw.Ensure); err != nil {
		t.Fatalf("first Ensure: %v", err)
	}
	fwDiffLines(t, fwSavedRules(t, name, "iptables-save"), golden)
	fwAssertGeneratedForm(t, fw)
	for _, c := range []struct{ table, chain string }{{"nat", MasqChain}, {"filter", ForwardChain}} {
		lines, err := fwIn(t, ns, func() ([]string, error) { return ipt.List(c.table, c.chain) })
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("iptables -t %s -S %s:\n%s", c.table, c.chain, strings.Join(lines, "\n"))
	}
	fwEnsureQuietly(t, ns, ipt, fw, rules)

	// Another agent's rules in the built-in chains are left alone.
	fwRun(t, "ip", "netns", "exec", name, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "192.0.2.0/24", "-j", "RETURN")
	fwRun(t, "ip", "netns", "exec", name, "iptables", "-A", "FORWARD", "-d", "192.0.2.0/24", "-j", "ACCEPT")
	withForeign := fwSavedRules(t, name, "iptables-save")
	fwEnsureQuietly(t, ns, ipt, fw, rules)
	fwDiffLines(t, fwSavedRules(t, name, "iptables-save"), withForeign)
	fwRun(t, "ip", "netns", "exec", name, "iptables", "-t", "nat", "-D", "POSTROUTING", "1")
	fwRun(t, "ip", "netns", "exec", name, "iptables", "-D", "FORWARD", "-d", "192.0.2.0/24", "-j", "ACCEPT")

	// Damage: flush the masquerade chain, remove the FORWARD jump, and add a
	// foreign rule to the forward chain.
	fwRun(t, "ip", "netns", "exec", name, "iptables", "-t", "nat", "-F", MasqChain)
	fwRun(t, "ip", "netns", "exec", name, "iptables", "-D", "FORWARD",
		"-m", "comment", "--comment", "flanneld forward", "-j", ForwardChain)
	fwRun(t, "ip", "netns", "exec", name, "iptables", "-I", ForwardChain, "2", "-j", "DROP")
	repairs, err := fwIn(t, ns, fw.Ensure)
	if err != nil {
		t.Fatalf("Ensure after damage: %v", err)
	}
	want := []string{
		"nat/FLANNEL-POSTRTG: 6 rules missing",
		"filter/FLANNEL-FWD: 1 unexpected rule",
		"filter/FORWARD: jump missing",
	}
	if !slices.Equal(repairs, want) {
		t.Errorf("repairs = %q, want %q", repairs, want)
	}
	fwDiffLines(t, fwSavedRules(t, name, "iptables-save"), golden)
	fwEnsureQuietly(t, ns, ipt, fw, rules)
}

func TestFirewallRootIp6tables(t *testing.T) {
	ns := fwNewNS(t)
	name := ns.Name

	ipt, err := fwIn(t, ns, func() (IPTables, error) { return NewIPTables(iptables.ProtocolIPv6) })
	if err != nil {
		t.Fatal(err)
	}
	rules := fwAllRules(fwReferenceIPv6Config)
	fw := NewFirewall(ipt, rules)
	if _, err := fwIn(t, ns, fw.Ensure); err != nil {
		t.Fatalf("first Ensure: %v", err)
	}
	fwDiffLines(t, fwSavedRules(t, name, "ip6tables-save"), fwReadGolden(t, "firewall_ipv6.golden"))
	fwAssertGeneratedForm(t, fw)
	fwEnsureQuietly(t, ns, ipt, fw, rules)
}
