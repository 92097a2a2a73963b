package e2e

// Bare hosts (issue 8): flanneld without --kube-subnet-mgr, its
// configuration and leases in a real etcd (lab.NewBare, lab.StartEtcd).
// Subnets are chosen at random, so expectations are built from each
// host's subnet.env.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// etcdNetConf is the network configuration the bare-host tests load.
const etcdNetConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

// bareHost is a node in etcd mode with what it acquired.
type bareHost struct {
	node   *lab.Node
	subnet netip.Prefix // e.g. 10.244.37.0/24
	mac    string       // flannel.1's MAC
}

// keyName is the host's lease key under <prefix>/subnets/.
func (h bareHost) keyName() string { return etcdKeyName(h.subnet) }

func etcdKeyName(sn netip.Prefix) string { return fmt.Sprintf("%s-%d", sn.Addr(), sn.Bits()) }

// etcdMetric logs one figure in the format the reliability report collects.
func etcdMetric(t testing.TB, name string, d time.Duration) {
	t.Helper()
	t.Logf("METRIC %s=%.3f", name, d.Seconds())
}

// newBareCluster builds a bare lab with etcd (and the config loaded) and
// count hosts named prefix1, prefix2, ...
func newBareCluster(t *testing.T, opts lab.EtcdOptions, count int) (*lab.Lab, *lab.Etcd, []*lab.Node) {
	t.Helper()
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.NewBare(t)
	e := l.StartEtcd(t, opts)
	e.PutNetworkConfig(t, etcdNetConf)
	nodes := make([]*lab.Node, count)
	for i := range nodes {
		nodes[i] = l.AddBareNode(t, fmt.Sprintf("n%d", i+1))
	}
	return l, e, nodes
}

// startBareCluster is newBareCluster with flanneld started and ready on
// every host.
func startBareCluster(t *testing.T, opts lab.EtcdOptions, count int) (*lab.Lab, *lab.Etcd, []*lab.Node) {
	t.Helper()
	l, e, nodes := newBareCluster(t, opts, count)
	for _, n := range nodes {
		l.StartEtcdFlanneld(t, e, n, nil)
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}
	return l, e, nodes
}

// subnetOf waits for n's subnet.env and returns its subnet (masked).
func subnetOf(t testing.TB, n *lab.Node) netip.Prefix {
	t.Helper()
	env := lab.ParseSubnetEnv(n.WaitSubnetEnv(t, readyTimeout))
	p, err := netip.ParsePrefix(env["FLANNEL_SUBNET"])
	if err != nil {
		t.Fatalf("%s: FLANNEL_SUBNET: %v", n.Name, err)
	}
	return p.Masked()
}

// describeHosts waits for each node's subnet.env and flannel.1.
func describeHosts(t *testing.T, nodes []*lab.Node) []bareHost {
	t.Helper()
	hosts := make([]bareHost, len(nodes))
	for i, n := range nodes {
		hosts[i] = bareHost{node: n, subnet: subnetOf(t, n), mac: vtepMAC(t, n)}
	}
	return hosts
}

// etcdPeerState is what host self needs for every other host.
func etcdPeerState(hosts []bareHost, self int) peerState {
	var s peerState
	for j, h := range hosts {
		if j == self {
			continue
		}
		gw := h.subnet.Addr().String()
		s.routes = append(s.routes, fmt.Sprintf("%s via %s dev %s onlink", h.subnet, gw, vxlanDevice))
		s.neighbours = append(s.neighbours, fmt.Sprintf("%s dev %s lladdr %s PERMANENT", gw, vxlanDevice, h.mac))
		s.fdb = append(s.fdb, fmt.Sprintf("%s dev %s dst %s self permanent", h.mac, vxlanDevice, h.node.IP))
	}
	return s
}

// leaseValue is the lease value upstream flannel writes for h.
func (h bareHost) leaseValue() string { return etcdLeaseValue(h.node.IP.String(), h.mac) }

// etcdLeaseValue is a vxlan lease value as upstream flannel writes it.
func etcdLeaseValue(publicIP, mac string) string {
	return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, publicIP, mac)
}

func (h bareHost) nodeName() string { return h.node.Name }

// leaseHolder is a bare host as the lease key checks see it.
type leaseHolder interface {
	nodeName() string
	keyName() string    // its key under <prefix>/subnets/
	leaseValue() string // the value upstream flannel writes for it
}

