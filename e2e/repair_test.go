package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// repairTimeout bounds every wait for a repair. Generous: it is a deadline
// for polling (covering even the 30 s periodic resync), not a speed target;
// the measured figures are logged as METRIC lines.
const repairTimeout = 45 * time.Second

// repairQuiet separates two disruptions so that each repair is measured
// with the rate limiter's bucket refilled (it allows a few repairs at once,
// then about one per second).
const repairQuiet = 3 * time.Second

// TestDriftRepair breaks, one at a time, each kind of state flanneld owns
// on a running node and measures how long flanneld takes to put it back
// (issue 3, part 1): a deleted or changed route, neighbour and FDB entry; a
// deleted flannel.1; the underlay link going down and up; flushed or
// deleted iptables rules. After each repair the state must be exactly what
// it was and pods must ping. Each repair is logged once; a repair fight
// with another agent is rate limited.
func TestDriftRepair(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)

	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	fake := peer{Name: "f3", PodCIDR: podCIDR(3), PublicIP: fakePublicIP(3), MAC: fakeMAC(3)}
	createFakePeer(t, l, fake)
	for _, n := range []*lab.Node{n1, n2} {
		l.StartFlanneld(t, n) // default --iptables-resync (5 s)
	}
	n1.WaitReady(t, readyTimeout)
	n2.WaitReady(t, readyTimeout)
	p1 := l.AddPod(t, n1, "p1")
	p2 := l.AddPod(t, n2, "p1")
	peer2 := realPeer(t, n2)
	mac1 := realPeer(t, n1).MAC
	want := stateFor(peer2, fake)
	lab.WaitFor(t, "n1 to program n2 and f3", convergeTimeout, func() error { return checkPeerState(n1.Netns, want) })
	lab.WaitPing(t, p1, p2.IP, pingTimeout)
	ns := n1.Netns
	flanneld := n1.Flanneld()

	// healthy checks what must hold after every repair.
	healthy := func(t *testing.T) {
		t.Helper()
		requireRunning(t, n1)
		if err := lab.Poll(convergeTimeout, func() error { return checkPeerState(ns, want) }); err != nil {
			t.Errorf("n1 state after the repair: %v", err)
		}
		if err := lab.Poll(convergeTimeout, func() error { return checkVXLANDevice(ns, 1) }); err != nil {
			t.Errorf("n1: %v", err)
		}
		if link, err := lab.ShowLink(ns, vxlanDevice); err != nil || link.Address != mac1 {
			t.Errorf("n1 %s MAC %q (%v), want %s", vxlanDevice, link.Address, err, mac1)
		}
		if err := lab.Poll(pingTimeout, func() error { return lab.Ping(p1, p2.IP) }); err != nil {
			t.Errorf("ping n1/p1 -> n2/p1: %v", err)
		}
		if err := lab.Poll(pingTimeout, func() error { return lab.Ping(p2, p1.IP) }); err != nil {
			t.Errorf("ping n2/p1 -> n1/p1: %v", err)
		}
	}

	// entry describes one entry of peer2's state, and how to see it in the
	// log ("Repaired drift" entry="<kind> ...<token>...").
	type entry struct {
		name     string // for the METRIC name
		kind     string // regexp for the kind word in the log
		token    string // identifies the entry in the log line
		breakIt  [][]string
		restored func() error
	}
	routeOK := func() error { return checkEntry(ns, "route", peer2) }
	neighOK := func() error { return checkEntry(ns, "neighbour", peer2) }
	fdbOK := func() error { return checkEntry(ns, "fdb", peer2) }
	cases := []entry{
		{"route_deleted", "route", peer2.PodCIDR,
			[][]string{{"ip", "route", "del", peer2.PodCIDR, "dev", vxlanDevice}}, routeOK},
		{"route_changed", "route", peer2.PodCIDR,
			[][]string{{"ip", "route", "replace", peer2.PodCIDR, "via", "10.244.2.9", "dev", vxlanDevice, "onlink", "proto", "102"}}, routeOK},
		{"neighbour_deleted", "neigh\\w*", peer2.gateway(),
			[][]string{{"ip", "neigh", "del", peer2.gateway(), "dev", vxlanDevice}}, neighOK},
		{"neighbour_changed", "neigh\\w*", peer2.gateway(),
			[][]string{{"ip", "neigh", "replace", peer2.gateway(), "lladdr", "0a:00:00:00:00:01", "dev", vxlanDevice, "nud", "permanent"}}, neighOK},
		{"fdb_deleted", "fdb", peer2.MAC,
			[][]string{{"bridge", "fdb", "del", peer2.MAC, "dev", vxlanDevice, "dst", peer2.PublicIP}}, fdbOK},
		{"fdb_changed", "fdb", peer2.MAC,
			[][]string{{"bridge", "fdb", "replace", peer2.MAC, "dev", vxlanDevice, "dst", "192.168.100.99", "self", "permanent"}}, fdbOK},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, "_", " "), func(t *testing.T) {
			time.Sleep(repairQuiet)
			logged := regexp.MustCompile(`(?m)^.*"Repaired drift".*entry="` + c.kind + ` .*` + regexp.QuoteMeta(c.token) + `.*$`)
			before := len(logged.FindAllString(flanneld.Log(), -1))
			for _, argv := range c.breakIt {
				mustExec(t, ns, argv...)
			}
			d := measure(t, c.name+" to be repaired", repairTimeout, c.restored)
			metric(t, c.name+"_repair_seconds", d)
			time.Sleep(1500 * time.Millisecond)
			lines := logged.FindAllString(flanneld.Log(), -1)[before:]
			if len(lines) != 1 {
				t.Errorf(`want exactly one "Repaired drift" log line for the %s, got %d:%s`, c.name, len(lines), "\n"+strings.Join(lines, "\n"))
			} else {
				t.Logf("flanneld logged: %s", lines[0])
			}
			healthy(t)
		})
	}

	t.Run("device deleted", func(t *testing.T) {
		time.Sleep(repairQuiet)
		before := link(t, ns, vxlanDevice)
		mustExec(t, ns, "ip", "link", "del", vxlanDevice)
		d := measure(t, vxlanDevice+" and all its entries to be restored", repairTimeout, func() error {
			link, err := lab.ShowLink(ns, vxlanDevice)
			if err != nil {
				return err
			}
			if link.Address != before.Address {
				return fmt.Errorf("%s recreated with MAC %s, want %s", vxlanDevice, link.Address, before.Address)
			}
			if err := checkVXLANDevice(ns, 1); err != nil {
				return err
			}
			return checkPeerState(ns, want)
		})
		metric(t, "device_repair_seconds", d)
		after := link(t, ns, vxlanDevice)
		if after.IfIndex == before.IfIndex {
			t.Errorf("%s has its old ifindex %d: it was not recreated?", vxlanDevice, after.IfIndex)
		}
		time.Sleep(1500 * time.Millisecond)
		if lines := logLines(flanneld.Log(), `"Recreated device`); len(lines) != 1 {
			t.Errorf(`want exactly one "Recreated device" log line, got %d:%s`, len(lines), "\n"+strings.Join(lines, "\n"))
		} else {
			t.Logf("flanneld logged: %s", lines[0])
		}
		healthy(t)
		// The peers' FDB entries still point at n1's (unchanged) MAC.
		if err := checkPeerState(n2.Netns, stateFor(realPeer(t, n1), fake)); err != nil {
			t.Errorf("n2: %v", err)
		}
	})

	t.Run("device set down", func(t *testing.T) {
		// Setting the device down also makes the kernel drop every route
		// through it.
		time.Sleep(repairQuiet)
		mustExec(t, ns, "ip", "link", "set", vxlanDevice, "down")
		d := measure(t, vxlanDevice+" up with all its entries", repairTimeout, func() error {
			if err := checkVXLANDevice(ns, 1); err != nil {
				return err
			}
			return checkPeerState(ns, want)
		})
		metric(t, "device_down_repair_seconds", d)
		healthy(t)
	})

	t.Run("device MAC changed", func(t *testing.T) {
		// Peers send to the advertised MAC: a changed one must be put back.
		time.Sleep(repairQuiet)
		mustExec(t, ns, "ip", "link", "set", vxlanDevice, "address", "0a:00:00:00:00:42")
		d := measure(t, vxlanDevice+" to get its advertised MAC back", repairTimeout, func() error {
			link, err := lab.ShowLink(ns, vxlanDevice)
			if err != nil {
				return err
			}
			if link.Address != mac1 {
				return fmt.Errorf("MAC %s, want %s", link.Address, mac1)
			}
			return nil
		})
		metric(t, "device_mac_repair_seconds", d)
		healthy(t)
	})

	t.Run("underlay link flap", func(t *testing.T) {
		time.Sleep(repairQuiet)
		mustExec(t, ns, "ip", "link", "set", "eth0", "down")
		time.Sleep(2 * time.Second)
		requireRunning(t, n1)
		if err := checkPeerState(ns, want); err != nil {
			t.Logf("while eth0 is down: %v", err)
		} else {
			t.Logf("while eth0 is down, n1's vxlan state is intact")
		}
		mustExec(t, ns, "ip", "link", "set", "eth0", "up")
		up := time.Now()
		d := measure(t, "n1's state after eth0 is up again", repairTimeout, func() error {
			if err := checkVXLANDevice(ns, 1); err != nil {
				return err
			}
			return checkPeerState(ns, want)
		})
		metric(t, "link_flap_state_seconds", d)
		measure(t, "ping n1/p1 -> n2/p1 after eth0 is up again", repairTimeout, func() error {
			_, err := lab.Exec(p1.Netns, "ping", "-c", "1", "-W", "0.2", p2.IP.String())
			return err
		})
		metric(t, "link_flap_ping_seconds", time.Since(up))
		// The lab's default route went with the link; it is not
		// flanneld's, put it back for the rest of the test.
		mustExec(t, ns, "ip", "route", "replace", "default", "via", lab.UnderlayGateway.String(), "dev", "eth0")
		healthy(t)
	})

	t.Run("iptables", func(t *testing.T) {
		rulesOK := func() error { return checkNodeRules(ns, podCIDR(1)) }
		for _, c := range []struct {
			name  string
			steps [][]string
		}{
			{"flush_postrtg_chain", [][]string{{"iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"}}},
			{"delete_forward_jump", [][]string{{"iptables", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"}}},
			{"delete_one_rule", [][]string{{"iptables", "-t", "filter", "-D", "FLANNEL-FWD", "-d", clusterNetwork, "-m", "comment", "--comment", "flanneld forward", "-j", "ACCEPT"}}},
			{"flush_all_tables", [][]string{
				{"iptables", "-t", "nat", "-F"}, {"iptables", "-t", "nat", "-X"},
				{"iptables", "-t", "filter", "-F"}, {"iptables", "-t", "filter", "-X"},
			}},
		} {
			t.Run(strings.ReplaceAll(c.name, "_", " "), func(t *testing.T) {
				if err := lab.Poll(convergeTimeout, rulesOK); err != nil {
					t.Fatalf("rules before: %v", err)
				}
				for _, argv := range c.steps {
					mustExec(t, ns, argv...)
				}
				if rulesOK() == nil {
					t.Fatalf("the rules look intact right after breaking them: the test is wrong")
				}
				d := measure(t, "the iptables rules to be restored", repairTimeout, rulesOK)
				metric(t, "iptables_"+c.name+"_repair_seconds", d)
				healthy(t)
			})
		}
		if lines := logLines(flanneld.Log(), "Restored firewall rules"); len(lines) == 0 {
			t.Errorf(`no "Restored firewall rules" log line`)
		}
	})

	t.Run("stray entries on the device are pruned", func(t *testing.T) {
		// Someone else's entries on flannel.1 are not drift of what
		// flanneld installed, but flannel.1 is flanneld's: the periodic
		// full pass (every 30 s) removes them.
		stray := peer{Name: "stray", PodCIDR: "10.244.88.0/24", PublicIP: "192.168.100.188", MAC: fakeMAC(88)}
		for _, argv := range [][]string{
			{"ip", "neigh", "add", stray.gateway(), "lladdr", stray.MAC, "dev", vxlanDevice, "nud", "permanent"},
			{"bridge", "fdb", "append", stray.MAC, "dev", vxlanDevice, "dst", stray.PublicIP, "self", "permanent"},
			{"ip", "route", "add", stray.PodCIDR, "via", stray.gateway(), "dev", vxlanDevice, "onlink"},
		} {
			mustExec(t, ns, argv...)
		}
		d := measure(t, "the stray entries on "+vxlanDevice+" to be removed", 45*time.Second, func() error { return checkPeerState(ns, want) })
		metric(t, "stray_entries_pruned_seconds", d)
		healthy(t)
	})

	// Last: another agent deleting the route in a tight loop drains the
	// rate limiter's bucket.
	t.Run("repair fight is rate limited", func(t *testing.T) {
		time.Sleep(repairQuiet)
		logged := regexp.MustCompile(`"Repaired drift".*entry="route ` + regexp.QuoteMeta(peer2.PodCIDR))
		before := len(logged.FindAllString(flanneld.Log(), -1))
		const fight = 6 * time.Second
		fighter := l.Start(t, ns, "route-deleter", nil, "sh", "-c",
			fmt.Sprintf("while :; do ip route del %s dev %s 2>/dev/null; sleep 0.01; done", peer2.PodCIDR, vxlanDevice))
		time.Sleep(fight)
		fighter.Stop()
		stopped := time.Now()
		repairs := len(logged.FindAllString(flanneld.Log(), -1)) - before
		metricValue(t, "route_repairs_during_6s_fight", float64(repairs))
		// A few at once, then about one per second: 6 s allow about a
		// dozen. Without a limit it would be hundreds.
		if repairs > 20 {
			t.Errorf("flanneld repaired the route %d times in %v against an agent deleting it every 10 ms: not rate limited", repairs, fight)
		}
		if repairs == 0 {
			t.Errorf("flanneld never repaired the route during the fight")
		}
		measure(t, "the route to be restored after the fight", repairTimeout, routeOK)
		metric(t, "route_repair_after_fight_seconds", time.Since(stopped))
		healthy(t)
	})
}

// checkEntry checks that ns holds the route, the neighbour or the FDB
// entry flanneld programs for p, exactly.
func checkEntry(ns, kind string, p peer) error {
	switch kind {
	case "route":
		routes, err := routesTo(ns, p.PodCIDR)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Gateway == p.gateway() && r.Dev == vxlanDevice && r.Onlink() && len(routes) == 1 {
				return nil
			}
		}
		return fmt.Errorf("routes to %s: %v, want via %s dev %s onlink", p.PodCIDR, routes, p.gateway(), vxlanDevice)
	case "neighbour":
		neighs, err := lab.ShowNeighbours(ns)
		if err != nil {
			return err
		}
		for _, n := range neighs {
			if n.Dst == p.gateway() && n.Dev == vxlanDevice {
				if n.LLAddr == p.MAC && strings.Join(n.State, ",") == "PERMANENT" {
					return nil
				}
				return fmt.Errorf("neighbour %v, want lladdr %s PERMANENT", n, p.MAC)
			}
		}
		return fmt.Errorf("no neighbour %s on %s", p.gateway(), vxlanDevice)
	case "fdb":
		fdb, err := lab.ShowFDB(ns, vxlanDevice)
		if err != nil {
			return err
		}
		var found []lab.FDBEntry
		for _, f := range fdb {
			if f.MAC == p.MAC {
				found = append(found, f)
			}
		}
		if len(found) == 1 && found[0].Dst == p.PublicIP && found[0].State == "permanent" {
			return nil
		}
		return fmt.Errorf("fdb entries for %s: %v, want one permanent with dst %s", p.MAC, found, p.PublicIP)
	}
	return fmt.Errorf("unknown kind %q", kind)
}

// link reads a link, failing the test when it is missing.
func link(t testing.TB, ns, dev string) lab.Link {
	t.Helper()
	l, err := lab.ShowLink(ns, dev)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestUnderlayFlapDirectRouting measures the repair upstream never makes
// (flannel#1070, #1434, #1759): with vxlan DirectRouting a peer on the same
// segment is reached by a plain route via eth0, which the kernel flushes
// when eth0 goes down. Once eth0 is up again flanneld must put the route
// back and pods must ping.
func TestUnderlayFlapDirectRouting(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	if err := l.WriteNetConf(directRoutingNetConf); err != nil {
		t.Fatal(err)
	}
	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	startAll(t, l, []*lab.Node{n1, n2})
	p1 := l.AddPod(t, n1, "p1")
	p2 := l.AddPod(t, n2, "p1")
	want := []string{directRoute(n2)}
	lab.WaitFor(t, "n1's direct route to n2", convergeTimeout, func() error { return checkDirectRoutes(n1.Netns, want) })
	lab.WaitPing(t, p1, p2.IP, pingTimeout)

	for i := range 3 {
		mustExec(t, n1.Netns, "ip", "link", "set", "eth0", "down")
		time.Sleep(time.Second)
		if err := checkDirectRoutes(n1.Netns, nil); err != nil {
			t.Fatalf("with eth0 down the kernel should have flushed the route: %v", err)
		}
		mustExec(t, n1.Netns, "ip", "link", "set", "eth0", "up")
		up := time.Now()
		d := measure(t, "n1's direct route after eth0 is up again", repairTimeout, func() error { return checkDirectRoutes(n1.Netns, want) })
		metric(t, fmt.Sprintf("directrouting_link_flap_route_seconds_%d", i+1), d)
		// The lab's default route is the node's own configuration's job.
		mustExec(t, n1.Netns, "ip", "route", "replace", "default", "via", n1.Segment.Gateway().String(), "dev", "eth0")
		measure(t, "ping n1/p1 -> n2/p1 after eth0 is up again", repairTimeout, func() error {
			_, err := lab.Exec(p1.Netns, "ping", "-c", "1", "-W", "0.2", p2.IP.String())
			return err
		})
		metric(t, fmt.Sprintf("directrouting_link_flap_ping_seconds_%d", i+1), time.Since(up))
		requireRunning(t, n1)
		time.Sleep(repairQuiet)
	}
	lab.WaitPing(t, p2, p1.IP, pingTimeout)
}
