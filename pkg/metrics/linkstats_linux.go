package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
)

// LinkStats exports the kernel's packet, byte and drop counters of the
// devices flanneld owns (flannel.1), read at scrape time. The daemon does
// not see the packets of the kernel datapath itself; these counters are
// what the kernel counted on its device.
type LinkStats struct {
	H     *netlink.Handle
	Links func() []int

	packets, bytes, dropped *prometheus.Desc
}

// NewLinkStats returns the collector for the links that links() names.
func NewLinkStats(h *netlink.Handle, links func() []int) *LinkStats {
	labels := []string{"device", "direction"}
	return &LinkStats{
		H: h, Links: links,
		packets: prometheus.NewDesc(namespace+"_device_packets_total", "Packets through flanneld's device, by direction (rx, tx).", labels, nil),
		bytes:   prometheus.NewDesc(namespace+"_device_bytes_total", "Bytes through flanneld's device, by direction.", labels, nil),
		dropped: prometheus.NewDesc(namespace+"_device_dropped_total", "Packets the kernel dropped on flanneld's device, by direction.", labels, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *LinkStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.dropped
}

// Collect implements prometheus.Collector.
func (c *LinkStats) Collect(ch chan<- prometheus.Metric) {
	for _, idx := range c.Links() {
		link, err := c.H.LinkByIndex(idx)
		if err != nil || link.Attrs().Statistics == nil {
			continue
		}
		s, name := link.Attrs().Statistics, link.Attrs().Name
		for _, m := range []struct {
			desc   *prometheus.Desc
			rx, tx uint64
		}{
			{c.packets, s.RxPackets, s.TxPackets},
			{c.bytes, s.RxBytes, s.TxBytes},
			{c.dropped, s.RxDropped, s.TxDropped},
		} {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.rx), name, "rx")
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.tx), name, "tx")
		}
	}
}
