package network

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/network/kernel"
)

const vxlanLink = 7

func mac(i int) kernel.MAC { return kernel.MAC{0x0a, 0, 0, 0, 0, byte(i)} }

// peerState is what the vxlan backend wants for peer i (10.244.i.0/24 at 192.168.100.i).
func peerState(i int, m kernel.MAC) State {
	gw := netip.AddrFrom4([4]byte{10, 244, byte(i), 0})
	return State{
		Neighs: []kernel.Neigh{{LinkIndex: vxlanLink, IP: gw, MAC: m}},
		FDBs:   []kernel.FDB{{LinkIndex: vxlanLink, MAC: m, Dst: netip.AddrFrom4([4]byte{192, 168, 100, byte(i)})}},
		Routes: []kernel.Route{{Dst: netip.PrefixFrom(gw, 24), Gw: gw, LinkIndex: vxlanLink, Onlink: true}},
	}
}

func stateOf(peers ...int) State {
	s := State{OwnedLinks: []int{vxlanLink}}
	for _, p := range peers {
		s.Merge(peerState(p, mac(p)))
	}
	return s
}

// want renders the expected fake dump for a set of peers.
func want(peers ...int) string {
	f := kernel.NewFake()
	for _, p := range peers {
		s := peerState(p, mac(p))
		for _, r := range s.Routes {
			r.Protocol = kernel.RouteProtocol
			f.Routes[r.Key()] = r
		}
		f.Neighs[s.Neighs[0].Key()] = s.Neighs[0]
		f.FDBs[s.FDBs[0].Key()] = s.FDBs[0]
	}
	return f.Dump()
}

func TestSyncAddsInOrderNeighFDBRoute(t *testing.T) {
	f := kernel.NewFake()
	r := NewReconciler(f)
	res, err := r.Sync(stateOf(2), true)
	if err != nil {
		t.Fatal(err)
	}
	wantCalls := []string{
		"SetNeigh 10.244.2.0 lladdr 0a:00:00:00:00:02 dev 7",
		"SetFDB 0a:00:00:00:00:02 dst 192.168.100.2 dev 7",
		"AddRoute 10.244.2.0/24 via 10.244.2.0 dev 7 onlink",
	}
	if got := strings.Join(f.Calls, "\n"); got != strings.Join(wantCalls, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", got, strings.Join(wantCalls, "\n"))
	}
	if res.Added != 3 || res.Removed != 0 || len(res.Repaired) != 0 {
		t.Fatalf("result %+v", res)
	}
	// Removing the peer deletes route, then FDB, then neighbour.
	f.ResetCalls()
	if _, err := r.Sync(stateOf(), false); err != nil {
		t.Fatal(err)
	}
	wantCalls = []string{
		"DelRoute 10.244.2.0/24 via 10.244.2.0 dev 7 onlink",
		"DelFDB 0a:00:00:00:00:02 dst 192.168.100.2 dev 7",
		"DelNeigh 10.244.2.0 lladdr 0a:00:00:00:00:02 dev 7",
	}
	if got := strings.Join(f.Calls, "\n"); got != strings.Join(wantCalls, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", got, strings.Join(wantCalls, "\n"))
	}
}

func TestSyncIsIdempotent(t *testing.T) {
	for _, full := range []bool{false, true} {
		f := kernel.NewFake()
		r := NewReconciler(f)
		if _, err := r.Sync(stateOf(2, 3), true); err != nil {
			t.Fatal(err)
		}
		f.ResetCalls()
		res, err := r.Sync(stateOf(2, 3), full)
		if err != nil {
			t.Fatal(err)
		}
		if len(f.Calls) != 0 || changed(res) {
			t.Fatalf("full=%v: second pass changed the kernel: %v", full, f.Calls)
		}
	}
}

// TestSyncStateTransitions replays a table of desired states in random
// orders and checks that the kernel always ends up exactly as desired.
func TestSyncStateTransitions(t *testing.T) {
	states := [][]int{{}, {2}, {2, 3}, {3}, {2, 3, 4, 5}, {5}, {4, 2}}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, seed))
		f := kernel.NewFake()
		r := NewReconciler(f)
		for step := range 20 {
			peers := states[rng.IntN(len(states))]
			full := rng.IntN(2) == 0
			if _, err := r.Sync(stateOf(peers...), full); err != nil {
				t.Fatal(err)
			}
			if got, w := f.Dump(), want(peers...); got != w {
				t.Fatalf("seed %d step %d peers %v full=%v:\n%s\nwant:\n%s", seed, step, peers, full, got, w)
			}
		}
	}
}

