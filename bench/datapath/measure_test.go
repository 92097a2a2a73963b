package datapath

// The measurements: iperf3 for TCP throughput and qperf tcp_lat for TCP
// latency, each with a one-shot server in one lab namespace and the client
// in another.

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

const (
	iperfPort = 5201
	qperfPort = 19765
	// toolSlack is how much longer than its nominal duration a tool may run
	// before it counts as hung.
	toolSlack = 60 * time.Second
)

// prioritized runs argv at nice -10, so that other work on the machine
// (compilers, other tests) disturbs the measurements less. The kernel does
// most of the datapath's work in the sender's and receiver's context, so
// this covers the path under test too.
func prioritized(argv ...string) []string {
	return append([]string{"nice", "-n", "-10"}, argv...)
}

// endpoint is one side of a measured path: a namespace and the address the
// other side reaches it at.
type endpoint struct {
	Netns string
	Addr  string
}

// measureThroughput runs iperf3 from client to server for d and returns the
// received rate in Gbit/s. The first second (TCP slow start) is omitted.
func measureThroughput(t testing.TB, l *lab.Lab, client, server endpoint, d time.Duration) (float64, error) {
	t.Helper()
	port := strconv.Itoa(iperfPort)
	srv := l.Start(t, server.Netns, "iperf3-server", nil, prioritized("iperf3", "-s", "-1", "-p", port)...)
	defer srv.Stop()
	if err := waitListening(srv, port); err != nil {
		return 0, err
	}
	secs := strconv.Itoa(int(d.Seconds()))
	cli := l.Start(t, client.Netns, "iperf3-client", nil, prioritized("iperf3", "-c", server.Addr, "-p", port, "-t", secs, "-O", "1", "-J")...)
	if err := waitTool(cli, d); err != nil {
		return 0, err
	}
	return parseIPerf3(cli.Stdout())
}

// measureLatency runs qperf tcp_lat from client to server for d and returns
// the mean one-way latency in microseconds, as qperf reports it. With awake,
// the CPUs are kept from idling meanwhile (keepCPUsAwake).
//
// Client and server are pinned to the same CPU. A veth delivers a packet
// on the sender's CPU, so the whole ping-pong, with every hop of the path,
// then runs on one CPU: the figure is the path's processing cost, not
// whether the scheduler happened to put the two ends on one CPU or two
// (which costs a wake-up IPI per message and varies from run to run).
func measureLatency(t testing.TB, l *lab.Lab, client, server endpoint, d time.Duration, awake bool) (float64, error) {
	t.Helper()
	if awake {
		defer keepCPUsAwake(t, l, server.Netns)()
	}
	port := strconv.Itoa(qperfPort)
	cpu := strconv.Itoa(runtime.NumCPU() - 1)
	srv := l.Start(t, server.Netns, "qperf-server", nil, prioritized("taskset", "-c", cpu, "qperf", "-lp", port)...)
	defer srv.Stop()
	if err := waitListening(srv, port); err != nil {
		return 0, err
	}
	secs := strconv.Itoa(int(d.Seconds()))
	cli := l.Start(t, client.Netns, "qperf-client", nil, prioritized("taskset", "-c", cpu, "qperf", "-lp", port, "-t", secs, server.Addr, "tcp_lat")...)
	if err := waitTool(cli, d); err != nil {
		return 0, err
	}
	return parseQperfLatency(cli.Stdout())
}

// keepCPUsAwake runs a busy loop at the lowest priority (nice 19) on every
// CPU, from namespace ns, and returns the function that stops them. On a
// virtual machine an idle vCPU halts, and waking it for the next packet
// costs tens of microseconds, which would swamp a datapath's few: a
// ping-pong such as tcp_lat sleeps between messages and pays it every
// time. The loops keep every CPU running; the measured programs, at nice
// -10, preempt them at once.
func keepCPUsAwake(t testing.TB, l *lab.Lab, ns string) (stop func()) {
	t.Helper()
	var loops []*lab.Process
	for cpu := range runtime.NumCPU() {
		loops = append(loops, l.Start(t, ns, fmt.Sprintf("busy-cpu%d", cpu), nil,
			"taskset", "-c", strconv.Itoa(cpu), "nice", "-n", "19", "sh", "-c", "while :; do :; done"))
	}
	return func() {
		for _, p := range loops {
			p.Stop()
		}
	}
}

// waitListening waits until something listens on TCP port in the server's
// namespace.
func waitListening(srv *lab.Process, port string) error {
	err := lab.Poll(10*time.Second, func() error {
		if !srv.Running() {
			return fmt.Errorf("%s exited: %s", srv.Name, strings.TrimSpace(srv.Log()+srv.Stdout()))
		}
		out, err := lab.Exec(srv.Netns, "ss", "-Hltn", "sport = :"+port)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) == "" {
			return fmt.Errorf("nothing listens on port %s yet", port)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", srv.Name, err)
	}
	return nil
}

// waitTool waits for a client that should take about d.
func waitTool(p *lab.Process, d time.Duration) error {
	code, ok := p.WaitExit(d + toolSlack)
	if !ok {
		p.Kill9()
		return fmt.Errorf("%s did not finish within %v", p.Name, d+toolSlack)
	}
	if code != 0 {
		return fmt.Errorf("%s exited with status %d: %s", p.Name, code, strings.TrimSpace(lastLines(p.Stdout()+p.Log(), 10)))
	}
	return nil
}

// parseIPerf3 reads the receiver's rate from iperf3's JSON report, in
// Gbit/s.
func parseIPerf3(out string) (float64, error) {
	var report struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		return 0, fmt.Errorf("parsing iperf3's JSON report: %w", err)
	}
	if report.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", report.Error)
	}
	if report.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("iperf3 reported no received data")
	}
	return report.End.SumReceived.BitsPerSecond / 1e9, nil
}

// qperfLatency matches qperf's result line, e.g. "    latency  =  17.3 us".
var qperfLatency = regexp.MustCompile(`(?m)^\s*latency\s*=\s*([0-9.]+)\s*(ns|us|ms|sec)\s*$`)

// parseQperfLatency reads tcp_lat's latency, in microseconds.
func parseQperfLatency(out string) (float64, error) {
	m := qperfLatency.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no latency in qperf's output: %q", out)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("qperf latency %q: %w", m[1], err)
	}
	scale := map[string]float64{"ns": 1e-3, "us": 1, "ms": 1e3, "sec": 1e6}[m[2]]
	return v * scale, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
