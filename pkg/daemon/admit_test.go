package daemon

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// macBackend is vxlan-shaped: per peer a route to its subnet and an FDB
// entry keyed by the MAC in its backend data, towards its public IP.
type macBackend struct{ fakeBackend }

func (macBackend) PeerState(p subnet.Lease) (network.State, error) {
	mac, err := kernel.ParseMAC(strings.Trim(string(p.Attrs.BackendData), `"`))
	if err != nil {
		return network.State{}, err
	}
	return network.State{
		Routes: []kernel.Route{{Dst: p.Subnet, Gw: p.Subnet.Addr(), LinkIndex: 9, Onlink: true}},
		FDBs:   []kernel.FDB{{LinkIndex: 9, MAC: mac, Dst: p.Attrs.PublicIP}},
	}, nil
}

func (macBackend) Setup(context.Context, *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	return subnet.LeaseAttrs{}, nil
}

func aged(l subnet.Lease, created int64) subnet.Lease { l.Created = created; return l }

func fdbDst(k *kernel.Fake, mac string) string {
	m, _ := kernel.ParseMAC(mac)
	if e, ok := k.FDBs[kernel.FDBKey{LinkIndex: 9, MAC: m}]; ok {
		return e.Dst.String()
	}
	return ""
}

// TestAdmissionConflicts: of two peers that want the same VtepMAC or
// overlapping subnets the older one is programmed, whatever the order of
// events; between equals the one programmed first keeps it; the loser is
// programmed once the winner leaves; and the winner's entries are never
// touched by the loser.
func TestAdmissionConflicts(t *testing.T) {
	victim := aged(peer("victim", "10.244.2.0/24", "192.168.0.2", `"0a:58:00:00:00:02"`), 100)
	copycat := aged(peer("copycat", "10.244.66.0/24", "192.168.0.66", `"0a:58:00:00:00:02"`), 200)
	squatter := aged(peer("a-squatter", "10.244.2.0/23", "192.168.0.67", `"0a:58:00:00:00:67"`), 300)

	for _, order := range [][]subnet.Lease{{victim, copycat, squatter}, {squatter, copycat, victim}, {copycat, victim, squatter}} {
		k := kernel.NewFake()
		rec := network.NewReconciler(k)
		rec.SetOwnedLinks([]int{9})
		a := newAdmission(macBackend{}, rec, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)))
		var reports []string
		a.report = func(name string, reason subnet.SkipReason, err error) {
			reports = append(reports, name+":"+string(reason))
		}
		// One at a time, as events arrive.
		for _, l := range order {
			a.apply(map[string]*subnet.Lease{l.Name: &l}, false)
			if _, err := rec.Apply(false); err != nil {
				t.Fatal(err)
			}
		}
		names := func() []string { return slices.Sorted(maps.Keys(a.states)) }
		if got := names(); !slices.Equal(got, []string{"victim"}) {
			t.Fatalf("order %s: programmed %v, want only the victim", order[0].Name, got)
		}
		if got := fdbDst(k, "0a:58:00:00:00:02"); got != "192.168.0.2" {
			t.Fatalf("order %s: the victim's MAC goes to %q", order[0].Name, got)
		}
		if !slices.Contains(reports, "copycat:conflict") || !slices.Contains(reports, "a-squatter:conflict") {
			t.Errorf("order %s: reports %v, want both losers reported as conflicts", order[0].Name, reports)
		}

		// The victim leaves: each loser is examined again and programmed.
		a.apply(map[string]*subnet.Lease{"victim": nil}, false)
		if _, err := rec.Apply(true); err != nil {
			t.Fatal(err)
		}
		if got := names(); !slices.Equal(got, []string{"a-squatter", "copycat"}) {
			t.Fatalf("order %s: after the victim left, programmed %v", order[0].Name, got)
		}
		if got := fdbDst(k, "0a:58:00:00:00:02"); got != "192.168.0.66" {
			t.Fatalf("order %s: after the victim left, its MAC goes to %q, want the copycat's", order[0].Name, got)
		}
	}

	// Equal age: the peer programmed first keeps its entries; at
	// start-up (both new in one batch) the name sorting first wins.
	rec := network.NewReconciler(kernel.NewFake())
	a := newAdmission(macBackend{}, rec, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)))
	first, second := aged(copycat, 100), aged(peer("b", "10.244.5.0/24", "192.168.0.5", `"0a:58:00:00:00:02"`), 100)
	second.Name = "a-second"
	a.apply(map[string]*subnet.Lease{first.Name: &first}, false)
	a.apply(map[string]*subnet.Lease{second.Name: &second}, false)
	if _, ok := a.states[first.Name]; !ok {
		t.Errorf("equal age: the peer programmed first lost its entries")
	}
	rec2 := network.NewReconciler(kernel.NewFake())
	b := newAdmission(macBackend{}, rec2, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)))
	b.apply(map[string]*subnet.Lease{first.Name: &first, second.Name: &second}, false)
	if _, ok := b.states[second.Name]; !ok {
		t.Errorf("equal age at start-up: %q (sorting first) is not programmed", second.Name)
	}
}

