package e2e

// IPv6 in etcd mode: bare hosts on an IPv6 underlay (lab.NewBare with
// lab.WithIPv6) get one key per host naming an IPv4 and an IPv6 subnet
// (upstream's "10.244.1.0-24&fd00:10:244:1::-64", REFERENCE section 7).
// Subnets are chosen at random, so expectations are built from each
// host's subnet.env.

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/e2e/lab"
)

// etcdDualStackNetConf is the dual-stack network configuration in etcd.
const etcdDualStackNetConf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`

// dualHost is a dual-stack bare host with what it acquired.
type dualHost struct {
	node             *lab.Node
	subnet, subnet6  netip.Prefix // e.g. 10.244.37.0/24, fd00:10:244:5a::/64
	mac, mac6        string       // flannel.1's and flannel-v6.1's MACs
	subnetEnvContent string
}

// keyName is the host's dual-stack lease key under <prefix>/subnets/.
func (h dualHost) keyName() string {
	return etcdKeyName(h.subnet) + "&" + etcdKeyName(h.subnet6)
}

func (h dualHost) nodeName() string { return h.node.Name }

// leaseValue is the value upstream flannel writes for a dual-stack vxlan
// host.
func (h dualHost) leaseValue() string {
	return fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":%s,"BackendV6Data":%s}`,
		h.node.IP, h.node.IPv6, vxlanBackendData(h.mac), vxlanBackendData(h.mac6))
}

// newDualStackBareCluster builds a bare lab with an IPv6 underlay, etcd
// holding conf, and count hosts n1, n2, ... running flanneld, ready.
func newDualStackBareCluster(t *testing.T, conf string, count int) (*lab.Lab, *lab.Etcd, []*lab.Node) {
	t.Helper()
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.NewBare(t, lab.WithIPv6())
	e := l.StartEtcd(t, lab.EtcdOptions{})
	e.PutNetworkConfig(t, conf)
	nodes := make([]*lab.Node, count)
	for i := range nodes {
		nodes[i] = l.AddBareNode(t, fmt.Sprintf("n%d", i+1))
		if !nodes[i].IPv6.IsValid() {
			t.Fatalf("bare host %s has no IPv6 underlay address", nodes[i].Name)
		}
	}
	for _, n := range nodes {
		l.StartEtcdFlanneld(t, e, n, nil)
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}
	return l, e, nodes
}

// describeDualHosts reads each host's subnet.env and VXLAN devices.
func describeDualHosts(t *testing.T, nodes []*lab.Node) []dualHost {
	t.Helper()
	return describeDualHostsOf(t, nodes, true)
}

// describeDualHostsOf is describeDualHosts, without the VXLAN devices'
// MACs unless vxlan.
func describeDualHostsOf(t *testing.T, nodes []*lab.Node, vxlan bool) []dualHost {
	t.Helper()
	hosts := make([]dualHost, len(nodes))
	for i, n := range nodes {
		content := n.WaitSubnetEnv(t, readyTimeout)
		env := lab.ParseSubnetEnv(content)
		h := dualHost{node: n, subnetEnvContent: content}
		for _, f := range []struct {
			key string
			dst *netip.Prefix
		}{{"FLANNEL_SUBNET", &h.subnet}, {"FLANNEL_IPV6_SUBNET", &h.subnet6}} {
			p, err := netip.ParsePrefix(env[f.key])
			if err != nil {
				t.Fatalf("%s: %s: %v\n%s", n.Name, f.key, err, content)
			}
			*f.dst = p.Masked()
		}
		if vxlan {
			h.mac, h.mac6 = vtepMACOf(t, n, vxlanDevice), vtepMACOf(t, n, vxlanDevice6)
		}
		hosts[i] = h
	}
	return hosts
}

// dualPeerState is what host self needs for every other host in family
// fam (the device of fam, the other hosts' subnets of fam).
func dualPeerState(hosts []dualHost, self int, fam podFamily) peerState {
	var s peerState
	for j, h := range hosts {
		if j == self {
			continue
		}
		sn, mac := h.subnet, h.mac
		if fam.ipv6 {
			sn, mac = h.subnet6, h.mac6
		}
		gw := sn.Addr().String()
		s.routes = append(s.routes, fmt.Sprintf("%s via %s dev %s onlink", sn, gw, fam.device))
		s.neighbours = append(s.neighbours, fmt.Sprintf("%s dev %s lladdr %s PERMANENT", gw, fam.device, mac))
		s.fdb = append(s.fdb, fmt.Sprintf("%s dev %s dst %s self permanent", mac, fam.device, fam.nodeIP(h.node)))
	}
	return s
}