// checkLeaseKeys checks that etcd holds exactly one key per host, with
// upstream's value and an etcd lease, plus the keys in others.
func checkLeaseKeys[H leaseHolder](t *testing.T, e *lab.Etcd, hosts []H, others ...string) map[string]lab.EtcdKV {
	t.Helper()
	keys := e.LeaseKeys(t)
	want := slices.Clone(others)
	for _, h := range hosts {
		want = append(want, h.keyName())
		kv, ok := keys[h.keyName()]
		switch {
		case !ok:
			t.Errorf("%s: no lease key %s", h.nodeName(), h.keyName())
		case kv.Value != h.leaseValue():
			t.Errorf("%s: key %s = %s, want %s", h.nodeName(), kv.Key, kv.Value, h.leaseValue())
		case kv.Lease == 0:
			t.Errorf("%s: key %s has no etcd lease", h.nodeName(), kv.Key)
		}
	}
	var got []string
	for name := range keys {
		got = append(got, name)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("lease keys in etcd: %v, want %v", got, want)
	}
	return keys
}

// checkBareVXLANDevice checks flannel.1 of a host (REFERENCE section 4,
// as in Kubernetes mode).
func checkBareVXLANDevice(h bareHost) error {
	return checkVXLANDeviceOf(h.node.Netns, h.node.IP.String(), h.subnet.Addr().String())
}

// waitPeerStates waits until every host has programmed every other one.
func waitPeerStates(t *testing.T, hosts []bareHost, timeout time.Duration) {
	t.Helper()
	for i, h := range hosts {
		want := etcdPeerState(hosts, i)
		if err := lab.Poll(timeout, func() error { return checkPeerState(h.node.Netns, want) }); err != nil {
			t.Errorf("%s: %v", h.node.Name, err)
		}
	}
}

// TestEtcdModeCluster: three bare hosts get distinct subnets from etcd,
// program VXLAN as in Kubernetes mode, their pods ping, and a restarted
// flanneld keeps its key, subnet and etcd lease.
func TestEtcdModeCluster(t *testing.T) {
	l, e, nodes := startBareCluster(t, lab.EtcdOptions{}, 3)
	hosts := describeHosts(t, nodes)

	t.Run("distinct subnets and subnet.env", func(t *testing.T) {
		seen := map[netip.Prefix]string{}
		for _, h := range hosts {
			if other, ok := seen[h.subnet]; ok {
				t.Errorf("%s and %s both have %s", h.node.Name, other, h.subnet)
			}
			seen[h.subnet] = h.node.Name
			if h.subnet.Bits() != 24 || !netip.MustParsePrefix(clusterNetwork).Contains(h.subnet.Addr()) || h.subnet.Addr() == netip.MustParseAddr("10.244.0.0") {
				t.Errorf("%s: subnet %s is not a /24 of %s after its first", h.node.Name, h.subnet, clusterNetwork)
			}
			got := h.node.WaitSubnetEnv(t, convergeTimeout)
			want := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", clusterNetwork, netip.PrefixFrom(h.subnet.Addr().Next(), 24).Addr())
			if got != want {
				t.Errorf("%s: subnet.env:\n%s\nwant:\n%s", h.node.Name, got, want)
			}
		}
	})

	t.Run("lease keys", func(t *testing.T) {
		checkLeaseKeys(t, e, hosts)
	})

	t.Run("vxlan device", func(t *testing.T) {
		for _, h := range hosts {
			if err := lab.Poll(convergeTimeout, func() error { return checkBareVXLANDevice(h) }); err != nil {
				t.Errorf("%s: %v", h.node.Name, err)
			}
		}
	})

	t.Run("peer routes neighbours fdb", func(t *testing.T) {
		waitPeerStates(t, hosts, convergeTimeout)
	})

	t.Run("iptables", func(t *testing.T) {
		for _, h := range hosts {
			err := lab.Poll(convergeTimeout, func() error { return checkNodeRules(h.node.Netns, h.subnet.String()) })
			if err != nil {
				t.Errorf("%s: %v", h.node.Name, err)
			}
		}
	})

	var pods []*lab.Pod
	t.Run("ping between pods", func(t *testing.T) {
		for _, n := range nodes {
			pods = append(pods, l.AddPod(t, n, "p1"))
		}
		for _, p := range pods {
			if h := hostOf(hosts, p.Node); !h.subnet.Contains(p.IP) {
				t.Errorf("pod %s/%s has %s, outside its host's subnet %s", p.Node.Name, p.Name, p.IP, h.subnet)
			}
		}
		pingAll(t, pods)
	})

	t.Run("restart keeps key subnet and etcd lease", func(t *testing.T) {
		before := e.LeaseKeys(t)
		for _, kill := range []bool{false, true} {
			h := hosts[1]
			restartBareHost(t, l, e, h.node, kill)
			if sn := subnetOf(t, h.node); sn != h.subnet {
				t.Errorf("after restart (kill %v) %s has %s, want %s", kill, h.node.Name, sn, h.subnet)
			}
			checkEtcdLeasesKept(t, before, checkLeaseKeys(t, e, hosts))
		}
		waitPeerStates(t, hosts, convergeTimeout)
		if len(pods) == len(nodes) {
			pingAll(t, pods)
		}
	})
}

