package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
	"github.com/flanneld/flanneld/pkg/diagnose"
)

// diagnoseTimeout bounds one `flanneld diagnose` run.
const diagnoseTimeout = 60 * time.Second

// TestDiagnose runs `flanneld diagnose` in a node (issue 6): exit 0 and
// every entry ok on a clean node; the probe tells a live peer from a dead
// one; with the daemon stopped, a deleted peer route is reported missing
// and the entries of a deleted Node stale (exit 1); a restarted daemon
// repairs both and diagnose agrees; an unreachable API server is exit 2.
func TestDiagnose(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)

	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	f3 := peer{Name: "f3", PodCIDR: podCIDR(3), PublicIP: fakePublicIP(3), MAC: fakeMAC(3)}
	createFakePeer(t, l, f3)
	startAll(t, l, []*lab.Node{n1, n2})
	peer2 := realPeer(t, n2)
	lab.WaitFor(t, "n1 to program n2 and f3", convergeTimeout, func() error {
		return checkPeerState(n1.Netns, stateFor(peer2, f3))
	})
	route2 := fmt.Sprintf("%s via %s dev %s onlink", peer2.PodCIDR, peer2.gateway(), vxlanDevice)
	route3 := fmt.Sprintf("%s via %s dev %s onlink", f3.PodCIDR, f3.gateway(), vxlanDevice)

	t.Run("clean node", func(t *testing.T) {
		code, out, stderr := runDiagnose(t, l, n1)
		if code != 0 {
			t.Errorf("exit status %d, want 0; stdout:\n%s\nstderr:\n%s", code, out, stderr)
		}
		t.Logf("flanneld diagnose:\n%s", out)
		for _, want := range []string{"RESULT: ok", route2, route3, peer2.MAC, "flannel.1"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}

		r := runDiagnoseJSON(t, l, n1, 0)
		if !r.OK || len(r.Problems) != 0 || r.Node != n1.Name {
			t.Errorf("report: ok %v, node %s, problems %q", r.OK, r.Node, r.Problems)
		}
		if names := peerNames(r); !slices.Equal(names, []string{"f3", "n2"}) {
			t.Errorf("peers %v, want [f3 n2]", names)
		}
		for _, p := range r.Peers {
			if len(p.Entries) != 3 {
				t.Errorf("peer %s: %d entries, want route, neighbour and fdb", p.Name, len(p.Entries))
			}
			for _, e := range p.Entries {
				if e.Status != diagnose.StatusOK {
					t.Errorf("peer %s: %s %s: %s", p.Name, e.Kind, e.Want, e.Status)
				}
			}
		}
		mac1 := realPeer(t, n1).MAC
		if d := r.Lease.BackendData; d.Status != diagnose.StatusOK || !strings.Contains(d.Local, mac1) {
			t.Errorf("backend data %+v, want ok with flannel.1's MAC %s", d, mac1)
		}
		if len(r.Devices) != 1 || r.Devices[0].Name != vxlanDevice || r.Devices[0].MAC != mac1 || r.Devices[0].Status != diagnose.StatusOK {
			t.Errorf("devices %+v", r.Devices)
		}
		if len(r.Firewall.Rules) != 10 {
			t.Errorf("%d firewall rules, want 10 (masquerade and forward)", len(r.Firewall.Rules))
		}
		if r.SubnetEnv.Status != diagnose.StatusOK {
			t.Errorf("subnet.env: %+v", r.SubnetEnv)
		}
	})

	t.Run("probe", func(t *testing.T) {
		// n2 answers through the VXLAN; f3 has no host behind it.
		r := runDiagnoseJSON(t, l, n1, 1, "--probe")
		for _, p := range r.Peers {
			if p.Probe == nil {
				t.Fatalf("peer %s has no probe result", p.Name)
			}
			wantTarget, wantReachable := podNetAddr(2), true
			if p.Name == f3.Name {
				wantTarget, wantReachable = f3.gateway(), false
			}
			if p.Probe.Target != wantTarget || p.Probe.Reachable != wantReachable {
				t.Errorf("peer %s probe %+v, want target %s reachable %v", p.Name, *p.Probe, wantTarget, wantReachable)
			}
		}
		if len(r.Problems) != 1 || !strings.Contains(r.Problems[0], f3.Name) {
			t.Errorf("problems %q, want only f3 unreachable", r.Problems)
		}
	})

	t.Run("daemon stopped, route deleted, node deleted", func(t *testing.T) {
		n1.Flanneld().Stop()
		mustExec(t, n1.Netns, "ip", "route", "del", peer2.PodCIDR)
		deleteNode(t, l, f3.Name)

		code, out, stderr := runDiagnose(t, l, n1)
		t.Logf("flanneld diagnose:\n%s", out)
		if code != 1 {
			t.Errorf("exit status %d, want 1; stderr:\n%s", code, stderr)
		}
		row := regexp.MustCompile(`(?m)^n2 +` + regexp.QuoteMeta(peer2.PodCIDR) + ` +` + regexp.QuoteMeta(peer2.PublicIP) +
			` +route +` + regexp.QuoteMeta(route2) + ` +missing$`)
		if !row.MatchString(out) {
			t.Errorf("no table row names n2's route %q as missing", route2)
		}
		wantProblem := fmt.Sprintf("peer n2: route %s: missing", route2)
		if !strings.Contains(out, wantProblem) {
			t.Errorf("output lacks the problem %q", wantProblem)
		}
		if !strings.Contains(out, "route "+route3) {
			t.Errorf("output does not list f3's route as stale")
		}

		r := runDiagnoseJSON(t, l, n1, 1)
		var routeStatus string
		for _, p := range r.Peers {
			for _, e := range p.Entries {
				if p.Name == n2.Name && e.Kind == "route" {
					routeStatus = e.Status
				} else if e.Status != diagnose.StatusOK {
					t.Errorf("peer %s: %s %s: %s, want ok", p.Name, e.Kind, e.Want, e.Status)
				}
			}
		}
		if routeStatus != diagnose.StatusMissing {
			t.Errorf("n2's route: status %q, want missing", routeStatus)
		}
		if names := peerNames(r); !slices.Equal(names, []string{"n2"}) {
			t.Errorf("peers %v, want [n2] (f3 was deleted)", names)
		}
		for _, want := range []string{"route " + route3, "neighbour " + f3.gateway(), "fdb " + f3.MAC} {
			if !slices.ContainsFunc(r.Stale, func(s string) bool { return strings.HasPrefix(s, want) }) {
				t.Errorf("stale %q lacks %q", r.Stale, want)
			}
		}
	})

	t.Run("restarted daemon repairs, diagnose agrees", func(t *testing.T) {
		l.StartFlanneld(t, n1)
		n1.WaitReady(t, readyTimeout)
		lab.WaitFor(t, "n1 to program n2 only", convergeTimeout, func() error {
			return checkPeerState(n1.Netns, stateFor(peer2))
		})
		r := runDiagnoseJSON(t, l, n1, 0)
		if !r.OK || len(r.Stale) != 0 {
			t.Errorf("after the restart: ok %v, problems %q", r.OK, r.Problems)
		}
	})

	t.Run("API server unreachable", func(t *testing.T) {
		code, out, stderr := runDiagnose(t, l, n1, "--kube-api-url=https://192.168.100.9:6443")
		if code != 2 || out != "" || !strings.Contains(stderr, "flanneld diagnose:") {
			t.Errorf("exit status %d, stdout %q, stderr %q; want 2 and the error on stderr", code, out, stderr)
		}
		t.Logf("stderr: %s", tailLines(stderr, 3))
	})
}

