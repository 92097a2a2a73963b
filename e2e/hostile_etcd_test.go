package e2e

// Untrusted peers in etcd mode (issue 14): whoever can write under
// <prefix>/subnets/ chooses the leases every host programs. Hostile keys
// are put straight into etcd, without an etcd lease (as an operator's
// reservation would be), next to two hosts running flanneld; the checks
// are those of hostile_test.go.

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// putFromFile writes key=value through etcdctl's standard input (a value
// this large does not fit in one command-line argument) and checks that
// etcd holds all of it.
func putFromFile(t testing.TB, l *lab.Lab, e *lab.Etcd, key, value string) {
	t.Helper()
	path := filepath.Join(l.Dir(), "etcd-value-"+strings.NewReplacer("/", "_").Replace(key))
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := lab.RequireBinary(t, lab.BinaryEtcdctl)
	script := fmt.Sprintf("ETCDCTL_API=3 %s --endpoints=%s --command-timeout=10s put %s < %s", bin, e.URL, key, path)
	if _, err := lab.Exec(e.Netns, "sh", "-c", script); err != nil {
		t.Fatal(err)
	}
	kvs := e.Keys(t, key)
	if len(kvs) != 1 || len(kvs[0].Value) != len(value) {
		t.Fatalf("etcd does not hold the %d bytes put at %s", len(value), key)
	}
}

// etcdLeaseValue is a lease value as upstream writes it.
func etcdLeaseValue(publicIP, mac string) string {
	return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, publicIP, mac)
}

// TestHostilePeersEtcd puts hostile lease keys next to two bare hosts:
// subnets outside the Network (the underlay's own /24, loopback, all of
// IPv4), bad PublicIPs, a 1 MB value and a duplicate VtepMAC of a real
// host. Each is skipped with its rule, leaves no trace, and the hosts keep
// working.
func TestHostilePeersEtcd(t *testing.T) {
	l, e, nodes := newBareCluster(t, lab.EtcdOptions{}, 2)
	for _, n := range nodes {
		l.StartEtcdFlanneld(t, e, n, nil)
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}
	hosts := describeHosts(t, nodes)
	index := map[*lab.Node]int{}
	taken := map[netip.Prefix]bool{}
	for i, h := range hosts {
		index[h.node] = i
		taken[h.subnet] = true
	}
	state := func(n *lab.Node) error { return checkPeerState(n.Netns, etcdPeerState(hosts, index[n])) }
	c := newHostileCluster(t, l, nodes, state, etcdAnswers(e))

	// Subnets of the Network no host holds.
	var free []netip.Prefix
	for k := 254; len(free) < 4; k-- {
		if p := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", k)); !taken[p] {
			free = append(free, p)
		}
	}
	big := etcdLeaseValue("192.168.100.243", fakeMAC(85))
	big = big[:len(big)-1] + `,"Pad":"` + "\n" + forgedLogPrefix + `       1 forged.go:1] "Adding peer" node="forged"` + "\n"
	big += strings.Repeat("A", 1_000_000-len(big)-2) + `"}`

	type hostileKey struct {
		subnet netip.Prefix
		value  string
		rule   string
		mac    string    // its VtepMAC, if only it may have it
		only   *lab.Node // the one host that must refuse it (nil: all)
	}
	cases := []hostileKey{
		{subnet: lab.Segment1.Prefix(), value: etcdLeaseValue("192.168.100.240", fakeMAC(80)), rule: "subnet", mac: fakeMAC(80)},
		{subnet: netip.MustParsePrefix("127.0.0.0/8"), value: etcdLeaseValue("192.168.100.241", fakeMAC(81)), rule: "subnet", mac: fakeMAC(81)},
		{subnet: netip.MustParsePrefix("0.0.0.0/0"), value: etcdLeaseValue("192.168.100.244", fakeMAC(82)), rule: "subnet", mac: fakeMAC(82)},
		{subnet: free[0], value: etcdLeaseValue("127.0.0.1", fakeMAC(83)), rule: "public_ip", mac: fakeMAC(83)},
		{subnet: free[1], value: etcdLeaseValue("224.0.0.1", fakeMAC(84)), rule: "public_ip", mac: fakeMAC(84)},
		{subnet: free[2], value: big, rule: "malformed", mac: fakeMAC(85)},
		// n1 holds n2's older claim of the MAC (n2, whose MAC it is, is
		// left to do what it likes with it).
		{subnet: free[3], value: etcdLeaseValue("192.168.100.242", hosts[1].mac), rule: "conflict", only: hosts[0].node},
	}
	key := func(hk hostileKey) string { return lab.EtcdPrefix + "/subnets/" + etcdKeyName(hk.subnet) }

	t.Run("hostile lease keys", func(t *testing.T) {
		t.Cleanup(func() {
			for _, hk := range cases {
				e.Ctl(t, "del", key(hk))
			}
		})
		for _, hk := range cases {
			if len(hk.value) > 100_000 {
				putFromFile(t, l, e, key(hk), hk.value)
			} else {
				e.Put(t, key(hk), hk.value)
			}
		}
		for _, n := range nodes {
			for _, hk := range cases {
				if hk.only != nil && hk.only != n {
					continue
				}
				line := waitSkipped(t, n.Flanneld(), etcdKeyName(hk.subnet), hk.rule)
				t.Logf("%s (%d bytes): %s", n.Name, len(line), line)
				if err := checkNoHostileTrace(n.Netns, hk.subnet.String(), hk.mac); err != nil {
					t.Errorf("%s has a trace of %s: %v", n.Name, etcdKeyName(hk.subnet), err)
				}
			}
			if err := checkUnderlayRoutes(n, c.underlay[n]); err != nil {
				t.Errorf("%s with the hostile keys: %v", n.Name, err)
			}
		}
		n1 := hosts[0].node
		for _, rule := range []string{"subnet", "public_ip", "malformed", "conflict"} {
			waitCounter(t, n1, rejected(rule))
		}
		// Exact: n2's FDB entry kept its address.
		if err := state(n1); err != nil {
			t.Errorf("%s: %v", n1.Name, err)
		}
		lab.WaitPing(t, c.pods[0], c.pods[1].IP, pingTimeout)
		lab.WaitPing(t, c.pods[1], c.pods[0].IP, pingTimeout)
		c.checkLogsBounded(t)

		// Through a full pass, with the keys still there: not logged again.
		c.waitFullPass(t)
		for _, n := range nodes {
			for _, hk := range cases {
				if hk.only != nil && hk.only != n {
					continue
				}
				if lines := logLines(n.Flanneld().Log(), `"Skipping peer"`, `node="`+etcdKeyName(hk.subnet)+`"`); len(lines) != 1 {
					t.Errorf("%s logged %d Skipping peer lines for %s, want 1", n.Name, len(lines), etcdKeyName(hk.subnet))
				}
			}
		}
		c.checkLoggedOnce(t)

		for _, hk := range cases {
			e.Ctl(t, "del", key(hk))
		}
		c.healthy(t)
	})

	t.Run("no ping lost", func(t *testing.T) { c.stopPings(t) })
}
