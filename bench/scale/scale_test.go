package scale

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// Settings, from the environment.
const (
	envEnable    = "FLANNELD_BENCH"                 // "1" runs the benchmark
	envSizes     = "FLANNELD_BENCH_SCALE_N"         // comma list of peer counts, default defaultSizes
	envChurn     = "FLANNELD_BENCH_SCALE_CHURN"     // peers added then removed while running, default 100
	envTimeout   = "FLANNELD_BENCH_SCALE_TIMEOUT"   // seconds allowed for start to programmed, default 600
	envVerbosity = "FLANNELD_BENCH_SCALE_VERBOSITY" // flanneld's -v, default 1
	envPad       = "FLANNELD_BENCH_SCALE_PAD"       // bytes of annotations flanneld does not read, per Node, default 0
)

const defaultSizes = "1000,5000,10000"

const (
	// pollEvery is how often the kernel state is counted while waiting.
	pollEvery = 50 * time.Millisecond
	// progressEvery is how often a wait logs the counts so far.
	progressEvery = 10 * time.Second
	// churnTimeout bounds the wait for added or removed peers.
	churnTimeout = 2 * time.Minute
	// settle is the pause between phases, so that one phase's tail (a
	// status patch, a readiness change) does not land in the next.
	settle = 2 * time.Second
	// floorRounds is how many LISTs and batches each half of the floor
	// takes the median of.
	floorRounds = 3
)

type settings struct {
	sizes     []int
	churn     int
	timeout   time.Duration
	verbosity int
	pad       int
}

func settingsFromEnv(t testing.TB) settings {
	s := settings{churn: 100, timeout: 600 * time.Second, verbosity: 1}
	positive := func(name, v string) int {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive whole number", name, v)
		}
		return n
	}
	list := os.Getenv(envSizes)
	if list == "" {
		list = defaultSizes
	}
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f != "" {
			s.sizes = append(s.sizes, positive(envSizes, f))
		}
	}
	if v := os.Getenv(envChurn); v != "" {
		s.churn = positive(envChurn, v)
	}
	if v := os.Getenv(envPad); v != "" {
		s.pad = positive(envPad, v)
	}
	if v := os.Getenv(envTimeout); v != "" {
		s.timeout = time.Duration(positive(envTimeout, v)) * time.Second
	}
	if v := os.Getenv(envVerbosity); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			t.Fatalf("%s=%q: want a klog verbosity (0, 1, 2, ...)", envVerbosity, v)
		}
		s.verbosity = n
	}
	for _, n := range s.sizes {
		if n+s.churn > maxPeers {
			t.Fatalf("%d peers plus %d churn exceed the %d subnets of the benchmark's addressing", n, s.churn, maxPeers)
		}
	}
	return s
}

// result is what one N measured.
type result struct {
	n int

	createRate float64       // Nodes created per second (setup, not a figure)
	listFloor  time.Duration // one protobuf LIST of all Nodes (median)
	listBytes  int
	batchFloor time.Duration // bridge -batch + ip -batch of the same entries

	converged         bool
	startToProgrammed time.Duration
	firstRoute        time.Duration // process start to the first peer route
	final             counts        // the last counts seen when not converged
	atProgrammed      usage

	addOK, removeOK          bool
	add, remove              time.Duration // from the first API call to programmed
	addAfterAPI, removeAfter time.Duration // from the last API call's answer to programmed

	// probes is the cost of probing the peers (--peer-probe-interval, on
	// by default) over probeWindow with nothing else to do.
	probes probeCost

	end       usage         // at the end of the run
	daemon    daemonMetrics // flanneld's /metrics at the end of the run
	logBytes  int64
	logErrors int

	err error // the run broke (not a figure)
}

func (r result) floor() time.Duration { return r.listFloor + r.batchFloor }

