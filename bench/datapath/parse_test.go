package datapath

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseIPerf3(t *testing.T) {
	got, err := parseIPerf3(`{"start":{},"end":{"sum_sent":{"bits_per_second":2.1e10},"sum_received":{"bits_per_second":2.0e10}}}`)
	if err != nil || got != 20 {
		t.Errorf("parseIPerf3 = %v, %v; want 20", got, err)
	}
	if _, err := parseIPerf3(`{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("parseIPerf3 of an error report: %v", err)
	}
	if _, err := parseIPerf3("iperf3: error"); err == nil {
		t.Error("parseIPerf3 accepted text that is not JSON")
	}
}

func TestParseQperfLatency(t *testing.T) {
	for out, want := range map[string]float64{
		"tcp_lat:\n    latency  =  4.75 us\n":                           4.75,
		"tcp_lat:\n    latency  =  5.16 us\n    time     =     2 sec\n": 5.16,
		"tcp_lat:\n    latency  =  1.2 ms\n":                            1200,
		"tcp_lat:\n    latency  =  950 ns\n":                            0.95,
	} {
		got, err := parseQperfLatency(out)
		if err != nil || math.Abs(got-want) > 1e-9 {
			t.Errorf("parseQperfLatency(%q) = %v, %v; want %v", out, got, err, want)
		}
	}
	if _, err := parseQperfLatency("tcp_lat:\nfailed to connect\n"); err == nil {
		t.Error("parseQperfLatency accepted output without a latency")
	}
}

func TestPrintTable(t *testing.T) {
	var b bytes.Buffer
	printTable(&b, []row{
		{backend: "vxlan", podGbps: []float64{30, 28, 10}, underGbps: []float64{40, 39, 38}, podLatUS: []float64{20, 25, 90}, underLatUS: []float64{16, 17, 19}},
		{backend: "udp", err: errors.New("flanneld on udp-a: not ready\nlog tail")},
	}, settings{throughput: 10 * time.Second, latency: 5 * time.Second, rounds: 3})
	out := b.String()
	for _, want := range []string{
		"best run", "vxlan       30.00            40.00   0.75            20.0                 16.0   1.25",
		"median run", "vxlan       28.00            39.00   0.72            25.0                 17.0   1.47",
		"udp", "failed: udp: flanneld on udp-a: not ready\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestSettingsFromEnv(t *testing.T) {
	t.Setenv(envBackends, " vxlan, udp ,")
	t.Setenv(envSeconds, "6")
	t.Setenv(envRounds, "5")
	t.Setenv(envAwake, "0")
	s := settingsFromEnv(t)
	if strings.Join(s.backends, ",") != "vxlan,udp" || s.throughput != 6*time.Second || s.latency != 3*time.Second || s.rounds != 5 || s.awake {
		t.Errorf("settings = %+v", s)
	}
}

func TestMedian(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median of 3 = %v", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median of 4 = %v", got)
	}
}

func TestByHandNames(t *testing.T) {
	for name, want := range map[string]string{"by-hand-vxlan": "vxlan", "by-hand-host-gw-bare": "host-gw-bare"} {
		if kind, ok := isByHand(name); !ok || kind != want {
			t.Errorf("isByHand(%q) = %q, %v; want %q", name, kind, ok, want)
		}
	}
	if _, ok := isByHand("host-gw"); ok {
		t.Error(`isByHand("host-gw") is true`)
	}
}
