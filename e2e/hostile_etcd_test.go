package e2e

// Untrusted peers in etcd mode (issue 14): whoever can write under
// <prefix>/subnets/ chooses the leases every host programs. Hostile keys
// are put straight into etcd, without an etcd lease (as an operator's
// reservation would be), next to two hosts running flanneld; the checks
// are those of hostile_helpers_test.go and hostile_cluster_test.go.

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// hostileKey is a hostile lease key in etcd.
type hostileKey struct {
	subnet netip.Prefix
	value  string
	rule   string
	mac    string    // its VtepMAC, if only it may have it
	only   *lab.Node // the one host that must refuse it (nil: all)
}

// key is the etcd key of hk.
func (hk hostileKey) key() string { return lab.EtcdPrefix + "/subnets/" + etcdKeyName(hk.subnet) }

// put writes hk into etcd.
func (hk hostileKey) put(t testing.TB, l *lab.Lab, e *lab.Etcd) {
	t.Helper()
	if len(hk.value) > 100_000 {
		putFromFile(t, l, e, hk.key(), hk.value)
	} else {
		e.Put(t, hk.key(), hk.value)
	}
}

// keysRefusedBy are the keys of keys node n must refuse.
func keysRefusedBy(keys []hostileKey, n *lab.Node) []hostileKey {
	var out []hostileKey
	for _, hk := range keys {
		if refusedBy(hk.only, n) {
			out = append(out, hk)
		}
	}
	return out
}

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

// hostileKeys are the hostile keys put next to hosts: subnets outside the
// Network, bad PublicIPs, a 1 MB value and a duplicate VtepMAC of
// hosts[1].
func hostileKeys(hosts []bareHost) []hostileKey {
	taken := map[netip.Prefix]bool{}
	for _, h := range hosts {
		taken[h.subnet] = true
	}
	// Subnets of the Network no host holds.
	var free []netip.Prefix
	for k := 254; len(free) < 4; k-- {
		if p := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", k)); !taken[p] {
			free = append(free, p)
		}
	}
	big := etcdLeaseValue("192.168.100.243", fakeMAC(85))
	big = withForgedLogLine(big[:len(big)-1]+`,"Pad":"`, 1_000_000)
	return []hostileKey{
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
}

// TestHostilePeersEtcd puts hostile lease keys next to two bare hosts:
// subnets outside the Network (the underlay's own /24, loopback, all of
// IPv4), bad PublicIPs, a 1 MB value and a duplicate VtepMAC of a real
// host. Each is skipped with its rule, leaves no trace, and the hosts keep
// working.
func TestHostilePeersEtcd(t *testing.T) {
	l, e, nodes := startBareCluster(t, lab.EtcdOptions{}, 2)
	hosts := describeHosts(t, nodes)
	index := map[*lab.Node]int{}
	for i, h := range hosts {
		index[h.node] = i
	}
	state := func(n *lab.Node) error { return checkPeerState(n.Netns, etcdPeerState(hosts, index[n])) }
	c := newHostileCluster(t, l, nodes, state, etcdAnswers(e))
	keys := hostileKeys(hosts)

	t.Run("hostile lease keys", func(t *testing.T) { checkHostileLeaseKeys(t, c, e, keys) })
	t.Run("no ping lost", func(t *testing.T) { c.stopPings(t) })
}

// checkHostileLeaseKeys puts keys into etcd: each host skips those it must
// with their rule, keeps no trace of them and its underlay routes, and
// logs each once, also through a full pass with the keys still there.
func checkHostileLeaseKeys(t *testing.T, c *hostileCluster, e *lab.Etcd, keys []hostileKey) {
	t.Cleanup(func() {
		for _, hk := range keys {
			e.Ctl(t, "del", hk.key())
		}
	})
	for _, hk := range keys {
		hk.put(t, c.l, e)
	}
	for _, n := range c.nodes {
		for _, hk := range keysRefusedBy(keys, n) {
			line := waitSkipped(t, n.Flanneld(), etcdKeyName(hk.subnet), hk.rule)
			t.Logf("%s (%d bytes): %s", n.Name, len(line), line)
			if err := checkNoHostileTrace(n.Netns, hk.subnet.String(), hk.mac); err != nil {
				t.Errorf("%s has a trace of %s: %v", n.Name, etcdKeyName(hk.subnet), err)
			}
		}
		c.checkUnderlay(t, n, " with the hostile keys")
	}
	n1 := c.nodes[0]
	for _, rule := range []string{"subnet", "public_ip", "malformed", "conflict"} {
		waitCounter(t, n1, rejected(rule))
	}
	// Exact: n2's FDB entry kept its address.
	if err := c.state(n1); err != nil {
		t.Errorf("%s: %v", n1.Name, err)
	}
	c.pingFirstTwo(t, true)
	c.checkLogsBounded(t)

	// Through a full pass, with the keys still there: not logged again.
	c.waitFullPass(t)
	for _, n := range c.nodes {
		var names []string
		for _, hk := range keysRefusedBy(keys, n) {
			names = append(names, etcdKeyName(hk.subnet))
		}
		checkSkippedOnce(t, n, names...)
	}
	c.checkLoggedOnce(t)

	for _, hk := range keys {
		e.Ctl(t, "del", hk.key())
	}
	c.healthy(t)
}
