package network

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flanneld/flanneld/network/kernel"
)

// fdbTo is an FDB entry for mac(1) towards 192.168.100.<dst>.
func fdbTo(dst int) State {
	return State{FDBs: []kernel.FDB{{LinkIndex: vxlanLink, MAC: mac(1), Dst: netip.AddrFrom4([4]byte{192, 168, 100, byte(dst)})}}}
}

// TestOwnershipStates replays who wants the same FDB key (a VtepMAC two
// peers advertise) step by step: the first holder's value stays in the
// kernel whatever the others want, and when the holder lets go, the next
// claim's value is restored.
func TestOwnershipStates(t *testing.T) {
	f := kernel.NewFake()
	r := NewReconciler(f)
	r.SetOwnedLinks([]int{vxlanLink})
	steps := []struct {
		owner    string
		old, new State
		want     string // the FDB entry's destination, "" for none
	}{
		{"victim", State{}, fdbTo(2), "192.168.100.2"},
		{"hostile", State{}, fdbTo(66), "192.168.100.2"},
		{"hostile", fdbTo(66), fdbTo(67), "192.168.100.2"}, // a changed claim still waits
		{"victim", fdbTo(2), fdbTo(3), "192.168.100.3"},    // the holder changes its own value
		{"hostile", fdbTo(67), State{}, "192.168.100.3"},
		{"hostile", State{}, fdbTo(66), "192.168.100.3"},
		{"victim", fdbTo(3), State{}, "192.168.100.66"}, // the next claim takes over
		{"hostile", fdbTo(66), State{}, ""},
	}
	for i, s := range steps {
		r.Update(s.owner, s.old, s.new)
		if _, err := r.Apply(i%2 == 0); err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, e := range f.FDBs {
			got = e.Dst.String()
		}
		if got != s.want {
			t.Fatalf("step %d (%s %v -> %v): kernel has %q, want %q", i, s.owner, s.old.FDBs, s.new.FDBs, got, s.want)
		}
		if _, err := r.Apply(true); err != nil || len(f.FDBs) > 1 {
			t.Fatalf("step %d: full pass: %v, %s", i, err, f.Dump())
		}
	}
}

// TestOwnershipRandomOrder: whatever the order in which owners claim and
// let go of one key, the kernel holds the value of the earliest claim
// still standing, and nothing once every owner let go.
func TestOwnershipRandomOrder(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 1))
		f := kernel.NewFake()
		r := NewReconciler(f)
		r.SetOwnedLinks([]int{vxlanLink})
		type wish struct {
			owner string
			dst   int
		}
		var standing []wish // in claim order
		for step := range 30 {
			owner := fmt.Sprintf("p%d", rng.IntN(4))
			i := slices.IndexFunc(standing, func(w wish) bool { return w.owner == owner })
			switch {
			case i >= 0 && rng.IntN(2) == 0: // let go
				r.Update(owner, fdbTo(standing[i].dst), State{})
				standing = slices.Delete(standing, i, i+1)
			case i >= 0: // change its value
				dst := 10 + rng.IntN(50)
				r.Update(owner, fdbTo(standing[i].dst), fdbTo(dst))
				if i == 0 {
					standing[i].dst = dst
				} else {
					// A waiting claim that changes goes to the back,
					// as a new claim.
					standing = append(slices.Delete(standing, i, i+1), wish{owner, dst})
				}
			default:
				dst := 10 + rng.IntN(50)
				r.Update(owner, State{}, fdbTo(dst))
				standing = append(standing, wish{owner, dst})
			}
			if _, err := r.Apply(rng.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
			want := ""
			if len(standing) > 0 {
				want = fmt.Sprintf("192.168.100.%d", standing[0].dst)
			}
			got := ""
			for _, e := range f.FDBs {
				got = e.Dst.String()
			}
			if got != want {
				t.Fatalf("seed %d step %d: kernel has %q, want %q (claims %v)", seed, step, got, want, standing)
			}
		}
	}
}

// TestConflictNamesTheHolder: Conflict tells which other owner holds an
// entry a state wants, and nothing for the holder itself.
func TestConflictNamesTheHolder(t *testing.T) {
	r := NewReconciler(kernel.NewFake())
	r.Update("victim", State{}, peerState(2, mac(2)))
	hostile := peerState(9, mac(2)) // another subnet, the victim's MAC
	other, entry, ok := r.Conflict("hostile", hostile)
	if !ok || other != "victim" || !strings.Contains(entry, mac(2).String()) {
		t.Fatalf("Conflict = %q, %q, %v; want the victim's fdb entry", other, entry, ok)
	}
	if _, _, ok := r.Conflict("victim", peerState(2, mac(2))); ok {
		t.Fatal("an owner conflicts with itself")
	}
}

