package datapath

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// Settings, from the environment.
const (
	envEnable   = "FLANNELD_BENCH"          // "1" runs the benchmark
	envBackends = "FLANNELD_BENCH_BACKENDS" // comma list, default defaultBackends
	envSeconds  = "FLANNELD_BENCH_SECONDS"  // iperf3 duration, default 10
	envRounds   = "FLANNELD_BENCH_ROUNDS"   // measurements per figure (median), default 3
)

// defaultBackends are measured when FLANNELD_BENCH_BACKENDS is unset. Any
// backend type flanneld knows can be named there (e.g. udp): the
// benchmark only writes it into net-conf.json.
const defaultBackends = "vxlan,host-gw"

const (
	readyTimeout = 60 * time.Second
	pingTimeout  = 30 * time.Second
)

// netConf is the net-conf.json of a backend, with its default options.
func netConf(backendType string) string {
	return fmt.Sprintf(`{"Network":"10.244.0.0/16","Backend":{"Type":%q}}`, backendType)
}

// settings is what one run measures.
type settings struct {
	backends   []string
	throughput time.Duration // per iperf3 run
	latency    time.Duration // per qperf run
	rounds     int           // runs per figure; the median is reported
}

func settingsFromEnv(t testing.TB) settings {
	s := settings{throughput: 10 * time.Second, rounds: 3}
	if v := os.Getenv(envSeconds); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			t.Fatalf("%s=%q: want a whole number of seconds, at least 2", envSeconds, v)
		}
		s.throughput = time.Duration(n) * time.Second
	}
	if v := os.Getenv(envRounds); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive whole number", envRounds, v)
		}
		s.rounds = n
	}
	s.latency = max(s.throughput/2, 2*time.Second)
	list := os.Getenv(envBackends)
	if list == "" {
		list = defaultBackends
	}
	for _, b := range strings.Split(list, ",") {
		if b = strings.TrimSpace(b); b != "" {
			s.backends = append(s.backends, b)
		}
	}
	return s
}

// row is the result for one backend; the underlay figures were measured
// between the same two node namespaces just before the pod figures.
type row struct {
	backend              string
	podGbps, underGbps   float64
	podLatUS, underLatUS float64
	err                  error
}

// TestDatapath is the datapath benchmark. For each backend it creates two
// fresh nodes with one pod each, runs flanneld with that backend, and
// measures node-to-node (the underlay) and pod-to-pod TCP throughput and
// latency; then it prints a table with the ratios backend/underlay.
func TestDatapath(t *testing.T) {
	if os.Getenv(envEnable) != "1" {
		t.Skipf("the datapath benchmark runs only with %s=1 (make bench-datapath)", envEnable)
	}
	lab.RequireRoot(t)
	for _, tool := range []string{"iperf3", "qperf", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run `make deps` (hack/install-deps.sh)", tool)
		}
	}
	s := settingsFromEnv(t)
	l := lab.New(t)

	var rows []row
	for i, b := range s.backends {
		r := row{backend: b}
		t.Run(b, func(t *testing.T) {
			r = benchBackend(t, l, b, i, s)
			if r.err != nil {
				t.Error(r.err)
			}
		})
		rows = append(rows, r)
	}
	fmt.Println()
	printTable(os.Stdout, rows, s)
}

