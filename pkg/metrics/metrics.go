// Package metrics holds flanneld's Prometheus metrics. They live in their
// own registry (no global state), served at /metrics on the health
// listener. No series is labelled per peer: cardinality is bounded
// whatever the cluster size.
package metrics

import (
	"net/http"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flanneld/flanneld/subnet"
)

const namespace = "flanneld"

// Metrics are the daemon's metrics.
type Metrics struct {
	Registry *prometheus.Registry

	// PeersKnown counts peers the lease source reports; PeersProgrammed
	// those whose entries are applied; PeersSkipped those with unusable
	// leases.
	PeersKnown      prometheus.Gauge
	PeersProgrammed prometheus.Gauge
	PeersSkipped    prometheus.Gauge
	// PeersRejected counts peers skipped, each time for a new reason, by
	// reason (subnet.SkipReasons).
	PeersRejected *prometheus.CounterVec
	// EntryFailures counts kernel entries that failed, once per failure,
	// by kind (route, neighbour, fdb) and reason: "refused" (the kernel
	// said no) or "conflict" (another agent's entry holds the key).
	// EntriesFailing is how many are failing now (retried with backoff).
	EntryFailures  *prometheus.CounterVec
	EntriesFailing prometheus.Gauge
	// PeersProbed counts the peers probed through the overlay so far;
	// PeersUnreachable those that do not answer; ProbeRTT the round trips
	// of the answers, over all peers.
	PeersProbed      prometheus.Gauge
	PeersUnreachable prometheus.Gauge
	ProbeRTT         prometheus.Histogram
	// Probes counts the probes sent (their cost: at most
	// --peer-probe-max-rate a second).
	Probes prometheus.Counter

	// SyncPasses and SyncDuration are labelled by kind: "full" or
	// "incremental"; SyncErrors counts failed passes.
	SyncPasses   *prometheus.CounterVec
	SyncDuration *prometheus.HistogramVec
	SyncErrors   prometheus.Counter
	// LastSync is the time of the last successful pass.
	LastSync prometheus.Gauge

	// DriftRepairs counts repairs by kind: route, neighbour, fdb, wgpeer,
	// device, rule.
	DriftRepairs *prometheus.CounterVec

	// BackendInfo is 1, labelled with the backend type and where its
	// datapath runs: implementation "kernel" or "userspace" (udp, and
	// wireguard on a kernel without WireGuard).
	BackendInfo *prometheus.GaugeVec

	// Lease is 1 with the subnet as a label; LeaseExpiry is the lease's
	// expiry time (etcd mode).
	Lease       *prometheus.GaugeVec
	LeaseExpiry prometheus.Gauge

	// WatchEvents counts Node (or lease) events by type: add, update,
	// delete; LastWatchSync is when the lease source last (re)synced.
	WatchEvents   *prometheus.CounterVec
	LastWatchSync prometheus.Gauge
}

// DriftKinds are the values of the DriftRepairs "kind" label.
var DriftKinds = []string{"route", "neighbour", "fdb", "wgpeer", "device", "rule"}

// New creates the metrics and registers them, with build info and the Go
// and process collectors, in a new registry.
func New(version string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		PeersKnown: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "peers_known",
			Help: "Peers reported by the lease source."}),
		PeersProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "peers_programmed",
			Help: "Peers whose kernel entries are programmed."}),
		PeersSkipped: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "peers_skipped",
			Help: "Peers skipped because their lease is unusable (see the logs and the Node's events)."}),
		PeersRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "peers_rejected_total",
			Help: "Peers skipped, counted once per peer and reason, by reason."}, []string{"reason"}),
		EntryFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "entry_failures_total",
			Help: "Kernel entries that could not be applied (then retried with backoff), by kind and reason (refused, conflict)."}, []string{"kind", "reason"}),
		EntriesFailing: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "entries_failing",
			Help: "Kernel entries failing now, retried with backoff."}),
		PeersProbed: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "peers_probed",
			Help: "Peers probed through the overlay (--peer-probe-interval)."}),
		PeersUnreachable: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "peers_unreachable",
			Help: "Peers that did not answer three probes in a row through the overlay."}),
		Probes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "peer_probes_total",
			Help: "Probes of peers sent through the overlay."}),
		ProbeRTT: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "peer_probe_rtt_seconds",
			Help:    "Round-trip times of the probes of peers through the overlay, over all peers.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8)}),
		SyncPasses: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "sync_passes_total",
			Help: "Reconcile passes, by kind (full or incremental)."}, []string{"kind"}),
		SyncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "sync_duration_seconds",
			Help:    "Duration of reconcile passes, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"kind"}),
		SyncErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "sync_errors_total",
			Help: "Reconcile passes that failed."}),
		LastSync: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "last_sync_timestamp_seconds",
			Help: "Time of the last successful reconcile pass."}),
		DriftRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "drift_repairs_total",
			Help: "Entries flanneld found deleted or changed by someone else and restored, by kind."}, []string{"kind"}),
		BackendInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "backend_info",
			Help: "The backend in use: 1, labelled with its type and where its datapath runs (kernel or userspace)."}, []string{"type", "implementation"}),
		Lease: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "lease",
			Help: "This node's lease: 1, with the subnet as a label."}, []string{"subnet"}),
		LeaseExpiry: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "lease_expiry_timestamp_seconds",
			Help: "When this node's lease expires (etcd mode; 0 in Kubernetes mode, where leases do not expire)."}),
		WatchEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "watch_events_total",
			Help: "Events received from the lease source, by type (add, update, delete)."}, []string{"type"}),
		LastWatchSync: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "watch_last_sync_timestamp_seconds",
			Help: "When the lease source last delivered its complete view."}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "build_info",
		Help:        "Build information: always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()}})
	buildInfo.Set(1)
	m.Registry.MustRegister(buildInfo, m.PeersKnown, m.PeersProgrammed, m.PeersSkipped, m.PeersRejected, m.EntryFailures, m.EntriesFailing,
		m.PeersProbed, m.PeersUnreachable, m.ProbeRTT, m.Probes,
		m.SyncPasses, m.SyncDuration, m.SyncErrors, m.LastSync, m.DriftRepairs, m.BackendInfo,
		m.Lease, m.LeaseExpiry, m.WatchEvents, m.LastWatchSync,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Every label value exists from the start, so rates work from the first scrape.
	for _, k := range []string{"full", "incremental"} {
		m.SyncPasses.WithLabelValues(k)
		m.SyncDuration.WithLabelValues(k)
	}
	for _, k := range DriftKinds {
		m.DriftRepairs.WithLabelValues(k)
	}
	for _, r := range subnet.SkipReasons {
		m.PeersRejected.WithLabelValues(string(r))
	}
	for _, k := range []string{"route", "neighbour", "fdb", "wgpeer"} {
		for _, r := range []string{"refused", "conflict"} {
			m.EntryFailures.WithLabelValues(k, r)
		}
	}
	for _, t := range []string{"add", "update", "delete"} {
		m.WatchEvents.WithLabelValues(t)
	}
	return m
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Register adds a backend's own collector (device counters, say).
func (m *Metrics) Register(c prometheus.Collector) error { return m.Registry.Register(c) }