// TestScale is the scale benchmark (see doc.go and Documentation/scale.md).
// Each N gets a fresh lab: control plane, one node running flanneld, N
// peer Nodes created before flanneld starts.
func TestScale(t *testing.T) {
	if os.Getenv(envEnable) != "1" {
		t.Skipf("the scale benchmark runs only with %s=1 (make bench-scale)", envEnable)
	}
	lab.RequireRoot(t)
	for _, tool := range []string{"ip", "bridge"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run `make deps`", tool)
		}
	}
	lab.RequireBinary(t, lab.BinaryFlanneld)
	s := settingsFromEnv(t)
	// Ctrl-C or SIGTERM ends the run early; the lab of the N being measured
	// is still torn down (its cleanups run when the subtest fails).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)

	var results []result
	for _, n := range s.sizes {
		if ctx.Err() != nil {
			break
		}
		r := result{n: n}
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			r = measure(ctx, t, n, s)
			if ctx.Err() != nil {
				// Interrupted: tear the lab down without dumping its logs.
				t.Skip("interrupted: tearing down")
			}
			if r.err != nil {
				t.Error(r.err)
			}
		})
		results = append(results, r)
	}
	if ctx.Err() != nil {
		t.Fatalf("interrupted")
	}
	fmt.Println()
	printTable(os.Stdout, results, s)
	printMetrics(os.Stdout, results, s)
}

// measure runs one N in a lab of its own.
func measure(ctx context.Context, t *testing.T, n int, s settings) result {
	r := result{n: n}
	fail := func(format string, a ...any) result {
		r.err = fmt.Errorf(format, a...)
		return r
	}
	l := lab.New(t)
	if err := l.WriteNetConf(netConf); err != nil {
		return fail("%v", err)
	}
	node := l.AddNode(t, "bench", ownPodCIDR)

	client, err := adminClient(l, l.ControlPlaneNetns())
	if err != nil {
		return fail("admin client: %v", err)
	}
	start := time.Now()
	if err := createPeers(ctx, client, 1, n, s.pad); err != nil {
		return fail("creating %d peer Nodes: %v", n, err)
	}
	r.createRate = float64(n) / time.Since(start).Seconds()
	t.Logf("created %d peer Nodes in %v (%.0f/s)", n, time.Since(start).Round(time.Millisecond), r.createRate)
	if err := checkStatusKept(ctx, client, 1); err != nil {
		return fail("the peer Nodes are not kubelet-sized: %v", err)
	}

	// The floor, measured before flanneld runs, on the same machine.
	listClient, err := adminClient(l, node.Netns)
	if err != nil {
		return fail("list client: %v", err)
	}
	if r.listFloor, r.listBytes, err = listFloor(ctx, listClient, floorRounds); err != nil {
		return fail("list floor: %v", err)
	}
	t.Logf("floor: one protobuf LIST of %d Nodes (%.1f MiB) takes %v (median of %d)",
		n+1, float64(r.listBytes)/(1<<20), r.listFloor.Round(time.Millisecond), floorRounds)
	if r.batchFloor, err = batchFloor(ctx, floorNetns(l), l.Dir(), n, floorRounds); err != nil {
		return fail("batch floor: %v", err)
	}
	t.Logf("floor: bridge -batch + ip -batch of %d peers (%d entries) takes %v (median of %d)",
		n, 3*n, r.batchFloor.Round(time.Millisecond), floorRounds)

	c, err := openCounter(node.Netns)
	if err != nil {
		return fail("%v", err)
	}
	defer c.close()
	w := &watcher{t: t, ctx: ctx, c: c, ns: node.Netns}

	bin, err := filepath.Abs(lab.RequireBinary(t, lab.BinaryFlanneld))
	if err == nil {
		bin, err = filepath.EvalSymlinks(bin)
	}
	if err != nil {
		return fail("%v", err)
	}
	start = time.Now()
	p := l.StartFlanneld(t, node, fmt.Sprintf("-v=%d", s.verbosity))
	w.proc = p
	// `ip netns exec` enters the namespace and then execs flanneld in
	// place, so the pid becomes flanneld's within milliseconds; if ip ever
	// forked instead, /proc of this pid would describe the wrong process.
	for exe := processExe(p.Pid()); exe != bin; exe = processExe(p.Pid()) {
		if time.Since(start) > 5*time.Second {
			return fail("process %d runs %q, not flanneld (%s)", p.Pid(), exe, bin)
		}
		time.Sleep(5 * time.Millisecond)
	}
	res := w.wait(start, n, s.timeout, true)
	r.converged, r.startToProgrammed, r.firstRoute, r.final = res.ok, res.elapsed, res.firstRoute, res.counts
	if res.err != nil {
		return fail("%v", res.err)
	}
	if r.atProgrammed, err = readUsage(p.Pid()); err != nil {
		return fail("reading flanneld's usage: %v", err)
	}
	if r.converged {
		t.Logf("N=%d: all peers programmed %.3f s after flanneld started (first route at %.3f s); RSS %.1f MiB (peak so far %.1f MiB), CPU %.2f s",
			n, r.startToProgrammed.Seconds(), r.firstRoute.Seconds(), mib(r.atProgrammed.rssKiB), mib(r.atProgrammed.peakRSSKiB), r.atProgrammed.cpu.Seconds())

		r.addOK, r.add, r.addAfterAPI, err = w.churn("add", n+s.churn, func() error {
			return createPeers(ctx, client, n+1, n+s.churn, s.pad)
		})
		if err != nil {
			return fail("adding %d peers: %v", s.churn, err)
		}
		r.removeOK, r.remove, r.removeAfter, err = w.churn("remove", n, func() error {
			return deletePeers(ctx, client, n+1, n+s.churn)
		})
		if err != nil {
			return fail("removing %d peers: %v", s.churn, err)
		}
		if r.probes, err = measureProbes(node.Netns, p.Pid()); err != nil {
			t.Logf("measuring the peer probes: %v", err)
		} else {
			t.Logf("N=%d: peer probes: %s", n, r.probes)
		}
	} else {
		t.Logf("N=%d: flanneld did not program all peers within %v: %s", n, s.timeout, r.final)
	}

	if r.end, err = readUsage(p.Pid()); err != nil {
		return fail("reading flanneld's usage: %v", err)
	}
	if r.daemon, err = scrapeDaemonMetrics(node.Netns); err != nil {
		t.Logf("reading flanneld's /metrics: %v", err)
	} else {
		t.Logf("N=%d: flanneld's own view: %s", n, r.daemon)
	}
	if info, err := os.Stat(p.LogPath); err == nil {
		r.logBytes = info.Size()
	}
	r.logErrors = countErrorLines(p.Log())
	t.Logf("N=%d: flanneld peak RSS %.1f MiB (now %.1f MiB: %.1f anonymous, %.1f file-backed), CPU %.2f s, log %d bytes with %d error lines",
		n, mib(r.end.peakRSSKiB), mib(r.end.rssKiB), mib(r.end.anonKiB), mib(r.end.fileKiB), r.end.cpu.Seconds(), r.logBytes, r.logErrors)
	p.Stop()
	keepLog(t, p, n)
	return r
}

