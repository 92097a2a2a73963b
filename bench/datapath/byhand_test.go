package datapath

// Reference rows: the same datapath as a backend, configured by hand with
// ip(8) and no flanneld. "by-hand-<type>" also installs flanneld's firewall
// rules (REFERENCE section 6, as with --ip-masq) with iptables-restore, so
// it differs from the backend's row only in who programmed the kernel;
// "by-hand-<type>-bare" has no rules at all (no conntrack, no NAT), which
// shows what the masquerade rules cost.

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/flanneld/flanneld/e2e/lab"
)

// byHandPrefix marks a pseudo-backend: "by-hand-host-gw", "by-hand-vxlan",
// and the same with bareSuffix.
const (
	byHandPrefix = "by-hand-"
	bareSuffix   = "-bare"
)

// setupByHand programs nodes a and b as flanneld's backend kind would,
// without flanneld, and writes their subnet.env for the CNI plugin. Unless
// kind ends in bareSuffix, it installs flanneld's firewall rules too.
func setupByHand(kind string, a, b *lab.Node) error {
	kind, bare := strings.CutSuffix(kind, bareSuffix)
	var cmds func(self, peer *lab.Node) [][]string
	mtu := 1500
	switch kind {
	case "host-gw":
		cmds = func(self, peer *lab.Node) [][]string {
			return [][]string{{"ip", "route", "replace", peer.PodCIDR, "via", peer.IP.String(), "dev", "eth0"}}
		}
	case "vxlan":
		mtu = 1450
		cmds = func(self, peer *lab.Node) [][]string {
			peerGW := netip.MustParsePrefix(peer.PodCIDR).Addr().String()
			return [][]string{
				{"ip", "neigh", "replace", peerGW, "lladdr", byHandMAC(peer), "dev", "flannel.1", "nud", "permanent"},
				{"bridge", "fdb", "append", byHandMAC(peer), "dev", "flannel.1", "dst", peer.IP.String(), "self", "permanent"},
				{"ip", "route", "replace", peer.PodCIDR, "via", peerGW, "dev", "flannel.1", "onlink"},
			}
		}
		for _, n := range []*lab.Node{a, b} {
			own := netip.MustParsePrefix(n.PodCIDR).Addr().String() + "/32"
			for _, argv := range [][]string{
				{"ip", "link", "add", "flannel.1", "address", byHandMAC(n), "mtu", "1450", "type", "vxlan", "id", "1",
					"local", n.IP.String(), "dev", "eth0", "dstport", "8472", "nolearning"},
				{"ip", "addr", "add", own, "dev", "flannel.1"},
				{"ip", "link", "set", "flannel.1", "up"},
			} {
				if _, err := lab.Exec(n.Netns, argv...); err != nil {
					return err
				}
			}
		}
	default:
		return fmt.Errorf("no by-hand setup for backend %q (known: host-gw, vxlan)", kind)
	}
	if !bare {
		for _, n := range []*lab.Node{a, b} {
			if err := installRules(n); err != nil {
				return err
			}
		}
	}
	for _, pair := range [][2]*lab.Node{{a, b}, {b, a}} {
		for _, argv := range cmds(pair[0], pair[1]) {
			if _, err := lab.Exec(pair[0].Netns, argv...); err != nil {
				return err
			}
		}
		gw := netip.MustParsePrefix(pair[0].PodCIDR).Addr().Next()
		env := fmt.Sprintf("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=true\n", gw, mtu)
		if err := os.WriteFile(pair[0].SubnetFile, []byte(env), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// installRules loads REFERENCE section 6's rules for node n.
func installRules(n *lab.Node) error {
	const network = "10.244.0.0/16"
	masq := `-m comment --comment "flanneld masq"`
	fwd := `-m comment --comment "flanneld forward"`
	rules := strings.Join([]string{
		"*nat",
		":FLANNEL-POSTRTG - [0:0]",
		"-A POSTROUTING " + masq + " -j FLANNEL-POSTRTG",
		"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 " + masq + " -j RETURN",
		"-A FLANNEL-POSTRTG -s " + n.PodCIDR + " -d " + network + " " + masq + " -j RETURN",
		"-A FLANNEL-POSTRTG -s " + network + " -d " + n.PodCIDR + " " + masq + " -j RETURN",
		"-A FLANNEL-POSTRTG ! -s " + network + " -d " + n.PodCIDR + " " + masq + " -j RETURN",
		"-A FLANNEL-POSTRTG -s " + network + " ! -d 224.0.0.0/4 " + masq + " -j MASQUERADE --random-fully",
		"-A FLANNEL-POSTRTG ! -s " + network + " -d " + network + " " + masq + " -j MASQUERADE --random-fully",
		"COMMIT",
		"*filter",
		":FLANNEL-FWD - [0:0]",
		"-A FORWARD " + fwd + " -j FLANNEL-FWD",
		"-A FLANNEL-FWD -s " + network + " " + fwd + " -j ACCEPT",
		"-A FLANNEL-FWD -d " + network + " " + fwd + " -j ACCEPT",
		"COMMIT",
		"",
	}, "\n")
	path := filepath.Join(n.Dir, "rules.txt")
	if err := os.WriteFile(path, []byte(rules), 0o644); err != nil {
		return err
	}
	_, err := lab.Exec(n.Netns, "iptables-restore", "--noflush", path)
	return err
}

// byHandMAC is a fixed locally administered MAC for node n's VTEP.
func byHandMAC(n *lab.Node) string {
	ip := n.IP.As4()
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", ip[0], ip[1], ip[2], ip[3])
}

func isByHand(backendType string) (kind string, ok bool) {
	return strings.CutPrefix(backendType, byHandPrefix)
}