// TestDiagnoseIPv6 runs `flanneld diagnose` on a dual-stack and on an
// IPv6-only vxlan cluster of two nodes (issue 15.13): on a healthy node
// exit 0 without problems, each device with its own family's address and
// MTU, the IPv6 lease attributes compared, every entry of every family ok,
// and with --probe the peer answering in every family; with the daemon
// stopped and the IPv6 route to the peer deleted, exit 1 and exactly that
// route missing.
func TestDiagnoseIPv6(t *testing.T) {
	for _, c := range []struct {
		name      string
		conf      string
		dualStack bool
	}{
		{"dual stack", dualStackVXLANNetConf, true},
		{"IPv6 only", ipv6OnlyVXLANNetConf, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, nodes := newIPv6Cluster(t, c.conf, 2, c.dualStack)
			n1 := nodes[0]
			startAll(t, l, nodes)
			fams := []podFamily{familyIPv6}
			if c.dualStack {
				fams = []podFamily{familyIPv4, familyIPv6}
			}
			macs := map[string]string{} // n1's device -> MAC
			for _, fam := range fams {
				m := vtepMACsOf(t, nodes, fam.device)
				macs[fam.device] = m[n1]
				lab.WaitFor(t, "n1 to program n2 over "+fam.name, convergeTimeout, func() error {
					return checkVXLANPeers(fam, nodes, m, 0)
				})
			}

			t.Run("healthy node", func(t *testing.T) {
				code, out, stderr := runDiagnose(t, l, n1)
				t.Logf("flanneld diagnose:\n%s", out)
				if code != 0 || !strings.Contains(out, "RESULT: ok") {
					t.Errorf("exit status %d, want 0 and RESULT: ok; stderr:\n%s", code, tailLines(stderr, 20))
				}
				r := runDiagnoseJSON(t, l, n1, 0, "--probe")
				if !r.OK || len(r.Problems) != 0 {
					t.Errorf("report: ok %v, problems %q", r.OK, r.Problems)
				}
				checkDiagnoseIPv6Report(t, r, n1, fams, macs)
			})

			t.Run("daemon stopped, IPv6 route deleted", func(t *testing.T) {
				n1.Flanneld().Stop()
				mustExec(t, n1.Netns, "ip", "-6", "route", "del", podCIDR6(2), "dev", vxlanDevice6)
				r := runDiagnoseJSON(t, l, n1, 1)
				want := []string{fmt.Sprintf("peer n2: route %s via %s dev %s onlink: missing", podCIDR6(2), podNetAddr6(2), vxlanDevice6)}
				if !slices.Equal(r.Problems, want) {
					t.Errorf("problems %q, want %q", r.Problems, want)
				}
			})
		})
	}
}