func waitDualPeerStates(t *testing.T, hosts []dualHost) {
	t.Helper()
	for i, h := range hosts {
		for _, fam := range []podFamily{familyIPv4, familyIPv6} {
			want := dualPeerState(hosts, i, fam)
			if err := lab.Poll(convergeTimeout, func() error { return checkPeerStateOf(h.node.Netns, fam, want) }); err != nil {
				t.Errorf("%s, %s: %v", h.node.Name, fam.name, err)
			}
		}
	}
}

// addDualPods adds a pod on every host, checks its addresses are in its
// host's subnets, and pings between them over IPv4 and IPv6.
func addDualPods(t *testing.T, l *lab.Lab, hosts []dualHost, name string) []*lab.Pod {
	t.Helper()
	var pods []*lab.Pod
	for _, h := range hosts {
		p := l.AddPod(t, h.node, name)
		if !h.subnet.Contains(p.IP) || !h.subnet6.Contains(p.IPv6) {
			t.Errorf("pod %s/%s has %s and %s, not in its host's subnets %s and %s", h.node.Name, p.Name, p.IP, p.IPv6, h.subnet, h.subnet6)
		}
		pods = append(pods, p)
	}
	pingAll(t, pods)
	pingAll6(t, pods)
	return pods
}

// TestEtcdModeDualStack: three dual-stack bare hosts get distinct IPv4 and
// IPv6 subnets in one key each, with upstream's names and values, program
// both VXLAN devices and firewall families, their pods ping over both
// families, and a restarted flanneld (also after a reboot) keeps its key.
func TestEtcdModeDualStack(t *testing.T) {
	l, e, nodes := newDualStackBareCluster(t, etcdDualStackNetConf, 3)
	hosts := describeDualHosts(t, nodes)

	t.Run("distinct subnets and subnet.env", func(t *testing.T) {
		seen := map[netip.Prefix]string{}
		for _, h := range hosts {
			for _, sn := range []netip.Prefix{h.subnet, h.subnet6} {
				if other, ok := seen[sn]; ok {
					t.Errorf("%s and %s both have %s", h.node.Name, other, sn)
				}
				seen[sn] = h.node.Name
			}
			if h.subnet.Bits() != 24 || !netip.MustParsePrefix(clusterNetwork).Contains(h.subnet.Addr()) || h.subnet.Addr() == netip.MustParseAddr("10.244.0.0") {
				t.Errorf("%s: subnet %s is not a /24 of %s after its first", h.node.Name, h.subnet, clusterNetwork)
			}
			if h.subnet6.Bits() != 64 || !netip.MustParsePrefix(clusterNetwork6).Contains(h.subnet6.Addr()) || h.subnet6.Addr() == netip.MustParseAddr("fd00:10:244::") {
				t.Errorf("%s: IPv6 subnet %s is not a /64 of %s after its first", h.node.Name, h.subnet6, clusterNetwork6)
			}
			want := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/24\nFLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
				clusterNetwork, h.subnet.Addr().Next(), clusterNetwork6, h.subnet6.Addr().Next())
			if h.subnetEnvContent != want {
				t.Errorf("%s: subnet.env:\n%s\nwant:\n%s", h.node.Name, h.subnetEnvContent, want)
			}
		}
	})

	t.Run("lease keys", func(t *testing.T) { checkLeaseKeys(t, e, hosts) })

	t.Run("vxlan devices", func(t *testing.T) {
		for _, h := range hosts {
			for _, c := range []struct {
				fam   podFamily
				local string
				sn    netip.Prefix
			}{{familyIPv4, h.node.IP.String(), h.subnet}, {familyIPv6, h.node.IPv6.String(), h.subnet6}} {
				if err := lab.Poll(convergeTimeout, func() error { return checkVTEP(h.node.Netns, c.fam, c.local, c.sn.Addr().String()) }); err != nil {
					t.Errorf("%s: %v", h.node.Name, err)
				}
			}
		}
	})

	t.Run("peer routes neighbours fdb", func(t *testing.T) { waitDualPeerStates(t, hosts) })

	t.Run("iptables and ip6tables", func(t *testing.T) {
		for _, h := range hosts {
			if err := lab.Poll(convergeTimeout, func() error { return checkNodeRules(h.node.Netns, h.subnet.String()) }); err != nil {
				t.Errorf("%s, IPv4: %v", h.node.Name, err)
			}
			if err := lab.Poll(convergeTimeout, func() error { return checkNodeRules6(h.node.Netns, h.subnet6.String()) }); err != nil {
				t.Errorf("%s, IPv6: %v", h.node.Name, err)
			}
		}
	})

	var pods []*lab.Pod
	t.Run("ping between pods", func(t *testing.T) { pods = addDualPods(t, l, hosts, "p1") })

	t.Run("restart keeps key and etcd lease", func(t *testing.T) {
		before := e.LeaseKeys(t)
		h := hosts[1]
		for _, kill := range []bool{false, true} {
			restartBareHost(t, l, e, h.node, kill)
			if got := describeDualHosts(t, []*lab.Node{h.node})[0]; got.subnet != h.subnet || got.subnet6 != h.subnet6 || got.mac6 != h.mac6 {
				t.Errorf("after restart (kill %v) %s has %s %s (v6 MAC %s), want %s %s (%s)", kill, h.node.Name, got.subnet, got.subnet6, got.mac6, h.subnet, h.subnet6, h.mac6)
			}
			checkEtcdLeasesKept(t, before, checkLeaseKeys(t, e, hosts))
		}
		waitDualPeerStates(t, hosts)
		if len(pods) == len(hosts) {
			pingAll(t, pods)
			pingAll6(t, pods)
		}
	})
}

