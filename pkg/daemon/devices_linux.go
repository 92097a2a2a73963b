package daemon

import (
	"fmt"
	"regexp"
	"slices"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
)

// flannelDevice matches the names of the devices flannel backends create:
// flannel.<VNI> and flannel-v6.<VNI> (vxlan), flannel0 (udp), flannel-wg
// and flannel-wg-v6 (wireguard).
var flannelDevice = regexp.MustCompile(`^(flannel\.[0-9]+|flannel-v6\.[0-9]+|flannel0|flannel-wg|flannel-wg-v6)$`)

// removeStaleDevices deletes the devices of other flannel backends (or of
// another VNI) than the running one, left by a previous run with another
// configuration. Their neighbours, FDB entries and routes go with them.
func removeStaleDevices(h *netlink.Handle, keep []int) error {
	links, err := ip.Dump{H: h}.Links()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, link := range links {
		a := link.Attrs()
		if !flannelDevice.MatchString(a.Name) || slices.Contains(keep, a.Index) {
			continue
		}
		if t := link.Type(); t != "vxlan" && t != "tuntap" && t != "tun" && t != "wireguard" {
			continue
		}
		klog.InfoS("Removing the device of another backend configuration", "device", a.Name, "type", link.Type())
		if err := h.LinkDel(link); err != nil {
			return fmt.Errorf("remove stale device %s: %w", a.Name, err)
		}
	}
	return nil
}
