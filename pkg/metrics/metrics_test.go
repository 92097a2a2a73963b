package metrics

import (
	"io"
	"maps"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// flanneldMetrics are the metrics documented in Documentation/metrics.md,
// with their label names.
var flanneldMetrics = map[string][]string{
	"flanneld_build_info":                        {"goversion", "version"},
	"flanneld_peers_known":                       nil,
	"flanneld_peers_programmed":                  nil,
	"flanneld_peers_skipped":                     nil,
	"flanneld_peers_rejected_total":              {"reason"},
	"flanneld_entry_failures_total":              {"kind", "reason"},
	"flanneld_entries_failing":                   nil,
	"flanneld_peers_probed":                      nil,
	"flanneld_peers_unreachable":                 nil,
	"flanneld_peer_probe_rtt_seconds":            nil,
	"flanneld_peer_probes_total":                 nil,
	"flanneld_sync_passes_total":                 {"kind"},
	"flanneld_sync_duration_seconds":             {"kind"},
	"flanneld_sync_errors_total":                 nil,
	"flanneld_last_sync_timestamp_seconds":       nil,
	"flanneld_drift_repairs_total":               {"kind"},
	"flanneld_lease":                             {"subnet"},
	"flanneld_lease_expiry_timestamp_seconds":    nil,
	"flanneld_watch_events_total":                {"type"},
	"flanneld_watch_last_sync_timestamp_seconds": nil,
	"flanneld_device_packets_total":              {"device", "direction"},
	"flanneld_device_bytes_total":                {"device", "direction"},
	"flanneld_device_dropped_total":              {"device", "direction"},
	"flanneld_udp_dropped_packets_total":         {"reason"},
}

// TestRegistry checks that the registry exposes exactly the documented
// flanneld_* metrics with their documented labels: none names a peer, so
// cardinality does not grow with the cluster.
func TestRegistry(t *testing.T) {
	m := New("v1.2.3")
	m.Lease.WithLabelValues("10.244.1.0/24").Set(1)
	if err := m.Register(NewLinkStats(nil, func() []int { return nil })); err != nil {
		t.Fatal(err)
	}

	got := map[string][]string{}
	// Describe sees the device counters too, which have no series without links.
	descs := make(chan *prometheus.Desc, 100)
	go func() {
		for _, c := range []prometheus.Collector{m.PeersKnown, m.PeersProgrammed, m.PeersSkipped, m.SyncPasses,
			m.SyncDuration, m.SyncErrors, m.LastSync, m.DriftRepairs, m.Lease, m.LeaseExpiry, m.WatchEvents,
			m.LastWatchSync, NewLinkStats(nil, nil), NewUDPDrops(nil)} {
			c.Describe(descs)
		}
		close(descs)
	}()
	for d := range descs {
		// Desc has no accessors; its String() lists fqName and labels.
		s := d.String()
		name := between(s, `fqName: "`, `"`)
		got[name] = labelsOf(between(s, "variableLabels: {", "}"))
	}
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "flanneld_") {
			continue // Go and process collectors
		}
		labels := map[string]bool{}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		got[f.GetName()] = slices.Sorted(maps.Keys(labels))
	}
	for name, want := range flanneldMetrics {
		labels, ok := got[name]
		if !ok {
			t.Errorf("metric %s is missing", name)
			continue
		}
		if !slices.Equal(labels, want) {
			t.Errorf("metric %s has labels %v, want %v", name, labels, want)
		}
	}
	for name := range got {
		if _, ok := flanneldMetrics[name]; !ok {
			t.Errorf("metric %s is not documented (add it to Documentation/metrics.md and this test)", name)
		}
	}

	// Every label value exists from the start.
	body := scrape(t, m)
	for _, series := range []string{
		`flanneld_build_info{goversion="`,
		`flanneld_sync_passes_total{kind="full"} 0`,
		`flanneld_sync_passes_total{kind="incremental"} 0`,
		`flanneld_drift_repairs_total{kind="route"} 0`,
		`flanneld_drift_repairs_total{kind="neighbour"} 0`,
		`flanneld_drift_repairs_total{kind="fdb"} 0`,
		`flanneld_drift_repairs_total{kind="device"} 0`,
		`flanneld_drift_repairs_total{kind="rule"} 0`,
		`flanneld_watch_events_total{type="add"} 0`,
		`flanneld_lease{subnet="10.244.1.0/24"} 1`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if !strings.Contains(body, `version="v1.2.3"`) {
		t.Error("build_info lacks the version")
	}
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// between returns the text of s after start up to end.
func between(s, start, end string) string {
	_, rest, ok := strings.Cut(s, start)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, end)
	return v
}

// labelsOf parses a Desc's variable labels, e.g. "{kind,type}" without braces.
func labelsOf(s string) []string {
	if s == "" {
		return nil
	}
	var out []string
	for _, l := range strings.Split(s, ",") {
		out = append(out, strings.Trim(strings.TrimSpace(l), `"`))
	}
	slices.Sort(out)
	return out
}
