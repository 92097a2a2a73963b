package subnet

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

func testLease(name, sn, pub, mac string) Lease {
	return Lease{
		Name:   name,
		Subnet: netip.MustParsePrefix(sn),
		Attrs: LeaseAttrs{
			PublicIP:    netip.MustParseAddr(pub),
			BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`),
		},
	}
}

var (
	leaseA  = testLease("a", "10.244.1.0/24", "192.168.100.11", "aa:aa:aa:aa:aa:01")
	leaseB  = testLease("b", "10.244.2.0/24", "192.168.100.12", "aa:aa:aa:aa:aa:02")
	leaseA2 = testLease("a", "10.244.1.0/24", "192.168.100.21", "aa:aa:aa:aa:aa:01") // a, moved
)

// signalled reports whether Changed has a pending signal, consuming it.
func signalled(p *Peers) bool {
	select {
	case <-p.Changed():
		return true
	default:
		return false
	}
}

// peerOp is one write to a Peers set.
type peerOp struct {
	set    *Lease // Set(*set)
	delete string // else Delete(delete)
	synced bool   // else MarkSynced()
}

func (o peerOp) apply(p *Peers) {
	switch {
	case o.set != nil:
		p.Set(*o.set)
	case o.delete != "":
		p.Delete(o.delete)
	case o.synced:
		p.MarkSynced()
	}
}

func setOp(l Lease) peerOp     { return peerOp{set: &l} }
func delOp(name string) peerOp { return peerOp{delete: name} }

var syncOp = peerOp{synced: true}

func TestPeers(t *testing.T) {
	tests := []struct {
		name string
		// before is applied and drained first; its changes are not checked.
		before []peerOp
		ops    []peerOp
		// want is what Drain returns after ops: name -> lease, nil for deleted.
		want       map[string]*Lease
		wantSynced bool
		wantSignal bool
		wantLen    int
	}{
		{
			name: "empty",
			want: map[string]*Lease{},
		},
		{
			name:       "add one",
			ops:        []peerOp{setOp(leaseA)},
			want:       map[string]*Lease{"a": &leaseA},
			wantSignal: true,
			wantLen:    1,
		},
		{
			name:       "add two",
			ops:        []peerOp{setOp(leaseA), setOp(leaseB)},
			want:       map[string]*Lease{"a": &leaseA, "b": &leaseB},
			wantSignal: true,
			wantLen:    2,
		},
		{
			name:       "updates coalesce to the latest lease",
			ops:        []peerOp{setOp(leaseA), setOp(leaseA2), setOp(leaseA)},
			want:       map[string]*Lease{"a": &leaseA},
			wantSignal: true,
			wantLen:    1,
		},
		{
			name:    "identical lease after drain is not a change",
			before:  []peerOp{setOp(leaseA)},
			ops:     []peerOp{setOp(leaseA)},
			want:    map[string]*Lease{},
			wantLen: 1,
		},
		{
			name:       "changed lease after drain",
			before:     []peerOp{setOp(leaseA)},
			ops:        []peerOp{setOp(leaseA2)},
			want:       map[string]*Lease{"a": &leaseA2},
			wantSignal: true,
			wantLen:    1,
		},
		{
			name:       "delete after drain",
			before:     []peerOp{setOp(leaseA), setOp(leaseB)},
			ops:        []peerOp{delOp("a")},
			want:       map[string]*Lease{"a": nil},
			wantSignal: true,
			wantLen:    1,
		},
		{
			name:    "delete of an unknown peer is not a change",
			before:  []peerOp{setOp(leaseA)},
			ops:     []peerOp{delOp("zz")},
			want:    map[string]*Lease{},
			wantLen: 1,
		},
		{
			name:    "second delete is not a change",
			before:  []peerOp{setOp(leaseA), delOp("a")},
			ops:     []peerOp{delOp("a")},
			want:    map[string]*Lease{},
			wantLen: 0,
		},
		{
			// The reader may never have seen a; reporting it deleted is
			// harmless and keeps Drain simple.
			name:       "set then delete before drain reports a deletion",
			ops:        []peerOp{setOp(leaseA), delOp("a")},
			want:       map[string]*Lease{"a": nil},
			wantSignal: true,
		},
		{
			name:       "delete then re-add before drain reports the lease",
			before:     []peerOp{setOp(leaseA)},
			ops:        []peerOp{delOp("a"), setOp(leaseA2)},
			want:       map[string]*Lease{"a": &leaseA2},
			wantSignal: true,
			wantLen:    1,
		},
		{
			name:       "mark synced alone wakes the reader",
			ops:        []peerOp{syncOp},
			want:       map[string]*Lease{},
			wantSynced: true,
			wantSignal: true,
		},
		{
			name:       "mark synced twice wakes only once",
			before:     []peerOp{syncOp},
			ops:        []peerOp{syncOp},
			want:       map[string]*Lease{},
			wantSynced: true,
		},
		{
			name:       "synced stays set",
			before:     []peerOp{syncOp, setOp(leaseA)},
			ops:        []peerOp{setOp(leaseB)},
			want:       map[string]*Lease{"b": &leaseB},
			wantSynced: true,
			wantSignal: true,
			wantLen:    2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPeers()
			for _, op := range tt.before {
				op.apply(p)
			}
			p.Drain()
			signalled(p)

			for _, op := range tt.ops {
				op.apply(p)
			}
			if got := signalled(p); got != tt.wantSignal {
				t.Errorf("Changed signalled = %v, want %v", got, tt.wantSignal)
			}
			if signalled(p) {
				t.Errorf("Changed signalled twice: the signal must coalesce")
			}
			if got := p.Len(); got != tt.wantLen {
				t.Errorf("Len() = %d, want %d", got, tt.wantLen)
			}
			got, synced := p.Drain()
			if synced != tt.wantSynced {
				t.Errorf("Drain synced = %v, want %v", synced, tt.wantSynced)
			}
			assertDrained(t, got, tt.want)

			// A second Drain has nothing new.
			again, _ := p.Drain()
			if len(again) != 0 {
				t.Errorf("second Drain = %v, want nothing", again)
			}
		})
	}
}

func assertDrained(t *testing.T, got, want map[string]*Lease) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("Drain returned %d changes %v, want %d %v", len(got), keys(got), len(want), keys(want))
	}
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("Drain: %s missing", name)
		case w == nil && g != nil:
			t.Errorf("Drain: %s = %+v, want deleted (nil)", name, *g)
		case w != nil && g == nil:
			t.Errorf("Drain: %s deleted, want %+v", name, *w)
		case w != nil && !g.Equal(*w):
			t.Errorf("Drain: %s = %+v, want %+v", name, *g, *w)
		}
	}
}

func keys(m map[string]*Lease) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestPeersIdenticalLeaseWithCopiedData(t *testing.T) {
	p := NewPeers()
	p.Set(leaseA)
	p.Drain()
	signalled(p)

	// The same lease decoded afresh: equal contents, different backing arrays.
	same := leaseA
	same.Attrs.BackendData = append(json.RawMessage(nil), leaseA.Attrs.BackendData...)
	p.Set(same)
	if signalled(p) {
		t.Error("setting an identical lease (copied BackendData) signalled a change")
	}
	if got, _ := p.Drain(); len(got) != 0 {
		t.Errorf("Drain after identical Set = %v, want nothing", keys(got))
	}
}

func TestPeersDrainReturnsCopies(t *testing.T) {
	p := NewPeers()
	p.Set(leaseA)
	got, _ := p.Drain()
	got["a"].Subnet = netip.MustParsePrefix("10.99.0.0/24")
	// Had Drain handed out the stored lease, this Set would look identical.
	p.Set(leaseA)
	if again, _ := p.Drain(); len(again) != 0 {
		t.Errorf("mutating a drained lease changed the stored one: Drain = %v", keys(again))
	}
}

func TestPeersConcurrent(t *testing.T) {
	p := NewPeers()
	const writers, perWriter = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				name := fmt.Sprintf("w%d-%d", w, i%10)
				l := testLease(name, fmt.Sprintf("10.%d.%d.0/24", w, i%10), "192.168.0.1", "aa:aa:aa:aa:aa:01")
				if i%3 == 2 {
					p.Delete(name)
				} else {
					p.Set(l)
				}
			}
		}()
	}
	// The reader mirrors the set from the drained changes.
	mirror := map[string]Lease{}
	done := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-p.Changed():
			case <-done:
				return
			}
			changed, _ := p.Drain()
			for name, l := range changed {
				if l == nil {
					delete(mirror, name)
				} else {
					mirror[name] = *l
				}
			}
		}
	}()
	wg.Wait()
	close(done)
	<-readerDone
	changed, _ := p.Drain()
	for name, l := range changed {
		if l == nil {
			delete(mirror, name)
		} else {
			mirror[name] = *l
		}
	}
	if len(mirror) != p.Len() {
		t.Errorf("reader's mirror has %d peers, set has %d", len(mirror), p.Len())
	}
}

func TestLeaseEqual(t *testing.T) {
	base := Lease{
		Name:       "n1",
		Subnet:     netip.MustParsePrefix("10.244.1.0/24"),
		IPv6Subnet: netip.MustParsePrefix("fd00:0:0:1::/64"),
		Attrs: LeaseAttrs{
			PublicIP:      netip.MustParseAddr("192.168.100.11"),
			PublicIPv6:    netip.MustParseAddr("fd00::11"),
			BackendType:   "vxlan",
			BackendData:   json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`),
			BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:fe"}`),
		},
	}
	tests := []struct {
		name   string
		change func(l *Lease)
		equal  bool
	}{
		{"identical", func(*Lease) {}, true},
		{"copied backend data", func(l *Lease) {
			l.Attrs.BackendData = append(json.RawMessage(nil), l.Attrs.BackendData...)
		}, true},
		{"name", func(l *Lease) { l.Name = "n2" }, false},
		{"subnet", func(l *Lease) { l.Subnet = netip.MustParsePrefix("10.244.2.0/24") }, false},
		{"subnet prefix length", func(l *Lease) { l.Subnet = netip.MustParsePrefix("10.244.1.0/25") }, false},
		{"no subnet", func(l *Lease) { l.Subnet = netip.Prefix{} }, false},
		{"ipv6 subnet", func(l *Lease) { l.IPv6Subnet = netip.MustParsePrefix("fd00:0:0:2::/64") }, false},
		{"public ip", func(l *Lease) { l.Attrs.PublicIP = netip.MustParseAddr("192.168.100.12") }, false},
		{"public ip as 4in6", func(l *Lease) { l.Attrs.PublicIP = netip.MustParseAddr("::ffff:192.168.100.11") }, false},
		{"public ipv6", func(l *Lease) { l.Attrs.PublicIPv6 = netip.Addr{} }, false},
		{"backend type", func(l *Lease) { l.Attrs.BackendType = "host-gw" }, false},
		{"backend data", func(l *Lease) {
			l.Attrs.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:00"}`)
		}, false},
		// Equality is on the bytes, not on the JSON meaning.
		{"backend data reformatted", func(l *Lease) {
			l.Attrs.BackendData = json.RawMessage(`{"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}`)
		}, false},
		{"backend data nil", func(l *Lease) { l.Attrs.BackendData = nil }, false},
		{"backend v6 data", func(l *Lease) { l.Attrs.BackendV6Data = json.RawMessage(`null`) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			other := base
			other.Attrs.BackendData = append(json.RawMessage(nil), base.Attrs.BackendData...)
			other.Attrs.BackendV6Data = append(json.RawMessage(nil), base.Attrs.BackendV6Data...)
			tt.change(&other)
			if got := base.Equal(other); got != tt.equal {
				t.Errorf("Lease.Equal = %v, want %v", got, tt.equal)
			}
			if got := other.Equal(base); got != tt.equal {
				t.Errorf("Lease.Equal (reversed) = %v, want %v", got, tt.equal)
			}
		})
	}
}

