package scale

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// daemonMetrics is what flanneld's /metrics says about its memory and its
// sync loop: the Go heap beside the RSS, and how many passes of each kind
// the run cost.
type daemonMetrics struct {
	heapInuse, heapSys, goSys float64 // bytes
	nextGC                    float64 // bytes
	goroutines                float64
	fullPasses, incrPasses    float64
	fullSeconds, incrSeconds  float64 // total time in passes
	watchEvents               float64
	probes, peersProbed       float64 // peer probes sent; peers probed
}

func (d daemonMetrics) String() string {
	return fmt.Sprintf("Go heap in use %.1f MiB (heap from the OS %.1f MiB, all Go memory %.1f MiB, next GC at %.1f MiB), %.0f goroutines; "+
		"%.0f full passes (%.3f s), %.0f incremental passes (%.3f s), %.0f Node watch events",
		d.heapInuse/(1<<20), d.heapSys/(1<<20), d.goSys/(1<<20), d.nextGC/(1<<20), d.goroutines,
		d.fullPasses, d.fullSeconds, d.incrPasses, d.incrSeconds, d.watchEvents)
}

type namedValue struct {
	name, format string
	value        float64
}

// list is the metrics as METRIC lines (names without the N prefix).
func (d daemonMetrics) list() []namedValue {
	return []namedValue{
		{"go_heap_inuse_mib", "%.1f", d.heapInuse / (1 << 20)},
		{"go_heap_sys_mib", "%.1f", d.heapSys / (1 << 20)},
		{"go_sys_mib", "%.1f", d.goSys / (1 << 20)},
		{"goroutines", "%.0f", d.goroutines},
		{"sync_full_passes", "%.0f", d.fullPasses},
		{"sync_full_seconds", "%.3f", d.fullSeconds},
		{"sync_incremental_passes", "%.0f", d.incrPasses},
		{"sync_incremental_seconds", "%.3f", d.incrSeconds},
	}
}

// scrapeDaemonMetrics reads flanneld's /metrics inside its node.
func scrapeDaemonMetrics(ns string) (daemonMetrics, error) {
	var d daemonMetrics
	client := lab.HTTPClientIn(ns, 5*time.Second)
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", lab.HealthzPort))
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return d, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseDaemonMetrics(resp.Body)
}

// parseDaemonMetrics picks the samples daemonMetrics holds out of the
// Prometheus text format; a missing sample stays 0.
func parseDaemonMetrics(r io.Reader) (daemonMetrics, error) {
	var d daemonMetrics
	into := map[string]*float64{
		"go_memstats_heap_inuse_bytes":                           &d.heapInuse,
		"go_memstats_heap_sys_bytes":                             &d.heapSys,
		"go_memstats_sys_bytes":                                  &d.goSys,
		"go_memstats_next_gc_bytes":                              &d.nextGC,
		"go_goroutines":                                          &d.goroutines,
		`flanneld_sync_passes_total{kind="full"}`:                &d.fullPasses,
		`flanneld_sync_passes_total{kind="incremental"}`:         &d.incrPasses,
		`flanneld_sync_duration_seconds_sum{kind="full"}`:        &d.fullSeconds,
		`flanneld_sync_duration_seconds_sum{kind="incremental"}`: &d.incrSeconds,
		"flanneld_peer_probes_total":                             &d.probes,
		"flanneld_peers_probed":                                  &d.peersProbed,
		`flanneld_watch_events_total{type="add"}`:                nil,
		`flanneld_watch_events_total{type="update"}`:             nil,
		`flanneld_watch_events_total{type="delete"}`:             nil,
	}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		dst, ok := into[line[:i]]
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return d, fmt.Errorf("metric line %q: %w", line, err)
		}
		if dst == nil {
			d.watchEvents += v
		} else {
			*dst = v
		}
	}
	return d, s.Err()
}