func TestFullSyncRepairsDrift(t *testing.T) {
	f := kernel.NewFake()
	r := NewReconciler(f)
	if _, err := r.Sync(stateOf(2, 3), true); err != nil {
		t.Fatal(err)
	}
	// Someone deletes a route and an FDB entry, and changes a neighbour.
	delete(f.Routes, kernel.RouteKey{Dst: netip.MustParsePrefix("10.244.2.0/24")})
	delete(f.FDBs, kernel.FDBKey{LinkIndex: vxlanLink, MAC: mac(3)})
	n := f.Neighs[kernel.NeighKey{LinkIndex: vxlanLink, IP: netip.MustParseAddr("10.244.3.0")}]
	n.MAC = mac(99)
	f.Neighs[n.Key()] = n

	// An incremental pass trusts its memory and does nothing.
	if res, _ := r.Sync(stateOf(2, 3), false); changed(res) {
		t.Fatalf("incremental pass changed the kernel: %+v", res)
	}
	res, err := r.Sync(stateOf(2, 3), true)
	if err != nil {
		t.Fatal(err)
	}
	if got, w := f.Dump(), want(2, 3); got != w {
		t.Fatalf("after repair:\n%s\nwant:\n%s", got, w)
	}
	if res.Kinds["route"] != 1 || res.Kinds["fdb"] != 1 || res.Kinds["neighbour"] != 1 || len(res.Repaired) != 3 {
		t.Fatalf("repairs %+v", res)
	}
}

func TestFullSyncPrunesOnlyOwnedState(t *testing.T) {
	f := kernel.NewFake()
	// Stale state of a peer deleted while flanneld was down ...
	stale := peerState(9, mac(9))
	f.Routes[stale.Routes[0].Key()] = stale.Routes[0] // on flannel.1, any protocol
	f.Neighs[stale.Neighs[0].Key()] = stale.Neighs[0]
	f.FDBs[stale.FDBs[0].Key()] = stale.FDBs[0]
	// ... a host-gw style route flanneld marked ...
	marked := kernel.Route{Dst: netip.MustParsePrefix("10.244.8.0/24"), Gw: netip.MustParseAddr("192.168.100.8"), LinkIndex: 2, Protocol: kernel.RouteProtocol}
	f.Routes[marked.Key()] = marked
	// ... and routes of others: static on eth0, and the kernel's own.
	foreign := kernel.Route{Dst: netip.MustParsePrefix("172.16.0.0/16"), Gw: netip.MustParseAddr("192.168.100.1"), LinkIndex: 2, Protocol: 4}
	f.Routes[foreign.Key()] = foreign
	kernelRoute := kernel.Route{Dst: netip.MustParsePrefix("10.244.1.0/24"), LinkIndex: vxlanLink, Protocol: protoKernel}
	f.Routes[kernelRoute.Key()] = kernelRoute
	foreignNeigh := kernel.Neigh{LinkIndex: 2, IP: netip.MustParseAddr("192.168.100.7"), MAC: mac(7)}
	f.Neighs[foreignNeigh.Key()] = foreignNeigh

	r := NewReconciler(f)
	if _, err := r.Sync(stateOf(2), true); err != nil {
		t.Fatal(err)
	}
	extra := []string{
		"neigh 192.168.100.7 lladdr 0a:00:00:00:00:07 dev 2",
		"route 10.244.1.0/24 dev 7 proto 2",
		"route 172.16.0.0/16 via 192.168.100.1 dev 2 proto 4",
	}
	w := want(2) + "\n" + strings.Join(extra, "\n")
	lines := strings.Split(w, "\n")
	if got := f.Dump(); got != sortLines(lines) {
		t.Fatalf("after prune:\n%s\nwant:\n%s", got, sortLines(lines))
	}
}