// probeWindow is how long the probes' cost is measured for.
const probeWindow = 20 * time.Second

// probeCost is what probing the peers costs flanneld while it has nothing
// else to do.
type probeCost struct {
	pps, cpuShare, rssGrowthMiB float64
	measured                    bool
}

func (c probeCost) String() string {
	return fmt.Sprintf("%.2f probes/s, %.2f%% of a CPU, RSS %+.1f MiB over %v", c.pps, 100*c.cpuShare, c.rssGrowthMiB, probeWindow)
}

// measureProbes measures flanneld's probes sent, CPU and RSS over
// probeWindow.
func measureProbes(ns string, pid int) (probeCost, error) {
	m0, err := scrapeDaemonMetrics(ns)
	if err != nil {
		return probeCost{}, err
	}
	u0, err := readUsage(pid)
	if err != nil {
		return probeCost{}, err
	}
	time.Sleep(probeWindow)
	m1, err := scrapeDaemonMetrics(ns)
	if err != nil {
		return probeCost{}, err
	}
	u1, err := readUsage(pid)
	if err != nil {
		return probeCost{}, err
	}
	return probeCost{
		pps:          (m1.probes - m0.probes) / probeWindow.Seconds(),
		cpuShare:     (u1.cpu - u0.cpu).Seconds() / probeWindow.Seconds(),
		rssGrowthMiB: mib(u1.rssKiB) - mib(u0.rssKiB),
		measured:     true,
	}, nil
}