// checkDiagnoseIPv6Report checks the report of healthy node n1 of a lab
// cluster with families fams, n2 its only peer: a device per family with
// the family's address and MTU, the lease of each family, and the peer's
// entries and probes of each family.
func checkDiagnoseIPv6Report(t *testing.T, r diagnose.Report, n1 *lab.Node, fams []podFamily, macs map[string]string) {
	t.Helper()
	if len(r.Devices) != len(fams) {
		t.Errorf("devices %+v, want %d", r.Devices, len(fams))
	}
	for _, fam := range fams {
		i := slices.IndexFunc(r.Devices, func(d diagnose.DeviceReport) bool { return d.Name == fam.device })
		if i < 0 {
			t.Errorf("no device %s in %+v", fam.device, r.Devices)
			continue
		}
		d, addr := r.Devices[i], fmt.Sprintf("%s/%d", fam.podNetAddr(1), fam.hostBits())
		if d.Status != diagnose.StatusOK || d.MTU != fam.mtu || d.WantMTU != fam.mtu || d.WantAddress != addr ||
			!slices.Equal(d.Addresses, []string{addr}) || d.MAC != macs[fam.device] || d.Local != fam.nodeIP(n1) {
			t.Errorf("device %+v, want ok, MTU %d, address %s, MAC %s, local %s", d, fam.mtu, addr, macs[fam.device], fam.nodeIP(n1))
		}
	}
	dualStack := len(fams) == 2
	l := r.Lease
	if l.IPv6Subnet != podCIDR6(1) || l.IPv6SubnetStatus != diagnose.StatusOK || l.PublicIPv6 == nil ||
		*l.PublicIPv6 != (diagnose.Compared{Advertised: n1.IPv6.String(), Local: n1.IPv6.String(), Status: diagnose.StatusOK}) ||
		l.BackendV6Data == nil || l.BackendV6Data.Status != diagnose.StatusOK || !strings.Contains(l.BackendV6Data.Local, macs[vxlanDevice6]) {
		t.Errorf("IPv6 lease: %+v, public IPv6 %+v, backend v6 data %+v", l, l.PublicIPv6, l.BackendV6Data)
	}
	if ok := l.SubnetStatus == diagnose.StatusOK && l.PublicIP.Status == diagnose.StatusOK && l.BackendData.Status == diagnose.StatusOK; ok != dualStack {
		t.Errorf("IPv4 lease %+v, want it compared only with dual stack", l)
	}
	if len(r.Peers) != 1 || len(r.Peers[0].Entries) != 3*len(fams) {
		t.Fatalf("peers %+v, want n2 with route, neighbour and fdb per family", r.Peers)
	}
	p := r.Peers[0]
	for _, e := range p.Entries {
		if e.Status != diagnose.StatusOK {
			t.Errorf("peer %s: %s %s: %s", p.Name, e.Kind, e.Want, e.Status)
		}
	}
	if p.ProbeIPv6 == nil || *p.ProbeIPv6 != (diagnose.ProbeReport{Target: podNetAddr6(2), Reachable: true}) {
		t.Errorf("IPv6 probe %+v, want %s reachable", p.ProbeIPv6, podNetAddr6(2))
	}
	if wantV4 := (diagnose.ProbeReport{Target: podNetAddr(2), Reachable: true}); dualStack && (p.Probe == nil || *p.Probe != wantV4) ||
		!dualStack && p.Probe != nil {
		t.Errorf("IPv4 probe %+v, want %s reachable with dual stack, none IPv6-only", p.Probe, podNetAddr(2))
	}
}