// TestForeignRouteIsNeverReplaced: a route flanneld does not own (another
// protocol, another device) at the key of a desired route is left alone
// and reported as a conflict, retried with backoff; once it is gone,
// flanneld's route goes in. A route flanneld installed and someone then
// changed is repaired as before.
func TestForeignRouteIsNeverReplaced(t *testing.T) {
	f := kernel.NewFake()
	foreign := kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), LinkIndex: 3, Protocol: 4}
	f.Routes[foreign.Key()] = foreign
	r := NewReconciler(f)
	res, err := r.Sync(stateOf(2, 3), true)
	if err != nil {
		t.Fatal(err)
	}
	if f.Routes[foreign.Key()] != foreign {
		t.Fatalf("the foreign route was replaced: %s", f.Dump())
	}
	if len(res.Failures) != 1 || !res.Failures[0].Conflict || res.Failing != 1 {
		t.Fatalf("failures %+v; want one conflict", res.Failures)
	}
	if !strings.Contains(f.Dump(), "10.244.3.0/24") {
		t.Fatalf("the other peer's route is missing:\n%s", f.Dump())
	}
	// Not before the backoff; then, with the foreign route gone,
	// flanneld's goes in.
	now := time.Now().Add(retryMin)
	r.now = func() time.Time { return now }
	delete(f.Routes, foreign.Key())
	res, err = r.Apply(false)
	if err != nil || len(res.Recovered) != 1 || res.Failing != 0 {
		t.Fatalf("after the foreign route left: %+v, %v", res, err)
	}
	if got := f.Routes[foreign.Key()]; got.Protocol != kernel.RouteProtocol || got.LinkIndex != vxlanLink {
		t.Fatalf("flanneld's route is not in: %s", f.Dump())
	}
	// Someone replaces flanneld's own route: that is drift, repaired.
	f.Routes[foreign.Key()] = foreign
	res, err = r.Apply(true)
	if err != nil || len(res.Repaired) != 1 || f.Routes[foreign.Key()].Protocol != kernel.RouteProtocol {
		t.Fatalf("drift of flanneld's route not repaired: %+v, %v\n%s", res, err, f.Dump())
	}
}

// TestForeignRouteDeletedRetriesAtOnce: when the kernel reports that the
// route in the way of a failing one was deleted, the failing entry is due
// at once instead of after its backoff.
func TestForeignRouteDeletedRetriesAtOnce(t *testing.T) {
	f := kernel.NewFake()
	foreign := kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), LinkIndex: 3, Protocol: 4}
	f.Routes[foreign.Key()] = foreign
	r := NewReconciler(f)
	if _, err := r.Sync(stateOf(2), true); err != nil {
		t.Fatal(err)
	}
	delete(f.Routes, foreign.Key())
	if !r.Drifted(kernel.Event{Route: &foreign, Deleted: true}) {
		t.Fatal("the deletion of the route in the way is not reported")
	}
	res, err := r.Apply(false)
	if err != nil || res.Failing != 0 || f.Routes[foreign.Key()].Protocol != kernel.RouteProtocol {
		t.Fatalf("not retried at once: %+v, %v\n%s", res, err, f.Dump())
	}
}

// TestDriftedDuringApply: the kernel watch asks Drifted about every
// notification; a pass that is busy in netlink calls (a full pass at
// 10,000 peers) must not hold it up. (On 4308a5a Drifted waited for the
// whole pass.)
func TestDriftedDuringApply(t *testing.T) {
	f := kernel.NewFake()
	r := NewReconciler(f)
	if _, err := r.Sync(stateOf(2), true); err != nil {
		t.Fatal(err)
	}
	inPass, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f.Fail = func(call string) error {
		if strings.Contains(call, "10.244.3.0") {
			once.Do(func() { close(inPass) })
			<-release // a slow netlink call
		}
		return nil
	}
	r.Update("3", State{}, peerState(3, mac(3)))
	applied := make(chan error, 1)
	go func() {
		_, err := r.Apply(false)
		applied <- err
	}()
	<-inPass
	drifted := make(chan bool, 1)
	deleted := peerState(2, mac(2)).Routes[0]
	deleted.Protocol = kernel.RouteProtocol
	go func() { drifted <- r.Drifted(kernel.Event{Route: &deleted, Deleted: true}) }()
	select {
	case d := <-drifted:
		if !d {
			t.Error("the deletion of an applied route is not drift")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Drifted waited for the pass's netlink calls")
	}
	close(release)
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
}

// TestDriftRepairedPerEntry: the kernel's notification names the entry
// that drifted; an incremental pass restores that entry alone, without
// reading the kernel, and reports the repair.
func TestDriftRepairedPerEntry(t *testing.T) {
	f := kernel.NewFake()
	r := NewReconciler(f)
	if _, err := r.Sync(stateOf(2, 3, 4), true); err != nil {
		t.Fatal(err)
	}
	rt := peerState(3, mac(3)).Routes[0]
	rt.Protocol = kernel.RouteProtocol
	delete(f.Routes, rt.Key())
	changed := peerState(4, mac(4)).FDBs[0]
	changed.Dst = netip.MustParseAddr("192.168.100.99")
	f.FDBs[changed.Key()] = changed
	if !r.Drifted(kernel.Event{Route: &rt, Deleted: true}) || !r.Drifted(kernel.Event{FDB: &changed}) {
		t.Fatal("drift not noticed")
	}
	if r.Drifted(kernel.Event{Route: &rt}) {
		t.Error("the notification of flanneld's own route is drift")
	}
	f.ResetCalls()
	res, err := r.Apply(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Repaired) != 2 || res.Kinds["route"] != 1 || res.Kinds["fdb"] != 1 {
		t.Fatalf("repairs %v", res.Repaired)
	}
	want := "[SetFDB 0a:00:00:00:00:04 dst 192.168.100.4 dev 7 SetRoute 10.244.3.0/24 via 10.244.3.0 dev 7 onlink]"
	if got := fmt.Sprint(f.Calls); got != want {
		t.Fatalf("calls %s, want %s (the two entries only)", got, want)
	}
	// Nothing left to repair.
	f.ResetCalls()
	if res, _ := r.Apply(false); len(f.Calls) != 0 || len(res.Repaired) != 0 {
		t.Fatalf("second pass: %v %v", f.Calls, res.Repaired)
	}
}
