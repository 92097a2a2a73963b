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
	envRounds   = "FLANNELD_BENCH_ROUNDS"   // measurements per figure, default 3
	envAwake    = "FLANNELD_BENCH_AWAKE"    // "0": let CPUs idle during latency runs
)

// defaultBackends are measured when FLANNELD_BENCH_BACKENDS is unset. Any
// backend type flanneld knows can be named there (e.g. udp): the
// benchmark only writes it into net-conf.json.
const defaultBackends = "vxlan,host-gw,udp,wireguard"

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
	rounds     int           // runs per figure
	awake      bool          // keep CPUs from idling during latency runs
}

func settingsFromEnv(t testing.TB) settings {
	s := settings{throughput: 10 * time.Second, rounds: 3, awake: os.Getenv(envAwake) != "0"}
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

// row is the result for one backend: one sample per round of each figure.
// The underlay figures were measured between the same two node namespaces,
// interleaved with the pod figures.
type row struct {
	backend              string
	podGbps, underGbps   []float64
	podLatUS, underLatUS []float64
	err                  error
}

// figures is one summary of a row's samples.
type figures struct {
	podGbps, underGbps   float64
	podLatUS, underLatUS float64
}

// best is the highest throughput and the lowest latency measured: the
// machine's other load only ever makes a run worse, so on a busy machine
// the best run is the one closest to the datapath's own cost.
func (r row) best() figures {
	return figures{slices.Max(r.podGbps), slices.Max(r.underGbps), slices.Min(r.podLatUS), slices.Min(r.underLatUS)}
}

// median is the typical run.
func (r row) median() figures {
	return figures{median(r.podGbps), median(r.underGbps), median(r.podLatUS), median(r.underLatUS)}
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
	for _, tool := range []string{"iperf3", "qperf", "ss", "taskset"} {
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
		samples *[]float64
	}
	tput := func(c, srv endpoint) (float64, error) { return measureThroughput(t, l, c, srv, s.throughput) }
	lat := func(c, srv endpoint) (float64, error) { return measureLatency(t, l, c, srv, s.latency, s.awake) }
	all := []*figure{
		{what: "underlay throughput Gbit/s", measure: tput, path: under, samples: &r.underGbps},
		{what: "pod throughput Gbit/s", measure: tput, path: pods, samples: &r.podGbps},
		{what: "underlay tcp_lat µs", measure: lat, path: under, samples: &r.underLatUS},
		{what: "pod tcp_lat µs", measure: lat, path: pods, samples: &r.podLatUS},
	}
	// Rounds alternate which path goes first, so a slow drift of the
	// machine's load favours neither.
	for round := range s.rounds {
		for k := range all {
			f := all[k]
			if round%2 == 1 {
				f = all[k^1]
			}
			v, err := f.measure(f.path[0], f.path[1])
			if err != nil {
				r.err = fmt.Errorf("%s %s: %w", backendType, f.what, err)
				return r
			}
			*f.samples = append(*f.samples, v)
		}
	}
	for _, f := range all {
		t.Logf("%s %s: %s", backendType, f.what, formatSamples(*f.samples))
	}
	for _, sum := range []struct {
		stat string
		f    figures
	}{{"best", r.best()}, {"median", r.median()}} {
		f := sum.f
		t.Logf("BENCH backend=%s stat=%s pod_gbps=%.2f underlay_gbps=%.2f throughput_ratio=%.3f pod_lat_us=%.2f underlay_lat_us=%.2f latency_ratio=%.3f",
			backendType, sum.stat, f.podGbps, f.underGbps, f.podGbps/f.underGbps, f.podLatUS, f.underLatUS, f.podLatUS/f.underLatUS)
	}
	return r
}

func formatSamples(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.Join(parts, " ")
}

// startFlanneld runs flanneld with the backend on nodes and waits until
// they are ready.
func startFlanneld(t *testing.T, l *lab.Lab, nodes []*lab.Node, backendType string) error {
	confPath := fmt.Sprintf("%s/net-conf-%s.json", l.Dir(), backendType)
	if err := os.WriteFile(confPath, []byte(netConf(backendType)), 0o644); err != nil {
		return err
	}
	for _, n := range nodes {
		if backendType == "wireguard" {
			// Its own key file and /run/wireguard per node (userspace
			// devices' UAPI sockets).
			l.StartFlanneldWG(t, n, "--net-config-path="+confPath)
			continue
		}
		l.StartFlanneld(t, n, "--net-config-path="+confPath)
	}
	for _, n := range nodes {
		if err := n.PollReady(readyTimeout); err != nil {
			return fmt.Errorf("flanneld on %s with backend %s: %w", n.Name, backendType, err)
		}
	}
	return nil
}

// printTable writes the results, one row per backend: a table of the best
// runs and one of the median runs.
func printTable(w io.Writer, rows []row, s settings) {
	awake := "CPUs kept awake during tcp_lat"
	if !s.awake {
		awake = "CPUs may idle during tcp_lat"
	}
	fmt.Fprintf(w, "flanneld datapath benchmark: 2 nodes, 1 pod each; %d runs of iperf3 %v (first second omitted) and qperf tcp_lat %v per figure; %d CPUs, %s\n",
		s.rounds, s.throughput, s.latency, runtime.NumCPU(), awake)
	fmt.Fprintln(w, "throughput ratio = pod/underlay (higher is better); latency ratio = pod/underlay (lower is better)")
	for _, table := range []struct {
		title string
		stat  func(row) figures
	}{
		{"best run (highest throughput, lowest latency)", row.best},
		{"median run", row.median},
	} {
		fmt.Fprintf(w, "\n%s:\n", table.title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "backend\tpod Gbit/s\tunderlay Gbit/s\tratio\tpod tcp_lat µs\tunderlay tcp_lat µs\tratio\t")
		for _, r := range rows {
			if r.err != nil {
				fmt.Fprintf(tw, "%s\tfailed\t-\t-\t-\t-\t-\t\n", r.backend)
				continue
			}
			f := table.stat(r)
			fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.1f\t%.1f\t%.2f\t\n",
				r.backend, f.podGbps, f.underGbps, f.podGbps/f.underGbps, f.podLatUS, f.underLatUS, f.podLatUS/f.underLatUS)
		}
		tw.Flush()
	}
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(w, "failed: %s: %s\n", r.backend, firstLine(r.err.Error()))
		}
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
