package metrics

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// UDPDrops exports the drop counters of the udp backend's forwarder, which
// runs in flanneld: packets dropped by reason (a fixed set: a datagram from
// an address that is no peer's, a packet from outside the sending peer's
// subnet, ...), read at scrape time.
type UDPDrops struct {
	read func() map[string]uint64
	desc *prometheus.Desc
}

// NewUDPDrops returns the collector of the counts read returns.
func NewUDPDrops(read func() map[string]uint64) *UDPDrops {
	return &UDPDrops{
		read: read,
		desc: prometheus.NewDesc(namespace+"_udp_dropped_packets_total",
			"Packets the udp backend's forwarder dropped, by reason.", []string{"reason"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *UDPDrops) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *UDPDrops) Collect(ch chan<- prometheus.Metric) {
	if c.read == nil {
		return
	}
	counts := c.read()
	for _, reason := range slices.Sorted(maps.Keys(counts)) {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(counts[reason]), reason)
	}
}