// keepLog copies flanneld's log out of the lab's directory (removed with
// the lab) to the system's temporary directory, for reading afterwards.
func keepLog(t testing.TB, p *lab.Process, n int) {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("flanneld-bench-scale-%d.log", n))
	if err := os.WriteFile(path, []byte(p.Log()), 0o644); err != nil {
		t.Logf("keeping flanneld's log: %v", err)
		return
	}
	t.Logf("flanneld's log: %s", path)
}

// watcher polls the measured node's kernel state.
type watcher struct {
	t     testing.TB
	ctx   context.Context
	c     *counter
	ns    string
	index int // of flannel.1, once it exists
	proc  *lab.Process
}

type waitResult struct {
	ok         bool
	elapsed    time.Duration // since start, when ok
	firstRoute time.Duration
	counts     counts // the last counts seen
	err        error  // counting failed or flanneld exited
}

// wait polls until the VXLAN device has exactly target routes, neighbours
// and FDB entries, or timeout passes. Routes go in last and come out first,
// so the cheaper route count is polled alone until it reaches target.
func (w *watcher) wait(start time.Time, target int, timeout time.Duration, logProgress bool) waitResult {
	var res waitResult
	deadline := start.Add(timeout)
	nextProgress := time.Now().Add(progressEvery)
	for {
		if w.ctx.Err() != nil {
			w.t.Skip("interrupted: tearing down")
		}
		if !w.proc.Running() {
			res.err = fmt.Errorf("flanneld exited: %v; log tail:\n%s", w.proc.ExitCode(), tailLines(w.proc.Log(), 30))
			return res
		}
		if w.index == 0 {
			index, err := linkIndex(w.ns, vxlanDevice)
			if err != nil {
				res.err = err
				return res
			}
			w.index = index
		}
		if w.index != 0 {
			routes, err := w.c.countRoutes(w.index)
			if err != nil {
				res.err = fmt.Errorf("counting routes: %w", err)
				return res
			}
			res.counts.routes = routes
			if routes > 0 && res.firstRoute == 0 {
				res.firstRoute = time.Since(start)
			}
			if routes == target || time.Now().After(nextProgress) {
				cnt, err := w.c.count(w.index)
				if err != nil {
					res.err = err
					return res
				}
				res.counts = cnt
				if cnt.all(target) {
					res.ok, res.elapsed = true, time.Since(start)
					return res
				}
			}
		}
		if now := time.Now(); now.After(nextProgress) {
			if logProgress {
				w.t.Logf("  %5.1f s: %s (want %d)", now.Sub(start).Seconds(), res.counts, target)
			}
			nextProgress = now.Add(progressEvery)
		}
		if time.Now().After(deadline) {
			return res
		}
		time.Sleep(pollEvery)
	}
}

// churn waits for the daemon to be idle, runs change (API calls) and waits
// until the device has target peers. It returns the time from the first
// call and from the last call's answer to programmed.
func (w *watcher) churn(what string, target int, change func() error) (ok bool, total, afterAPI time.Duration, err error) {
	time.Sleep(settle)
	start := time.Now()
	if err := change(); err != nil {
		return false, 0, 0, err
	}
	api := time.Since(start)
	res := w.wait(start, target, churnTimeout, false)
	if res.err != nil {
		return false, 0, 0, res.err
	}
	if !res.ok {
		w.t.Logf("%s: not programmed within %v: %s (want %d of each)", what, churnTimeout, res.counts, target)
		return false, 0, 0, nil
	}
	afterAPI = max(res.elapsed-api, 0)
	w.t.Logf("%s: programmed %.3f s after the first API call (API calls took %.3f s)", what, res.elapsed.Seconds(), api.Seconds())
	return true, res.elapsed, afterAPI, nil
}

// countErrorLines counts klog error lines ("E0102 15:04:05.000000 ...").
func countErrorLines(log string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if len(line) > 1 && line[0] == 'E' && line[1] >= '0' && line[1] <= '9' {
			n++
		}
	}
	return n
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// cpus is for the table's heading.
func cpus() int { return runtime.NumCPU() }
