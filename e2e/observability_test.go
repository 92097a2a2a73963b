package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestObservability checks what operators see of a node (issue 6):
// /readyz turns 200 only once every peer is programmed, /metrics counts
// peers and drift repairs without per-peer series, and Events on the Node
// explain a skipped peer and a podCIDR outside the Network.
func TestObservability(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)

	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	// Many peers, so that programming them takes a measurable moment.
	var fakes []peer
	for i := 3; i <= 22; i++ {
		p := peer{Name: fmt.Sprintf("f%d", i), PodCIDR: podCIDR(i), PublicIP: fakePublicIP(i), MAC: fakeMAC(i)}
		createFakePeer(t, l, p)
		fakes = append(fakes, p)
	}
	// A peer whose backend-data is unusable: skipped, with an Event.
	bad := peer{Name: "bad30", PodCIDR: podCIDR(30), PublicIP: fakePublicIP(30), MAC: "not-a-mac"}
	createFakePeer(t, l, bad)

	l.StartFlanneld(t, n2)
	n2.WaitReady(t, readyTimeout)
	peer2 := realPeer(t, n2)
	want := append([]peer{peer2}, fakes...)

	t.Run("readyz only after peers are programmed", func(t *testing.T) {
		l.StartFlanneld(t, n1)
		var notReady []string // the distinct answers before the first 200
		elapsed := measure(t, "/readyz on n1 to answer 200", readyTimeout, func() error {
			requireRunning(t, n1)
			status, body, err := getProbe(n1, "/readyz")
			if err != nil {
				return err // not listening yet
			}
			if status != http.StatusOK {
				answer := fmt.Sprintf("%d %s", status, body)
				if len(notReady) == 0 || notReady[len(notReady)-1] != answer {
					notReady = append(notReady, answer)
				}
				return fmt.Errorf("%s", answer)
			}
			return nil
		})
		// At the first 200, every peer's entries are already in the kernel.
		if err := checkPeerState(n1.Netns, stateFor(want...)); err != nil {
			t.Errorf("/readyz answered 200 before every peer was programmed: %v", err)
		}
		metric(t, "readyz_after_start", elapsed)
		t.Logf("answers before ready: %q", notReady)
		if len(notReady) == 0 {
			t.Errorf("/readyz never answered not-ready before 200")
		}
		for _, a := range notReady {
			if !strings.HasPrefix(a, "503 not ready: ") {
				t.Errorf("not-ready answer %q, want 503 with the reason", a)
			}
		}
		if status, body, err := getProbe(n1, "/healthz"); err != nil || status != http.StatusOK {
			t.Errorf("/healthz: %d %q %v", status, body, err)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		requireRunning(t, n1)
		var m promText
		lab.WaitFor(t, "peer gauges on n1", convergeTimeout, func() error {
			var err error
			if m, err = scrapeMetrics(n1); err != nil {
				return err
			}
			return m.expect(map[string]float64{
				"flanneld_peers_known":      float64(len(want) + 1),
				"flanneld_peers_programmed": float64(len(want)),
				"flanneld_peers_skipped":    1,
			})
		})
		if err := m.expect(map[string]float64{
			`flanneld_lease{subnet="10.244.1.0/24"}`: 1,
			`flanneld_sync_errors_total`:             0,
		}); err != nil {
			t.Error(err)
		}
		for _, name := range []string{`flanneld_sync_passes_total{kind="full"}`, `flanneld_watch_events_total{type="add"}`,
			`flanneld_last_sync_timestamp_seconds`, `flanneld_watch_last_sync_timestamp_seconds`} {
			if v := m[name]; v <= 0 {
				t.Errorf("%s = %v, want a positive value", name, v)
			}
		}
		for _, prefix := range []string{"flanneld_build_info{", `flanneld_device_packets_total{device="flannel.1"`} {
			if !m.has(prefix) {
				t.Errorf("no %s...} series", prefix)
			}
		}
		// Bounded cardinality: no series names a peer or its subnet.
		for series := range m {
			for _, p := range append(want, bad) {
				if strings.Contains(series, `"`+p.Name+`"`) || strings.Contains(series, `"`+p.PodCIDR+`"`) {
					t.Errorf("series %s is labelled with peer %s", series, p.Name)
				}
			}
		}

		// Someone deletes a peer route: the repair is counted.
		before := m[`flanneld_drift_repairs_total{kind="route"}`]
		mustExec(t, n1.Netns, "ip", "route", "del", peer2.PodCIDR)
		elapsed := measure(t, "the route repair to show in /metrics", observeRepairTimeout, func() error {
			m, err := scrapeMetrics(n1)
			if err != nil {
				return err
			}
			if got := m[`flanneld_drift_repairs_total{kind="route"}`]; got <= before {
				return fmt.Errorf(`drift_repairs_total{kind="route"} = %v, was %v`, got, before)
			}
			return nil
		})
		metric(t, "route_repair_in_metrics", elapsed)
		if err := checkPeerState(n1.Netns, stateFor(want...)); err != nil {
			t.Errorf("after the repair: %v", err)
		}
		m, err := scrapeMetrics(n1)
		if err != nil {
			t.Fatal(err)
		}
		for _, kind := range []string{"neighbour", "fdb", "device"} {
			if v := m[`flanneld_drift_repairs_total{kind="`+kind+`"}`]; v != 0 {
				t.Errorf(`drift_repairs_total{kind=%q} = %v, want 0 (only a route was deleted)`, kind, v)
			}
		}
	})

	t.Run("PeerSkipped event", func(t *testing.T) {
		ev := waitEvent(t, l, n1.Name, "PeerSkipped")
		if !strings.Contains(ev, bad.Name) || !strings.Contains(ev, "Warning") {
			t.Errorf("PeerSkipped event %q does not name %s as a warning", ev, bad.Name)
		}
		t.Logf("event: %s", ev)
	})

	t.Run("PodCIDROutsideNetwork event", func(t *testing.T) {
		n := l.AddNode(t, "n9", "10.99.1.0/24")
		p := l.StartFlanneld(t, n)
		code, exited := p.WaitExit(exitTimeout)
		if !exited || code != 1 {
			t.Errorf("flanneld with a podCIDR outside the Network: exited %v with %d, want status 1; log:\n%s", exited, code, tailLines(p.Log(), 20))
		}
		ev := waitEvent(t, l, n.Name, "PodCIDROutsideNetwork")
		if !strings.Contains(ev, "10.99.1.0/24") {
			t.Errorf("event %q does not name the podCIDR", ev)
		}
		t.Logf("event: %s", ev)
	})
}