// restartBareHost restarts flanneld on n: with kill, by kill -9 and with
// /run emptied as after a reboot (the lease is then found by public IP),
// else by SIGTERM. It waits until flanneld is ready and checks that it took
// back its lease.
func restartBareHost(t *testing.T, l *lab.Lab, e *lab.Etcd, n *lab.Node, kill bool) {
	t.Helper()
	p := n.Flanneld()
	if kill {
		p.Kill9()
		if err := os.Remove(n.SubnetFile); err != nil {
			t.Fatal(err)
		}
	} else {
		p.Stop()
	}
	p = l.StartEtcdFlanneld(t, e, n, nil)
	n.WaitReady(t, readyTimeout)
	if !strings.Contains(p.Log(), `how="renewed"`) {
		t.Errorf("restarted flanneld did not log taking back its lease:\n%s", tailLinesOf(p.Log(), 30))
	}
}

// checkEtcdLeasesKept checks that every key of before is still bound to
// the same etcd lease in after.
func checkEtcdLeasesKept(t *testing.T, before, after map[string]lab.EtcdKV) {
	t.Helper()
	for name, kv := range before {
		if after[name].Lease != kv.Lease {
			t.Errorf("key %s: etcd lease %x before the restart, %x after", name, kv.Lease, after[name].Lease)
		}
	}
}

func hostOf(hosts []bareHost, n *lab.Node) bareHost {
	for _, h := range hosts {
		if h.node == n {
			return h
		}
	}
	return bareHost{}
}