// TestAdmitForDiagnose: Admit decides as the daemon does and reports why
// each peer is skipped.
func TestAdmitForDiagnose(t *testing.T) {
	rules := rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`))
	rules.Segments = []netip.Prefix{netip.MustParsePrefix("192.168.0.1/24")}
	peers := []subnet.Lease{
		aged(peer("good", "10.244.2.0/24", "192.168.0.2", `"0a:58:00:00:00:02"`), 1),
		aged(peer("copycat", "10.244.3.0/24", "192.168.0.3", `"0a:58:00:00:00:02"`), 2),
		aged(peer("underlay", "192.168.0.0/24", "192.168.0.4", `"0a:58:00:00:00:04"`), 3),
		aged(peer("broadcast", "10.244.5.0/24", "192.168.0.255", `"0a:58:00:00:00:05"`), 4),
	}
	states, skipped := Admit(rules, macBackend{}, peers)
	if _, ok := states["good"]; !ok || len(states) != 1 {
		t.Fatalf("programmed %v, want only good", states)
	}
	for name, reason := range map[string]subnet.SkipReason{"copycat": subnet.SkipConflict, "underlay": subnet.SkipSubnet, "broadcast": subnet.SkipPublicIP} {
		if got := subnet.ReasonOf(skipped[name], "none"); got != reason {
			t.Errorf("%s: reason %q (%v), want %q", name, got, skipped[name], reason)
		}
	}
}

// TestAdmissionLoserTakesFreedKey: a peer refused for another's VtepMAC is
// programmed as soon as that peer changes its MAC.
func TestAdmissionLoserTakesFreedKey(t *testing.T) {
	rec := network.NewReconciler(kernel.NewFake())
	a := newAdmission(macBackend{}, rec, rulesFor(peer("self", "10.244.1.0/24", "192.168.0.1", `{}`)))
	victim := aged(peer("victim", "10.244.2.0/24", "192.168.0.2", `"0a:58:00:00:00:02"`), 100)
	copycat := aged(peer("copycat", "10.244.3.0/24", "192.168.0.3", `"0a:58:00:00:00:02"`), 200)
	a.apply(map[string]*subnet.Lease{victim.Name: &victim}, false)
	a.apply(map[string]*subnet.Lease{copycat.Name: &copycat}, false)
	if _, ok := a.states["copycat"]; ok {
		t.Fatal("the copycat was programmed")
	}
	moved := victim
	moved.Attrs.BackendData = []byte(`"0a:58:00:00:00:22"`)
	a.apply(map[string]*subnet.Lease{moved.Name: &moved}, false)
	if _, ok := a.states["copycat"]; !ok {
		t.Error("the MAC is free, but the peer that wanted it was not programmed")
	}
}
