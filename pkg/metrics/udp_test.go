package metrics

import (
	"strings"
	"testing"
)

// TestUDPDrops checks that the udp backend's drop counters are exported
// with every reason the forwarder reports, zeros included.
func TestUDPDrops(t *testing.T) {
	m := New("test")
	counts := map[string]uint64{"unknown_source": 3, "inner_source": 0}
	if err := m.Register(NewUDPDrops(func() map[string]uint64 { return counts })); err != nil {
		t.Fatal(err)
	}
	body := scrape(t, m)
	for _, series := range []string{
		`flanneld_udp_dropped_packets_total{reason="unknown_source"} 3`,
		`flanneld_udp_dropped_packets_total{reason="inner_source"} 0`,
	} {
		if !strings.Contains(body, series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
}