// observeRepairTimeout bounds the wait for a repair (a deadline, not a
// speed target: the drift watcher repairs within a second).
const observeRepairTimeout = 45 * time.Second

// getProbe asks flanneld on n for path once.
func getProbe(n *lab.Node, path string) (status int, body string, err error) {
	resp, err := lab.HTTPClientIn(n.Netns, 2*time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d%s", lab.HealthzPort, path))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// waitEvent waits for an Event on Node node with reason and describes it.
func waitEvent(t testing.TB, l *lab.Lab, node, reason string) string {
	t.Helper()
	var desc string
	lab.WaitFor(t, fmt.Sprintf("a %s event on Node %s", reason, node), convergeTimeout, func() error {
		events, err := nodeEvents(l, node, reason)
		if err != nil {
			return err
		}
		if len(events) == 0 {
			return fmt.Errorf("none yet")
		}
		e := events[0]
		desc = fmt.Sprintf("%s %s %s (source %s/%s, count %d)", e.Type, e.Reason, e.Message, e.Source.Component, e.Source.Host, e.Count)
		return nil
	})
	return desc
}

// nodeEvents lists the Events on Node node with reason.
func nodeEvents(l *lab.Lab, node, reason string) ([]corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := l.Client().CoreV1().Events("default").List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node + ",reason=" + reason,
	})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}

// promText is a scrape: the value of each series, by its name and labels
// as the text format prints them, e.g. `flanneld_lease{subnet="10.244.1.0/24"}`.
type promText map[string]float64

// scrapeMetrics reads flanneld's /metrics inside node n.
func scrapeMetrics(n *lab.Node) (promText, error) {
	resp, err := lab.HTTPClientIn(n.Netns, 2*time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", lab.HealthzPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	m := promText{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("bad /metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad /metrics line %q: %w", line, err)
		}
		m[line[:i]] = v
	}
	return m, nil
}

// expect checks series values.
func (m promText) expect(want map[string]float64) error {
	var problems []string
	for name, v := range want {
		got, ok := m[name]
		if !ok {
			problems = append(problems, name+" missing")
		} else if got != v {
			problems = append(problems, fmt.Sprintf("%s = %v, want %v", name, got, v))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// has reports whether some series starts with prefix.
func (m promText) has(prefix string) bool {
	for name := range m {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}
