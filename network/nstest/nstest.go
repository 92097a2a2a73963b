//go:build linux

// Package nstest gives privileged tests throwaway network namespaces, the
// way containernetworking's ns.Do and testutils.NewNS do: a named namespace
// per test, deleted when the test ends (also on failure), and Do, which runs
// code inside it on a locked OS thread of its own that returns to its
// namespace afterwards (or is discarded). No test goroutine ever switches
// itself into a namespace, and nothing machine-wide but the namespace's
// random name is shared, so packages can test in parallel.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is a network namespace of one test.
type NS struct {
	// Name is its name under /run/netns (for `ip netns exec`).
	Name string
}

// New creates a namespace with lo up, deleted when t ends. It skips the
// test when not root.
func New(t testing.TB) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating a network namespace needs root")
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	n := &NS{Name: "fltest-" + hex.EncodeToString(rnd[:])}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", n.Name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", n.Name, err, out)
	}
	return n
}

// Handle opens a netlink handle into the namespace, closed when t ends.
func (n *NS) Handle(t testing.TB) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(n.Open(t))
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// Open opens the namespace's handle (for netlink's subscriptions), closed
// when t ends.
func (n *NS) Open(t testing.TB) netns.NsHandle {
	t.Helper()
	nsh, err := netns.GetFromName(n.Name)
	if err != nil {
		t.Fatalf("open namespace %s: %v", n.Name, err)
	}
	t.Cleanup(func() { nsh.Close() })
	return nsh
}

// Do runs fn inside the namespace, on an OS thread locked to a goroutine
// of its own, and returns its error. Processes fn starts (iptables, say)
// run in the namespace too. The thread returns to its namespace afterwards;
// if it cannot, it stays locked and the runtime discards it.
func (n *NS) Do(fn func() error) error {
	errs := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errs <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(n.Name)
		if err != nil {
			runtime.UnlockOSThread()
			errs <- fmt.Errorf("open namespace %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errs <- fmt.Errorf("enter namespace %s: %w", n.Name, err) // the thread may be in either: discarded
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			errs <- fmt.Errorf("leave namespace %s: %w", n.Name, err) // discarded with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errs <- fnErr
	}()
	return <-errs
}