func TestLeaseAttrsEqual(t *testing.T) {
	pub := netip.MustParseAddr("192.168.100.11")
	tests := []struct {
		name string
		a, b LeaseAttrs
		want bool
	}{
		{"zero", LeaseAttrs{}, LeaseAttrs{}, true},
		{"same", LeaseAttrs{PublicIP: pub, BackendType: "vxlan", BackendData: json.RawMessage(`{}`)},
			LeaseAttrs{PublicIP: pub, BackendType: "vxlan", BackendData: json.RawMessage(`{}`)}, true},
		// nil and empty data both mean "no data".
		{"nil and empty data", LeaseAttrs{BackendData: nil}, LeaseAttrs{BackendData: json.RawMessage{}}, true},
		{"nil and null data differ", LeaseAttrs{BackendData: nil}, LeaseAttrs{BackendData: json.RawMessage(`null`)}, false},
		{"public ip set and unset", LeaseAttrs{PublicIP: pub}, LeaseAttrs{}, false},
		{"public ipv6 differs", LeaseAttrs{PublicIPv6: netip.MustParseAddr("fd00::1")}, LeaseAttrs{PublicIPv6: netip.MustParseAddr("fd00::2")}, false},
		{"backend type differs", LeaseAttrs{BackendType: "vxlan"}, LeaseAttrs{BackendType: "udp"}, false},
		{"v6 data differs", LeaseAttrs{BackendV6Data: json.RawMessage(`1`)}, LeaseAttrs{BackendV6Data: json.RawMessage(`2`)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Equal(tt.b); got != tt.want {
				t.Errorf("a.Equal(b) = %v, want %v", got, tt.want)
			}
			if got := tt.b.Equal(tt.a); got != tt.want {
				t.Errorf("b.Equal(a) = %v, want %v", got, tt.want)
			}
		})
	}
}
