package e2e

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// outageDuration is how long the API server stays down (issue 3, part 4).
const outageDuration = 60 * time.Second

// TestAPIServerOutage stops kube-apiserver for 60 s (etcd keeps running, so
// the restarted server is the same cluster) and checks that the datapath
// stays exactly as it was, pods keep pinging and flanneld keeps running and
// live; then, right after the server is back, a Node is added, one is
// changed (new VtepMAC and public-ip) and one is deleted, and every node
// must have programmed all three changes within a few seconds (measured
// from the server's return).
func TestAPIServerOutage(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)

	n1 := l.AddNode(t, "n1", podCIDR(1))
	n2 := l.AddNode(t, "n2", podCIDR(2))
	changed := peer{Name: "f3", PodCIDR: podCIDR(3), PublicIP: fakePublicIP(3), MAC: fakeMAC(3)}
	deleted := peer{Name: "f4", PodCIDR: podCIDR(4), PublicIP: fakePublicIP(4), MAC: fakeMAC(4)}
	added := peer{Name: "f5", PodCIDR: podCIDR(5), PublicIP: fakePublicIP(5), MAC: fakeMAC(5)}
	createFakePeer(t, l, changed)
	createFakePeer(t, l, deleted)
	nodes := []*lab.Node{n1, n2}
	for _, n := range nodes {
		l.StartFlanneld(t, n)
	}
	for _, n := range nodes {
		n.WaitReady(t, readyTimeout)
	}
	p1 := l.AddPod(t, n1, "p1")
	p2 := l.AddPod(t, n2, "p1")
	peer1, peer2 := realPeer(t, n1), realPeer(t, n2)
	before := map[*lab.Node]peerState{
		n1: stateFor(peer2, changed, deleted),
		n2: stateFor(peer1, changed, deleted),
	}
	for _, n := range nodes {
		lab.WaitFor(t, n.Name+" to program its peers", convergeTimeout, func() error { return checkPeerState(n.Netns, before[n]) })
	}
	lab.WaitPing(t, p1, p2.IP, pingTimeout)
	snapshots := map[*lab.Node]nodeSnapshot{}
	for _, n := range nodes {
		snapshots[n] = snapshotNode(t, l, n)
	}

	interval := 50 * time.Millisecond
	count := int(outageDuration / interval)
	ping := startPing(t, l, p1, p2.IP, interval, count)
	l.StopAPIServer(t)
	down := time.Now()
	t.Logf("kube-apiserver stopped; outage of %v", outageDuration)

	checks := 0
	for time.Since(down) < outageDuration {
		time.Sleep(5 * time.Second)
		checks++
		for _, n := range nodes {
			requireRunning(t, n)
			if err := checkPeerState(n.Netns, before[n]); err != nil {
				t.Errorf("%s, %v into the outage: %v", n.Name, time.Since(down).Round(time.Second), err)
			}
		}
	}
	for _, n := range nodes {
		// Liveness must hold: a kubelet would otherwise restart flanneld
		// for an outage that is not its fault.
		if err := healthz(n); err != nil {
			t.Errorf("%s at the end of the outage: %v", n.Name, err)
		}
		if err := readyz(n); err != nil {
			t.Logf("%s at the end of the outage: %v", n.Name, err)
		}
	}
	sent, received := ping.wait(t, 2*outageDuration)
	metricValue(t, "outage_lost_pings", float64(sent-received))
	if sent != count || received != sent {
		t.Errorf("ping n1/p1 -> n2/p1 every %v during the outage: %d sent, %d received; want %d and no loss", interval, sent, received, count)
	}
	for _, n := range nodes {
		snapshots[n].compare(t, snapshotNode(t, nil, n)) // the API server is down
	}

	start := time.Now()
	l.StartAPIServer(t)
	back := time.Now()
	metric(t, "apiserver_restart_seconds", back.Sub(start))
	metric(t, "apiserver_outage_seconds", back.Sub(down))

	// Right after the server returns: add, change and delete Nodes.
	createFakePeer(t, l, added)
	newChanged := changed
	newChanged.MAC, newChanged.PublicIP = fakeMAC(33), fakePublicIP(33)
	patchAnnotations(t, l, changed.Name, map[string]*string{
		annotationPrefix + "backend-data": ptr(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, newChanged.MAC)),
		annotationPrefix + "public-ip":    ptr(newChanged.PublicIP),
	})
	deleteNode(t, l, deleted.Name)
	madeChanges := time.Now()
	t.Logf("changes made %v after the API server was ready", madeChanges.Sub(back).Round(time.Millisecond))

	want := map[*lab.Node]peerState{
		n1: stateFor(peer2, newChanged, added),
		n2: stateFor(peer1, newChanged, added),
	}
	caughtUp := map[*lab.Node]time.Duration{}
	measure(t, "every node to catch up after the outage", 2*time.Minute, func() error {
		var errs []error
		for _, n := range nodes {
			if _, ok := caughtUp[n]; ok {
				continue
			}
			if err := checkPeerState(n.Netns, want[n]); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
				continue
			}
			caughtUp[n] = time.Since(back)
		}
		return errors.Join(errs...)
	})
	var slowest time.Duration
	for _, n := range nodes {
		metric(t, "outage_catchup_seconds_"+n.Name, caughtUp[n])
		slowest = max(slowest, caughtUp[n])
	}
	metric(t, "outage_catchup_seconds", slowest)
	metric(t, "outage_catchup_after_changes_seconds", time.Since(madeChanges))
	for _, n := range nodes {
		requireRunning(t, n)
		if err := lab.Poll(convergeTimeout, func() error { return readyz(n) }); err != nil {
			t.Errorf("%s after the outage: %v", n.Name, err)
		}
	}
	lab.WaitPing(t, p1, p2.IP, pingTimeout)
	lab.WaitPing(t, p2, p1.IP, pingTimeout)
}
