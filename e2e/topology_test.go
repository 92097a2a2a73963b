package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// TestRoutedLab checks the lab's routed topology, without flanneld: nodes on
// one segment reach each other directly, nodes on different segments and
// the control plane through the router, and the router sends nothing
// outside the two segments.
func TestRoutedLab(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	n1 := l.AddNodeOn(t, lab.Segment1, "n1", podCIDR(1))
	n2 := l.AddNodeOn(t, lab.Segment1, "n2", podCIDR(2))
	n3 := l.AddNodeOn(t, lab.Segment2, "n3", podCIDR(3))
	n4 := l.AddNodeOn(t, lab.Segment2, "n4", podCIDR(4))

	for n, want := range map[*lab.Node]string{n1: "192.168.100.11", n2: "192.168.100.12", n3: "192.168.200.13", n4: "192.168.200.14"} {
		if n.IP.String() != want {
			t.Errorf("%s: IP %s, want %s", n.Name, n.IP, want)
		}
	}
	checkNodeObject(t, l.GetNode(t, n3), podCIDR(3), "192.168.200.13")
	for n, gw := range map[*lab.Node]string{n1: "192.168.100.1", n3: "192.168.200.1"} {
		routes, err := lab.ShowRoutes(n.Netns)
		if err != nil {
			t.Fatal(err)
		}
		if !hasRoute(routes, "default", gw, "eth0") {
			t.Errorf("%s has no default route via %s dev eth0: %v", n.Name, gw, routes)
		}
	}

	cp := lab.ControlPlaneIP.String()
	cases := []struct {
		from    *lab.Node
		to      string
		gateway string // "" for a directly reachable address
		ttl     int    // of the echo reply: 64 minus the hops
	}{
		{n1, n2.IP.String(), "", 64},
		{n1, cp, "", 64},
		{n1, n3.IP.String(), "192.168.100.1", 63},
		{n3, n4.IP.String(), "", 64},
		{n3, n1.IP.String(), "192.168.200.1", 63},
		{n3, cp, "192.168.200.1", 63},
		{n4, n2.IP.String(), "192.168.200.1", 63},
	}
	for _, c := range cases {
		gw, err := routeGetGateway(c.from.Netns, c.to)
		if err != nil {
			t.Errorf("%s -> %s: %v", c.from.Name, c.to, err)
		} else if gw != c.gateway {
			t.Errorf("%s -> %s: route via %q, want %q", c.from.Name, c.to, gw, c.gateway)
		}
		out, err := lab.Exec(c.from.Netns, "ping", "-n", "-c", "1", "-W", "2", c.to)
		if err != nil {
			t.Errorf("%s cannot ping %s: %v", c.from.Name, c.to, err)
		} else if want := fmt.Sprintf("ttl=%d ", c.ttl); !strings.Contains(out, want) {
			t.Errorf("%s -> %s: reply without %q:\n%s", c.from.Name, c.to, want, out)
		}
	}

	// The API server answers nodes on both segments.
	for _, n := range []*lab.Node{n1, n3} {
		if err := apiServerAnswers(n.Netns); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}

	// The router forwards, and knows only the two segments.
	rt := l.RouterNetns()
	if out, err := lab.Exec(rt, "sysctl", "-n", "net.ipv4.ip_forward"); err != nil || strings.TrimSpace(out) != "1" {
		t.Errorf("router ip_forward = %q, %v; want 1", out, err)
	}
	routes, err := lab.ShowRoutes(rt)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range routes {
		got = append(got, r.Dst+" dev "+r.Dev)
	}
	if err := compareSets("router routes", got, []string{"192.168.100.0/24 dev eth0", "192.168.200.0/24 dev eth1"}); err != nil {
		t.Error(err)
	}
	// Calling AddRouter again changes nothing.
	l.AddRouter(t)
	if l.RouterNetns() != rt {
		t.Errorf("router namespace changed from %s to %s", rt, l.RouterNetns())
	}
}

// routeGetGateway asks the kernel of ns how it reaches dst (`ip route get`)
// and returns the gateway ("" for a directly reachable address).
func routeGetGateway(ns, dst string) (string, error) {
	out, err := lab.Exec(ns, "ip", "-j", "route", "get", dst)
	if err != nil {
		return "", err
	}
	var routes []lab.Route
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		return "", fmt.Errorf("parsing ip route get %s: %w", dst, err)
	}
	if len(routes) != 1 {
		return "", fmt.Errorf("ip route get %s: %d entries", dst, len(routes))
	}
	return routes[0].Gateway, nil
}

// apiServerAnswers makes one HTTPS request to kube-apiserver from inside ns
// (any HTTP status will do: the point is the path).
func apiServerAnswers(ns string) error {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:       lab.DialContextIn(ns),
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: true,
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, lab.APIServerURL()+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("kube-apiserver unreachable: %w", err)
	}
	resp.Body.Close()
	return nil
}