// TestEtcdModeEnableIPv6: IPv4-only bare hosts on an IPv6 underlay are
// switched to dual stack (the config in etcd changed, flanneld restarted
// host by host): each keeps its IPv4 subnet, its IPv4-only key is replaced
// by a dual-stack one in the same transaction, and pods ping over both
// families.
func TestEtcdModeEnableIPv6(t *testing.T) {
	l, e, nodes := newDualStackBareCluster(t, etcdNetConf, 2)
	before := map[*lab.Node]netip.Prefix{}
	for _, n := range nodes {
		before[n] = subnetOf(t, n)
	}
	if keys := e.LeaseKeys(t); len(keys) != 2 {
		t.Fatalf("IPv4-only keys: %v", keys)
	}

	e.PutNetworkConfig(t, etcdDualStackNetConf)
	for _, n := range nodes {
		n.Flanneld().Stop()
		p := l.StartEtcdFlanneld(t, e, n, nil)
		n.WaitReady(t, readyTimeout)
		if !strings.Contains(p.Log(), "Deleting this host's lease that does not fit") {
			t.Errorf("%s: flanneld did not log replacing its IPv4-only key:\n%s", n.Name, tailLinesOf(p.Log(), 30))
		}
	}
	if err := lab.Poll(convergeTimeout, func() error {
		for _, n := range nodes {
			if !strings.Contains(n.WaitSubnetEnv(t, readyTimeout), "FLANNEL_IPV6_SUBNET=") {
				return fmt.Errorf("%s: no IPv6 subnet in subnet.env yet", n.Name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	hosts := describeDualHosts(t, nodes)
	for _, h := range hosts {
		if h.subnet != before[h.node] {
			t.Errorf("%s: IPv4 subnet %s after enabling IPv6, want %s kept", h.node.Name, h.subnet, before[h.node])
		}
	}
	checkLeaseKeys(t, e, hosts)
	waitDualPeerStates(t, hosts)
	addDualPods(t, l, hosts, "p1")
}

// TestEtcdModeIPv6Only: IPv6-only bare hosts get IPv6-only keys
// ("fd00:10:244:5a::-64", PublicIP null), an IPv6-only subnet.env, and
// their pods ping over IPv6; a restarted flanneld takes its key back by its
// public IPv6 address.
func TestEtcdModeIPv6Only(t *testing.T) {
	l, e, nodes := newDualStackBareCluster(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`, 2)
	type host struct {
		node    *lab.Node
		subnet6 netip.Prefix
		mac6    string
	}
	var hosts []host
	for _, n := range nodes {
		content := n.WaitSubnetEnv(t, readyTimeout)
		p, err := netip.ParsePrefix(lab.ParseSubnetEnv(content)["FLANNEL_IPV6_SUBNET"])
		if err != nil {
			t.Fatalf("%s: subnet.env %q: %v", n.Name, content, err)
		}
		h := host{node: n, subnet6: p.Masked(), mac6: vtepMACOf(t, n, vxlanDevice6)}
		want := fmt.Sprintf("FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n", clusterNetwork6, h.subnet6.Addr().Next())
		if content != want {
			t.Errorf("%s: subnet.env:\n%s\nwant:\n%s", n.Name, content, want)
		}
		hosts = append(hosts, h)
	}
	checkKeys := func(when string) map[string]lab.EtcdKV {
		keys := e.LeaseKeys(t)
		if len(keys) != len(hosts) {
			t.Errorf("%s: lease keys %v, want one per host", when, keys)
		}
		for _, h := range hosts {
			name := etcdKeyName(h.subnet6)
			want := fmt.Sprintf(`{"PublicIP":null,"PublicIPv6":"%s","BackendType":"vxlan","BackendData":null,"BackendV6Data":%s}`, h.node.IPv6, vxlanBackendData(h.mac6))
			if kv, ok := keys[name]; !ok || kv.Value != want || kv.Lease == 0 {
				t.Errorf("%s: %s: key %s = %+v, want %s bound to an etcd lease", when, h.node.Name, name, kv, want)
			}
		}
		return keys
	}
	checkKeys("at start")
	var pods []*lab.Pod
	for _, h := range hosts {
		p := l.AddPod(t, h.node, "p1")
		if !h.subnet6.Contains(p.IPv6) {
			t.Errorf("pod %s/%s has %s, not in %s", h.node.Name, p.Name, p.IPv6, h.subnet6)
		}
		pods = append(pods, p)
	}
	pingAll6(t, pods)

	// A restart (device kept) takes the key back by the public IPv6 address.
	n := hosts[0].node
	n.Flanneld().Stop()
	p := l.StartEtcdFlanneld(t, e, n, nil)
	n.WaitReady(t, readyTimeout)
	if !strings.Contains(p.Log(), `how="renewed"`) {
		t.Errorf("restarted flanneld did not log taking back its lease:\n%s", tailLinesOf(p.Log(), 30))
	}
	checkKeys("after a restart")
	pingAll6(t, pods)
}

// TestEtcdModeDualStackHostGW: host-gw in etcd mode, dual stack: each host
// routes its peers' IPv4 and IPv6 subnets via their public IPs, and pods
// ping over both families.
func TestEtcdModeDualStackHostGW(t *testing.T) {
	l, e, nodes := newDualStackBareCluster(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`, 2)
	hosts := describeDualHostsOf(t, nodes, false)
	keys := e.LeaseKeys(t)
	for _, h := range hosts {
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"host-gw","BackendData":null}`, h.node.IP, h.node.IPv6)
		if kv, ok := keys[h.keyName()]; !ok || kv.Value != want {
			t.Errorf("%s: key %s = %+v, want %s", h.node.Name, h.keyName(), kv, want)
		}
	}
	for i, h := range hosts {
		peer := hosts[1-i]
		for _, c := range []struct {
			show func(ns string) ([]lab.Route, error)
			want string
		}{
			{lab.ShowRoutes, fmt.Sprintf("%s via %s dev eth0", peer.subnet, peer.node.IP)},
			{lab.ShowRoutes6, fmt.Sprintf("%s via %s dev eth0", peer.subnet6, peer.node.IPv6)},
		} {
			err := lab.Poll(convergeTimeout, func() error {
				routes, err := c.show(h.node.Netns)
				if err != nil {
					return err
				}
				var got []string
				for _, r := range routes {
					line := fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gateway, r.Dev)
					if line == c.want {
						return nil
					}
					got = append(got, line)
				}
				return fmt.Errorf("no route %q among %v", c.want, got)
			})
			if err != nil {
				t.Errorf("%s: %v", h.node.Name, err)
			}
		}
	}
	addDualPods(t, l, hosts, "p1")
}
