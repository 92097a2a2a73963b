package datapath

// Reference rows: the same datapath as a backend, configured by hand with
// ip(8) and no flanneld (so no firewall rules and no daemon). Comparing a
// backend with its by-hand row separates what flanneld adds from what the
// kernel's path costs.

import (
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/flanneld/flanneld/e2e/lab"
)

// byHandPrefix marks a pseudo-backend: "by-hand-host-gw", "by-hand-vxlan".
const byHandPrefix = "by-hand-"

// setupByHand programs nodes a and b as flanneld's backend kind would,
// without flanneld, and writes their subnet.env for the CNI plugin.
func setupByHand(kind string, a, b *lab.Node) error {
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

// byHandMAC is a fixed locally administered MAC for node n's VTEP.
func byHandMAC(n *lab.Node) string {
	ip := n.IP.As4()
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", ip[0], ip[1], ip[2], ip[3])
}

func isByHand(backendType string) (kind string, ok bool) {
	return strings.CutPrefix(backendType, byHandPrefix)
}