// benchBackend measures one backend on two nodes of its own. Node i*2+1 and
// i*2+2 get subnets 10.244.(2i+1).0/24 and 10.244.(2i+2).0/24. When done,
// flanneld stops and the Nodes are deleted, so the next backend's nodes do
// not see them as peers. A "by-hand-<type>" backend is the same datapath
// set up with ip(8), without flanneld (byhand_test.go).
func benchBackend(t *testing.T, l *lab.Lab, backendType string, i int, s settings) row {
	r := row{backend: backendType}
	a := l.AddNode(t, backendType+"-a", fmt.Sprintf("10.244.%d.0/24", 2*i+1))
	b := l.AddNode(t, backendType+"-b", fmt.Sprintf("10.244.%d.0/24", 2*i+2))
	nodes := []*lab.Node{a, b}
	defer func() {
		for _, n := range nodes {
			if p := n.Flanneld(); p != nil {
				p.Stop()
			}
			l.DeleteNode(t, n)
		}
	}()
	if kind, ok := isByHand(backendType); ok {
		if err := setupByHand(kind, a, b); err != nil {
			r.err = fmt.Errorf("setting up %s by hand: %w", kind, err)
			return r
		}
	} else if err := startFlanneld(t, l, nodes, backendType); err != nil {
		r.err = err
		return r
	}
	pa, pb := l.AddPod(t, a, "p1"), l.AddPod(t, b, "p1")
	if err := lab.Poll(pingTimeout, func() error { return lab.Ping(pa, pb.IP) }); err != nil {
		r.err = fmt.Errorf("pod %s cannot reach pod %s: %w", pa.IP, pb.IP, err)
		return r
	}

	under := [2]endpoint{{a.Netns, a.IP.String()}, {b.Netns, b.IP.String()}}
	pods := [2]endpoint{{pa.Netns, pa.IP.String()}, {pb.Netns, pb.IP.String()}}
	type figure struct {
		what    string
		measure func(client, server endpoint) (float64, error)
		path    [2]endpoint
		into    *float64
		samples []float64
	}
	tput := func(c, srv endpoint) (float64, error) { return measureThroughput(t, l, c, srv, s.throughput) }
	lat := func(c, srv endpoint) (float64, error) { return measureLatency(t, l, c, srv, s.latency) }
	figures := []*figure{
		{what: "underlay throughput Gbit/s", measure: tput, path: under, into: &r.underGbps},
		{what: "pod throughput Gbit/s", measure: tput, path: pods, into: &r.podGbps},
		{what: "underlay tcp_lat µs", measure: lat, path: under, into: &r.underLatUS},
		{what: "pod tcp_lat µs", measure: lat, path: pods, into: &r.podLatUS},
	}
	// Rounds alternate which path goes first, so a slow drift of the
	// machine's load favours neither.
	for round := range s.rounds {
		for k := range figures {
			f := figures[k]
			if round%2 == 1 {
				f = figures[k^1]
			}
			v, err := f.measure(f.path[0], f.path[1])
			if err != nil {
				r.err = fmt.Errorf("%s %s: %w", backendType, f.what, err)
				return r
			}
			f.samples = append(f.samples, v)
		}
	}
	for _, f := range figures {
		*f.into = median(f.samples)
		t.Logf("%s %s: median %.2f of %v", backendType, f.what, *f.into, f.samples)
	}
	t.Logf("BENCH backend=%s pod_gbps=%.2f underlay_gbps=%.2f throughput_ratio=%.3f pod_lat_us=%.2f underlay_lat_us=%.2f latency_ratio=%.3f",
		backendType, r.podGbps, r.underGbps, r.podGbps/r.underGbps, r.podLatUS, r.underLatUS, r.podLatUS/r.underLatUS)
	return r
}

// startFlanneld runs flanneld with the backend on nodes and waits until
// they are ready.
func startFlanneld(t *testing.T, l *lab.Lab, nodes []*lab.Node, backendType string) error {
	confPath := fmt.Sprintf("%s/net-conf-%s.json", l.Dir(), backendType)
	if err := os.WriteFile(confPath, []byte(netConf(backendType)), 0o644); err != nil {
		return err
	}
	for _, n := range nodes {
		l.StartFlanneld(t, n, "--net-config-path="+confPath)
	}
	for _, n := range nodes {
		if err := n.PollReady(readyTimeout); err != nil {
			return fmt.Errorf("flanneld on %s with backend %s: %w", n.Name, backendType, err)
		}
	}
	return nil
}

// printTable writes the results, one row per backend.
func printTable(w io.Writer, rows []row, s settings) {
	fmt.Fprintf(w, "flanneld datapath benchmark: 2 nodes, 1 pod each; median of %d runs of iperf3 %v (first second omitted) and qperf tcp_lat %v; %d CPUs\n",
		s.rounds, s.throughput, s.latency, runtime.NumCPU())
	fmt.Fprintln(w, "throughput ratio = pod/underlay (higher is better); latency ratio = pod/underlay (lower is better)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "backend\tpod Gbit/s\tunderlay Gbit/s\tratio\tpod tcp_lat µs\tunderlay tcp_lat µs\tratio\t")
	var failures []string
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\tfailed\t-\t-\t-\t-\t-\t\n", r.backend)
			failures = append(failures, fmt.Sprintf("%s: %s", r.backend, firstLine(r.err.Error())))
			continue
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.1f\t%.1f\t%.2f\t\n",
			r.backend, r.podGbps, r.underGbps, r.podGbps/r.underGbps, r.podLatUS, r.underLatUS, r.podLatUS/r.underLatUS)
	}
	tw.Flush()
	for _, f := range failures {
		fmt.Fprintln(w, "failed:", f)
	}
}

// median of a non-empty list.
func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
