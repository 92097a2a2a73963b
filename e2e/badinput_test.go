package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestBadOwnConfig checks that flanneld refuses its own bad configuration
// with exit status 1 and a clear message (issue 3, part 5): an unreadable,
// missing or invalid net-conf.json before touching anything on the node,
// and a podCIDR outside the Network naming both. (Bad JSON and an unknown
// backend are in TestFlanneldStartup.)
func TestBadOwnConfig(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	next := 10
	newNode := func(t *testing.T) *lab.Node {
		next++
		return l.AddNode(t, fmt.Sprintf("n%d", next), podCIDR(next))
	}

	for _, c := range []struct {
		name, content string
		why           string
	}{
		{"empty file", "", `(?i)net-conf|config|json|empty|EOF`},
		{"no Network", `{"Backend":{"Type":"vxlan"}}`, `(?i)network`},
		{"Network not a CIDR", `{"Network":"10.244.0.0/33","Backend":{"Type":"vxlan"}}`, `10\.244\.0\.0/33`},
		{"Network not an address", `{"Network":"banana","Backend":{"Type":"vxlan"}}`, `banana`},
		{"VNI out of range", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}`, `VNI`},
		{"wrong type", `{"Network":["10.244.0.0/16"],"Backend":{"Type":"vxlan"}}`, `(?i)network|json|config`},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t)
			conf := writeNodeFile(t, n, "net-conf.json", c.content)
			checkRefusesConfig(t, l, n, conf, regexp.MustCompile(c.why))
		})
	}

	t.Run("net-conf.json missing", func(t *testing.T) {
		n := newNode(t)
		conf := filepath.Join(n.Dir, "absent", "net-conf.json")
		checkRefusesConfig(t, l, n, conf, regexp.MustCompile(regexp.QuoteMeta(conf)))
	})

	t.Run("net-conf.json is a directory", func(t *testing.T) {
		n := newNode(t)
		conf := filepath.Join(n.Dir, "conf.d")
		if err := os.Mkdir(conf, 0o755); err != nil {
			t.Fatal(err)
		}
		checkRefusesConfig(t, l, n, conf, regexp.MustCompile(regexp.QuoteMeta(conf)))
	})

	t.Run("net-conf.json unreadable", func(t *testing.T) {
		// Root reads any file; run flanneld without the capabilities
		// that bypass file permissions, as a non-root daemon would be.
		drop := []string{"setpriv", "--bounding-set=-dac_override,-dac_read_search"}
		n := newNode(t)
		conf := writeNodeFile(t, n, "net-conf.json", lab.DefaultNetConf)
		if err := os.Chmod(conf, 0); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(drop[0], append(drop[1:], "cat", conf)...).CombinedOutput(); err == nil {
			t.Skipf("cannot make a file unreadable for root here (setpriv cat succeeded: %q)", out)
		}
		bin := lab.RequireBinary(t, lab.BinaryFlanneld)
		argv := append(append([]string{}, drop...), bin)
		for _, a := range l.FlanneldArgs(n) {
			if !strings.HasPrefix(a, "--net-config-path=") {
				argv = append(argv, a)
			}
		}
		argv = append(argv, "--net-config-path="+conf)
		p := l.Start(t, n.Netns, "flanneld-"+n.Name, []string{"NODE_NAME=" + n.Name}, argv...)
		checkRefusedUntouched(t, l, n, p, regexp.MustCompile(`(?i)permission denied`))
		if !strings.Contains(p.Log(), conf) {
			t.Errorf("the message does not name the file %s:\n%s", conf, p.Log())
		}
	})

	t.Run("podCIDR outside Network", func(t *testing.T) {
		next++
		n := l.AddNode(t, fmt.Sprintf("n%d", next), "10.99.1.0/24")
		p := l.StartFlanneld(t, n)
		code, exited := p.WaitExit(2 * exitTimeout)
		if !exited {
			t.Fatalf("flanneld still running %v after start with a podCIDR outside the Network; stderr:\n%s", 2*exitTimeout, p.Log())
		}
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		stderr := p.Log()
		line := firstMatchingLine(stderr, regexp.MustCompile(`10\.99\.1\.0/24.*10\.244\.0\.0/16|10\.244\.0\.0/16.*10\.99\.1\.0/24`))
		if line == "" {
			t.Errorf("no message names both the podCIDR 10.99.1.0/24 and the Network 10.244.0.0/16:\n%s", tailLines(stderr, 20))
		} else {
			t.Logf("flanneld said: %s", line)
		}
		if _, err := os.Stat(n.SubnetFile); err == nil {
			t.Errorf("subnet.env was written")
		}
		// Peers would route to a node that advertised itself.
		if ann, err := nodeAnnotations(l, n.Name); err != nil {
			t.Error(err)
		} else if ann[annotationPrefix+"kube-subnet-manager"] == "true" {
			t.Errorf("Node %s advertises itself as a flannel node: %v", n.Name, ann)
		}
		// The podCIDR is checked before anything on the node changes.
		if _, err := lab.ShowLink(n.Netns, vxlanDevice); err == nil {
			t.Errorf("%s was created although the podCIDR is outside the Network", vxlanDevice)
		}
	})
}

// TestBadPeers gives running flanneld nodes peers with unusable data
// (issue 3, part 5): malformed backend-data (bad JSON, bad MAC, no VNI,
// another VNI, a multicast MAC), a bad public-ip, no podCIDR, a podCIDR
// overlapping the node's own or another peer's, and a Node without any
// annotation. Each must be skipped with a warning naming it, without a
// panic, while every other peer stays programmed and pods ping; for two
// overlapping peers the older one (by creationTimestamp) is kept, the one
// programmed first between equals. A peer whose data is fixed is programmed.
func TestBadPeers(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)

	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	nodes := []*lab.Node{n1, n2}
	for _, n := range nodes {
		l.StartFlanneld(t, n)
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}
	p1 := l.AddPod(t, n1, "p1")
	p2 := l.AddPod(t, n2, "p1")
	peer1, peer2 := realPeer(t, n1), realPeer(t, n2)

	good := peer{Name: "good-3", PodCIDR: podCIDR(3), PublicIP: fakePublicIP(3), MAC: fakeMAC(3)}
	type badPeer struct {
		peer
		annotations map[string]string // nil: flannelAnnotations(peer) with changes
		change      map[string]string
		mustWarn    bool // the contract names the log line
	}
	data := annotationPrefix + "backend-data"
	bad := []badPeer{
		{peer: peer{Name: "bad-json", PodCIDR: podCIDR(4), PublicIP: fakePublicIP(4), MAC: fakeMAC(4)},
			change: map[string]string{data: `{"VNI":1,"VtepMAC":`}, mustWarn: true},
		{peer: peer{Name: "bad-mac", PodCIDR: podCIDR(5), PublicIP: fakePublicIP(5), MAC: fakeMAC(5)},
			change: map[string]string{data: `{"VNI":1,"VtepMAC":"0a:58:zz:00:00:05"}`}, mustWarn: true},
		{peer: peer{Name: "no-vni", PodCIDR: podCIDR(6), PublicIP: fakePublicIP(6), MAC: fakeMAC(6)},
			change: map[string]string{data: fmt.Sprintf(`{"VtepMAC":%q}`, fakeMAC(6))}, mustWarn: true},
		{peer: peer{Name: "bad-public-ip", PodCIDR: podCIDR(7), PublicIP: fakePublicIP(7), MAC: fakeMAC(7)},
			change: map[string]string{annotationPrefix + "public-ip": "192.168.100.300"}, mustWarn: true},
		{peer: peer{Name: "ov-own", PodCIDR: "10.244.1.128/25", PublicIP: fakePublicIP(8), MAC: fakeMAC(8)}, mustWarn: true},
		{peer: peer{Name: "no-annotations", PodCIDR: podCIDR(9)}, annotations: map[string]string{}},
		{peer: peer{Name: "vni-2", PodCIDR: podCIDR(10), PublicIP: fakePublicIP(10), MAC: fakeMAC(10)},
			change: map[string]string{data: fmt.Sprintf(`{"VNI":2,"VtepMAC":%q}`, fakeMAC(10))}, mustWarn: true},
		{peer: peer{Name: "multicast-mac", PodCIDR: podCIDR(11), PublicIP: fakePublicIP(11), MAC: "01:00:5e:00:00:0b"}, mustWarn: true},
		{peer: peer{Name: "ipv6-public-ip", PodCIDR: podCIDR(12), PublicIP: "fd00::12", MAC: fakeMAC(12)}, mustWarn: true},
		{peer: peer{Name: "no-podcidr", PublicIP: fakePublicIP(13), MAC: fakeMAC(13)}, mustWarn: true},
	}
	// Overlapping peers, created one after the other at run time: the
	// first one is kept even when the second one's name sorts first.
	ovA := peer{Name: "ov-a", PodCIDR: "10.244.20.0/24", PublicIP: fakePublicIP(20), MAC: fakeMAC(20)}
	ovB := peer{Name: "ov-b", PodCIDR: "10.244.20.128/25", PublicIP: fakePublicIP(21), MAC: fakeMAC(21)}
	owB := peer{Name: "ow-b", PodCIDR: "10.244.22.0/24", PublicIP: fakePublicIP(22), MAC: fakeMAC(22)}
	owA := peer{Name: "ow-a", PodCIDR: "10.244.22.0/23", PublicIP: fakePublicIP(23), MAC: fakeMAC(23)}

	createBad := func(t *testing.T, b badPeer) {
		ann := b.annotations
		if ann == nil {
			ann = flannelAnnotations(b.peer)
			for k, v := range b.change {
				ann[k] = v
			}
		}
		createNode(t, l, b.Name, b.PodCIDR, ann)
	}
	// checkSkipped checks that node n has no trace of b and warned about it.
	checkSkipped := func(t *testing.T, n *lab.Node, p *lab.Process, b badPeer) {
		t.Helper()
		if err := checkNoTraceOf(n.Netns, b.PodCIDR, b.MAC); err != nil {
			t.Errorf("%s programmed the bad peer %s: %v", n.Name, b.Name, err)
		}
		wait := 10 * time.Second
		if !b.mustWarn {
			wait = 2 * time.Second
		}
		err := lab.Poll(wait, func() error {
			if len(logLines(p.Log(), `"Skipping peer`, `node="`+b.Name+`"`)) == 0 {
				return fmt.Errorf("no warning")
			}
			return nil
		})
		switch {
		case err == nil:
			t.Logf("%s: %s", n.Name, logLines(p.Log(), `"Skipping peer`, `node="`+b.Name+`"`)[0])
		case b.mustWarn:
			t.Errorf(`%s did not log "Skipping peer" node=%q`, n.Name, b.Name)
		default:
			t.Logf(`note: %s logged no "Skipping peer" line for %s`, n.Name, b.Name)
		}
	}

	t.Run("at run time", func(t *testing.T) {
		createFakePeer(t, l, good)
		createFakePeer(t, l, ovA)
		createFakePeer(t, l, owB)
		for _, b := range bad {
			createBad(t, b)
		}
		want := map[*lab.Node]peerState{
			n1: stateFor(peer2, good, ovA, owB),
			n2: stateFor(peer1, good, ovA, owB),
		}
		for _, n := range nodes {
			lab.WaitFor(t, n.Name+" to program the good peers", convergeTimeout, func() error { return checkPeerState(n.Netns, want[n]) })
		}
		createFakePeer(t, l, ovB)
		createFakePeer(t, l, owA)
		for _, n := range nodes {
			p := n.Flanneld()
			for _, b := range append(bad, badPeer{peer: ovB, mustWarn: true}, badPeer{peer: owA, mustWarn: true}) {
				checkSkipped(t, n, p, b)
			}
			if err := checkPeerState(n.Netns, want[n]); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			requireRunning(t, n)
		}
		lab.WaitPing(t, p1, p2.IP, pingTimeout)
		lab.WaitPing(t, p2, p1.IP, pingTimeout)
	})

	fixed := peer{Name: "bad-mac", PodCIDR: podCIDR(5), PublicIP: fakePublicIP(5), MAC: fakeMAC(5)}
	t.Run("fixed peer is programmed", func(t *testing.T) {
		patchAnnotations(t, l, fixed.Name, map[string]*string{data: ptr(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, fixed.MAC))})
		for _, n := range nodes {
			d := measure(t, n.Name+" to program the fixed peer", convergeTimeout, func() error { return checkEntry(n.Netns, "route", fixed) })
			metric(t, "fixed_peer_programmed_seconds_"+n.Name, d)
		}
		want := map[*lab.Node]peerState{
			n1: stateFor(peer2, good, ovA, owB, fixed),
			n2: stateFor(peer1, good, ovA, owB, fixed),
		}
		for _, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, want[n]) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	t.Run("overlap winner leaves", func(t *testing.T) {
		// With ow-b gone, ow-a no longer overlaps anything.
		deleteNode(t, l, owB.Name)
		want := map[*lab.Node]peerState{
			n1: stateFor(peer2, good, ovA, owA, fixed),
			n2: stateFor(peer1, good, ovA, owA, fixed),
		}
		for _, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, want[n]) }); err != nil {
				t.Errorf("%s after the overlapping peer %s left: %v", n.Name, owB.Name, err)
			}
		}
		deleteNode(t, l, owA.Name)
	})

	t.Run("at start-up", func(t *testing.T) {
		n1.Flanneld().Stop()
		// Created while n1 is down, st-b a second before st-a: at n1's
		// start the older one wins although the other's name sorts
		// first, so n1 agrees with n2, which saw st-b first.
		stB := peer{Name: "st-b", PodCIDR: "10.244.30.0/24", PublicIP: fakePublicIP(30), MAC: fakeMAC(30)}
		stA := peer{Name: "st-a", PodCIDR: "10.244.30.0/23", PublicIP: fakePublicIP(31), MAC: fakeMAC(31)}
		createFakePeer(t, l, stB)
		lab.WaitFor(t, "n2 to program st-b", convergeTimeout, func() error { return checkEntry(n2.Netns, "route", stB) })
		time.Sleep(1100 * time.Millisecond) // creationTimestamp has a resolution of one second
		createFakePeer(t, l, stA)

		p := l.StartFlanneld(t, n1)
		n1.WaitReady(t, readyTimeout)
		want := map[*lab.Node]peerState{
			n1: stateFor(peer2, good, ovA, fixed, stB),
			n2: stateFor(peer1, good, ovA, fixed, stB),
		}
		for _, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(n.Netns, want[n]) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		for _, b := range append(bad, badPeer{peer: ovB, mustWarn: true}, badPeer{peer: stA, mustWarn: true}) {
			if b.Name == fixed.Name {
				continue
			}
			checkSkipped(t, n1, p, b)
		}
		checkSkipped(t, n2, n2.Flanneld(), badPeer{peer: stA, mustWarn: true})
		for _, n := range nodes {
			requireRunning(t, n)
		}
		lab.WaitPing(t, p1, p2.IP, pingTimeout)
		lab.WaitPing(t, p2, p1.IP, pingTimeout)
	})
}