func sortLines(lines []string) string {
	out := slices.Clone(lines)
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// An entry the kernel refuses is skipped and reported once; the rest of
// the pass is applied and the pass succeeds; the entry is retried with
// backoff, and reported as recovered once it goes in.
func TestFailedEntriesAreIsolatedAndRetried(t *testing.T) {
	f := kernel.NewFake()
	failing, attempts := true, 0
	f.Fail = func(call string) error {
		if failing && strings.HasPrefix(call, "AddRoute 10.244.3.0") {
			attempts++
			return errors.New("invalid argument")
		}
		return nil
	}
	r := NewReconciler(f)
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	res, err := r.Sync(stateOf(2, 3), true)
	if err != nil {
		t.Fatalf("one refused entry failed the pass: %v", err)
	}
	if len(res.Failures) != 1 || res.Failures[0].Kind != "route" || res.Failures[0].Conflict || res.Failing != 1 {
		t.Fatalf("failures %+v, failing %d; want the one route", res.Failures, res.Failing)
	}
	if !res.RetryAt.Equal(now.Add(retryMin)) {
		t.Errorf("retry at %v, want %v", res.RetryAt, now.Add(retryMin))
	}
	// Everything else took effect.
	if strings.Count(f.Dump(), "\n") != 4 {
		t.Fatalf("state after partial failure:\n%s", f.Dump())
	}
	// Not due yet: no kernel call, nothing reported again.
	f.ResetCalls()
	res, _ = r.Apply(false)
	if len(f.Calls) != 0 || attempts != 1 || len(res.Failures) != 0 || res.Failing != 1 {
		t.Fatalf("before the backoff: calls %v, %d attempts, result %+v", f.Calls, attempts, res)
	}
	// Due, failing again with the same error: retried, not reported again,
	// and the backoff doubles.
	now = now.Add(retryMin)
	res, _ = r.Apply(true)
	if attempts != 2 || len(res.Failures) != 0 || !res.RetryAt.Equal(now.Add(2*retryMin)) {
		t.Fatalf("second attempt: %d attempts, result %+v", attempts, res)
	}
	failing = false
	now = now.Add(2 * retryMin)
	f.ResetCalls()
	res, err = r.Apply(false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 1 || fmt.Sprint(f.Calls) != "[AddRoute 10.244.3.0/24 via 10.244.3.0 dev 7 onlink]" ||
		len(res.Recovered) != 1 || res.Failing != 0 || !res.RetryAt.IsZero() {
		t.Fatalf("retry pass: %+v %v", res, f.Calls)
	}
}

func TestPeerMACChangeReplacesEntries(t *testing.T) {
	f := kernel.NewFake()
	r := NewReconciler(f)
	if _, err := r.Sync(stateOf(2), false); err != nil {
		t.Fatal(err)
	}
	changed := State{OwnedLinks: []int{vxlanLink}}
	changed.Merge(peerState(2, mac(42)))
	if _, err := r.Sync(changed, false); err != nil {
		t.Fatal(err)
	}
	got := f.Dump()
	if strings.Contains(got, mac(2).String()) || !strings.Contains(got, "fdb "+mac(42).String()) {
		t.Fatalf("old MAC left behind or new one missing:\n%s", got)
	}
}

// TestUpdateTouchesOnlyTheChangedPeer: with many peers programmed, changing
// one costs kernel calls for that peer's entries only.
func TestUpdateTouchesOnlyTheChangedPeer(t *testing.T) {
	f := kernel.NewFake()
	r := NewReconciler(f)
	r.SetOwnedLinks([]int{vxlanLink})
	for i := 2; i < 200; i++ {
		r.Update(fmt.Sprint(i), State{}, peerState(i, mac(i)))
	}
	if _, err := r.Apply(true); err != nil {
		t.Fatal(err)
	}
	f.ResetCalls()
	r.Update("7", peerState(7, mac(7)), peerState(7, mac(250)))
	if len(r.routes.dirty)+len(r.neighs.dirty)+len(r.fdbs.dirty) != 3 {
		t.Fatalf("dirty keys after one change: %d routes, %d neighbours, %d fdb", len(r.routes.dirty), len(r.neighs.dirty), len(r.fdbs.dirty))
	}
	if _, err := r.Apply(false); err != nil {
		t.Fatal(err)
	}
	want := "[SetNeigh 10.244.7.0 lladdr 0a:00:00:00:00:fa dev 7 SetFDB 0a:00:00:00:00:fa dst 192.168.100.7 dev 7 DelFDB 0a:00:00:00:00:07 dst 192.168.100.7 dev 7]"
	if got := fmt.Sprint(f.Calls); got != want {
		t.Fatalf("calls %s\nwant %s", got, want)
	}
}