// runDiagnose runs `flanneld diagnose` with the daemon's lab flags in node
// n and returns its exit status and output.
func runDiagnose(t testing.TB, l *lab.Lab, n *lab.Node, extraArgs ...string) (code int, stdout, stderr string) {
	t.Helper()
	bin := lab.RequireBinary(t, lab.BinaryFlanneld)
	args := append([]string{bin, "diagnose"}, l.FlanneldArgs(n)...)
	args = append(args, extraArgs...)
	p := l.Start(t, n.Netns, "diagnose-"+n.Name, []string{"NODE_NAME=" + n.Name}, args...)
	code, exited := p.WaitExit(diagnoseTimeout)
	if !exited {
		p.Stop()
		t.Fatalf("flanneld diagnose still running after %v; stderr:\n%s", diagnoseTimeout, p.Log())
	}
	return code, p.Stdout(), p.Log()
}

// runDiagnoseJSON runs `flanneld diagnose --json`, checks the exit status
// and decodes the report.
func runDiagnoseJSON(t testing.TB, l *lab.Lab, n *lab.Node, wantCode int, extraArgs ...string) diagnose.Report {
	t.Helper()
	code, out, stderr := runDiagnose(t, l, n, append([]string{"--json"}, extraArgs...)...)
	if code != wantCode {
		t.Errorf("flanneld diagnose --json %v: exit status %d, want %d; stderr:\n%s", extraArgs, code, wantCode, tailLines(stderr, 20))
	}
	var r diagnose.Report
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("decoding the JSON report: %v\n%s", err, out)
	}
	if r.Format != diagnose.FormatVersion {
		t.Errorf("report format %d, want %d", r.Format, diagnose.FormatVersion)
	}
	return r
}

func peerNames(r diagnose.Report) []string {
	var names []string
	for _, p := range r.Peers {
		names = append(names, p.Name)
	}
	return names
}