func tailLinesOf(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestEtcdModeManyHosts: 20 flanneld started at once against one etcd
// get 20 distinct subnets, never the reserved one, even though the range
// holds exactly 20 free subnets and some hosts ask for the reserved one in
// their subnet.env; a 21st host finds the network full and says so.
func TestEtcdModeManyHosts(t *testing.T) {
	const count = 20
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.NewBare(t)
	e := l.StartEtcd(t, lab.EtcdOptions{})
	// 21 subnets (10.244.1-21.0/24), one of them reserved.
	e.PutNetworkConfig(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.21.0","Backend":{"Type":"vxlan"}}`)
	const reservedKey = "10.244.7.0-24"
	const reservedValue = `{"PublicIP":"192.168.100.250"}`
	e.Put(t, lab.EtcdPrefix+"/subnets/"+reservedKey, reservedValue)

	nodes := make([]*lab.Node, count+1)
	for i := range nodes {
		nodes[i] = l.AddBareNode(t, fmt.Sprintf("h%d", i+1))
	}
	// Every third host had the reserved subnet before.
	for i := 0; i < count; i += 3 {
		content := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
		if err := os.WriteFile(nodes[i].SubnetFile, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	for _, n := range nodes[:count] {
		l.StartEtcdFlanneld(t, e, n, nil)
	}
	subnets := map[netip.Prefix]string{}
	var hosts []bareHost
	err := lab.Poll(2*time.Minute, func() error {
		for _, n := range nodes[:count] {
			if _, err := os.Stat(n.SubnetFile); err != nil {
				return err
			}
		}
		if kv := e.LeaseKeys(t); len(kv) < count+1 {
			return fmt.Errorf("%d lease keys", len(kv))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("20 hosts did not all acquire: %v", err)
	}
	keys := e.LeaseKeys(t)
	etcdMetric(t, "etcd_20_hosts_all_acquired", time.Since(start))
	for _, n := range nodes[:count] {
		sn := subnetOf(t, n)
		if other, ok := subnets[sn]; ok {
			t.Errorf("%s and %s both have %s", n.Name, other, sn)
		}
		subnets[sn] = n.Name
		if etcdKeyName(sn) == reservedKey {
			t.Errorf("%s was given the reserved subnet %s", n.Name, sn)
		}
		kv, ok := keys[etcdKeyName(sn)]
		if !ok || !strings.Contains(kv.Value, `"PublicIP":"`+n.IP.String()+`"`) || kv.Lease == 0 {
			t.Errorf("%s: key %s = %+v, want its public IP %s and an etcd lease", n.Name, etcdKeyName(sn), kv, n.IP)
		}
		hosts = append(hosts, bareHost{node: n, subnet: sn})
	}
	if len(keys) != count+1 {
		t.Errorf("%d lease keys, want %d hosts + the reservation", len(keys), count)
	}
	if kv := keys[reservedKey]; kv.Value != reservedValue || kv.Lease != 0 {
		t.Errorf("reservation after 20 hosts joined: %+v, want %s without an etcd lease", kv, reservedValue)
	}
	var races int
	for _, n := range nodes[:count] {
		races += strings.Count(n.Flanneld().Log(), "Lease raced with another host")
	}
	t.Logf("%d lease transactions lost a race and were retried", races)

	t.Run("all ready", func(t *testing.T) {
		start := time.Now()
		for _, n := range nodes[:count] {
			if err := n.PollReady(2 * time.Minute); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		etcdMetric(t, "etcd_20_hosts_all_ready", time.Since(start))
		for i := range hosts {
			hosts[i].mac = vtepMAC(t, hosts[i].node)
		}
		// Spot-check the full mesh on two hosts: exactly the 19 others,
		// not the reservation (it has no backend data to program).
		for _, i := range []int{0, count - 1} {
			want := etcdPeerState(hosts, i)
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(hosts[i].node.Netns, want) }); err != nil {
				t.Errorf("%s: %v", hosts[i].node.Name, err)
			}
		}
	})

	t.Run("out of subnets", func(t *testing.T) {
		n := nodes[count]
		p := l.StartEtcdFlanneld(t, e, n, nil)
		code, ok := p.WaitExit(readyTimeout)
		if !ok || code != 1 {
			t.Fatalf("21st host: flanneld %s (exit code %d), want exit 1", map[bool]string{true: "exited", false: "still running"}[ok], code)
		}
		if !strings.Contains(p.Log(), "out of subnets") {
			t.Errorf("21st host's error does not say the network is full:\n%s", tailLinesOf(p.Log(), 10))
		}
		if len(e.LeaseKeys(t)) != count+1 {
			t.Errorf("the 21st host changed the lease keys")
		}
	})
}

// TestEtcdModeOutage: etcd is stopped for 30 s. The datapath stays (pods
// ping throughout), flanneld keeps running and keeps its lease; a host
// started during the outage waits, and once etcd is back it acquires a
// subnet and the others program it.
func TestEtcdModeOutage(t *testing.T) {
	const outage = 30 * time.Second
	l, e, nodes := newBareCluster(t, lab.EtcdOptions{}, 4)
	old, late := nodes[:3], nodes[3]
	for _, n := range old {
		l.StartEtcdFlanneld(t, e, n, nil)
	}
	for _, n := range old {
		n.WaitReady(t, readyTimeout)
	}
	hosts := describeHosts(t, old)
	waitPeerStates(t, hosts, convergeTimeout)
	var pods []*lab.Pod
	for _, n := range old {
		pods = append(pods, l.AddPod(t, n, "p1"))
	}
	pingAll(t, pods)
	before := checkLeaseKeys(t, e, hosts)

	// Pings every 200 ms from before the outage until after it.
	const interval = 200 * time.Millisecond
	count := int((outage + 20*time.Second) / interval)
	pings := []*pingRun{
		startPing(t, l, pods[0], pods[1].IP, interval, count),
		startPing(t, l, pods[1], pods[2].IP, interval, count),
		startPing(t, l, pods[2], pods[0].IP, interval, count),
	}
	time.Sleep(2 * time.Second)

	down := time.Now()
	e.Stop(t)
	t.Logf("etcd stopped")
	p4 := l.StartEtcdFlanneld(t, e, late, nil)

	t.Run("during the outage", func(t *testing.T) {
		// The new host waits, saying why, and has no subnet.
		if err := lab.Poll(outage-5*time.Second, func() error {
			if !p4.Running() {
				return errors.New("flanneld on the new host exited")
			}
			if !strings.Contains(p4.Log(), "etcd request failed; retrying") {
				return errors.New("flanneld on the new host has not logged that etcd is unreachable")
			}
			return nil
		}); err != nil {
			t.Errorf("%v; log:\n%s", err, tailLinesOf(p4.Log(), 20))
		}
		if _, err := os.Stat(late.SubnetFile); err == nil {
			t.Errorf("the new host wrote subnet.env while etcd was down")
		}
		for _, p := range pods {
			for _, q := range pods {
				if p != q {
					if err := lab.Ping(p, q.IP); err != nil {
						t.Errorf("during the outage: ping %s -> %s: %v", p.Node.Name, q.Node.Name, err)
					}
				}
			}
		}
	})
	time.Sleep(time.Until(down.Add(outage)))
	for _, n := range old {
		if p := n.Flanneld(); !p.Running() {
			t.Fatalf("flanneld on %s %s during the etcd outage", n.Name, p.Log())
		}
	}
	e.Start(t)
	back := time.Now()
	t.Logf("etcd back after %v", back.Sub(down).Round(100*time.Millisecond))

	t.Run("new host joins", func(t *testing.T) {
		sn := subnetOf(t, late)
		etcdMetric(t, "etcd_outage_new_host_subnet", time.Since(back))
		newHost := bareHost{node: late, subnet: sn, mac: vtepMAC(t, late)}
		all := append(slices.Clone(hosts), newHost)
		for i, h := range all {
			want := etcdPeerState(all, i)
			if err := lab.Poll(2*time.Minute, func() error { return checkPeerState(h.node.Netns, want) }); err != nil {
				t.Errorf("%s: %v", h.node.Name, err)
			}
		}
		etcdMetric(t, "etcd_outage_new_host_programmed_everywhere", time.Since(back))
		late.WaitReady(t, readyTimeout)
		etcdMetric(t, "etcd_outage_new_host_ready", time.Since(back))
		hosts = all
	})

	t.Run("leases kept", func(t *testing.T) {
		after := checkLeaseKeys(t, e, hosts)
		for name, kv := range before {
			if a, ok := after[name]; !ok || a.Lease != kv.Lease || a.ModRevision != kv.ModRevision {
				t.Errorf("key %s: lease %x rev %d before the outage, %+v after", name, kv.Lease, kv.ModRevision, a)
			}
		}
		for _, n := range old {
			if strings.Count(n.Flanneld().Log(), "Acquired etcd lease") != 1 {
				t.Errorf("%s acquired its lease more than once:\n%s", n.Name, tailLinesOf(n.Flanneld().Log(), 20))
			}
		}
	})

	t.Run("datapath intact", func(t *testing.T) {
		for _, r := range pings {
			sent, received := r.wait(t, time.Until(down.Add(outage+30*time.Second)))
			t.Logf("%s: %d/%d replies across the outage", r.proc.Name, received, sent)
			if sent < r.count*9/10 || received != sent {
				t.Errorf("%s: %d requests, %d replies; want every reply", r.proc.Name, sent, received)
			}
		}
		p := l.AddPod(t, late, "p1")
		pingAll(t, append(pods, p))
	})
}

// TestEtcdModeTLS: flanneld reaches an https etcd that requires client
// certificates, with --etcd-cafile/--etcd-certfile/--etcd-keyfile.
func TestEtcdModeTLS(t *testing.T) {
	l, e, nodes := newBareCluster(t, lab.EtcdOptions{TLS: true}, 3)
	if !strings.HasPrefix(e.URL, "https://") {
		t.Fatalf("etcd URL %s", e.URL)
	}
	for _, n := range nodes[:2] {
		l.StartEtcdFlanneld(t, e, n, nil)
	}
	for _, n := range nodes[:2] {
		n.WaitReady(t, readyTimeout)
	}
	hosts := describeHosts(t, nodes[:2])
	checkLeaseKeys(t, e, hosts)
	waitPeerStates(t, hosts, convergeTimeout)

	// Without a client certificate etcd refuses the connection: flanneld
	// keeps trying and says why.
	p := l.StartEtcdFlanneld(t, e, nodes[2], nil, "--etcd-certfile=", "--etcd-keyfile=")
	waitLog := func() error {
		if !p.Running() {
			return errors.New("exited")
		}
		if !strings.Contains(p.Log(), "etcd request failed; retrying") {
			return errors.New("no retry logged")
		}
		return nil
	}
	if err := lab.Poll(readyTimeout, waitLog); err != nil {
		t.Errorf("flanneld without a client certificate: %v; log:\n%s", err, tailLinesOf(p.Log(), 20))
	}
	if _, err := os.Stat(nodes[2].SubnetFile); err == nil {
		t.Errorf("flanneld without a client certificate acquired a subnet")
	}
}
