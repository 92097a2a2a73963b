//go:build linux

package nstest

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

func TestDo(t *testing.T) {
	n := New(t)
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	var inside string
	if err := n.Do(func() error {
		out, err := exec.Command("ip", "netns", "identify").Output()
		inside = strings.TrimSpace(string(out))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside != n.Name {
		t.Errorf("a process started in Do runs in %q, want %q", inside, n.Name)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Error("the test's goroutine changed namespace")
	}
	if links, err := n.Handle(t).LinkList(); err != nil || len(links) != 1 {
		t.Errorf("a new namespace has %d links (%v), want lo only", len(links), err)
	}
}
