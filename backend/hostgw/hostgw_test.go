package hostgw

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

// segment is a fake Reachability: addresses in onLink are direct on link 2,
// the others go through gateway 192.168.100.1.
type segment struct{ onLink netip.Prefix }

func (s segment) Direct(a netip.Addr, link int) (bool, netip.Addr, error) {
	if s.onLink.Contains(a) {
		return link == 2, netip.Addr{}, nil
	}
	return false, netip.MustParseAddr("192.168.100.1"), nil
}

func newBackend(t *testing.T) backend.Backend {
	t.Helper()
	return newBackendFor(t, &subnet.Config{BackendType: Type, EnableIPv4: true})
}

func newBackendFor(t *testing.T, cfg *subnet.Config) backend.Backend {
	t.Helper()
	a, a6 := netip.MustParseAddr("192.168.100.11"), netip.MustParseAddr("fd00:100::11")
	ext := &ip.ExternalInterface{Name: "eth0", Index: 2, MTU: 1500, IfaceAddr: a, ExtAddr: a, IfaceV6Addr: a6, ExtV6Addr: a6}
	b, err := New(backend.Params{Config: cfg, ExtIface: ext, Reach: dualSegment{}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dualSegment puts 192.168.100.0/24 and fd00:100::/64 on link 2.
type dualSegment struct{}

func (dualSegment) Direct(a netip.Addr, link int) (bool, netip.Addr, error) {
	if a.Is4() {
		return segment{netip.MustParsePrefix("192.168.100.0/24")}.Direct(a, link)
	}
	if netip.MustParsePrefix("fd00:100::/64").Contains(a) {
		return link == 2, netip.Addr{}, nil
	}
	return false, netip.MustParseAddr("fd00:100::1"), nil
}

func TestHostGWDualStack(t *testing.T) {
	b := newBackendFor(t, &subnet.Config{BackendType: Type, EnableIPv4: true, EnableIPv6: true})
	attrs, err := b.Setup(t.Context(), nil)
	if err != nil || attrs.PublicIP.String() != "192.168.100.11" || attrs.PublicIPv6.String() != "fd00:100::11" {
		t.Fatalf("attrs %+v, %v", attrs, err)
	}
	peer := lease("n2", "10.244.2.0/24", "192.168.100.12", Type)
	peer.IPv6Subnet, peer.Attrs.PublicIPv6 = netip.MustParsePrefix("fd00:10:244:2::/64"), netip.MustParseAddr("fd00:100::12")
	st, err := b.PeerState(peer)
	if err != nil {
		t.Fatal(err)
	}
	want := []kernel.Route{
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("192.168.100.12"), LinkIndex: 2},
		{Dst: netip.MustParsePrefix("fd00:10:244:2::/64"), Gw: netip.MustParseAddr("fd00:100::12"), LinkIndex: 2},
	}
	if len(st.Routes) != 2 || st.Routes[0] != want[0] || st.Routes[1] != want[1] {
		t.Fatalf("routes %v, want %v", st.Routes, want)
	}
	// A peer with only an IPv4 subnet gets its IPv4 route.
	v4only := lease("n3", "10.244.3.0/24", "192.168.100.13", Type)
	if st, err := b.PeerState(v4only); err != nil || len(st.Routes) != 1 {
		t.Errorf("IPv4-only peer: %+v, %v", st, err)
	}
	// An IPv6 subnet without an IPv6 public IP (a peer whose flanneld runs
	// without IPv6) leaves the peer its IPv4 route only.
	nopub := peer
	nopub.Attrs.PublicIPv6 = netip.Addr{}
	if st, err := b.PeerState(nopub); err != nil || len(st.Routes) != 1 || st.Routes[0] != want[0] {
		t.Errorf("peer without public-ipv6: %+v, %v", st, err)
	}
	// IPv6 only.
	b6 := newBackendFor(t, &subnet.Config{BackendType: Type, EnableIPv6: true})
	if st, err := b6.PeerState(peer); err != nil || len(st.Routes) != 1 || st.Routes[0] != want[1] {
		t.Errorf("IPv6-only node: %+v, %v", st, err)
	}
	// ... to which such a peer is unusable.
	if _, err := b6.PeerState(nopub); err == nil || !errors.Is(err, backend.ErrPeerData) || !strings.Contains(err.Error(), "no IPv6 public-ipv6") {
		t.Errorf("IPv6-only node, peer without public-ipv6: %v", err)
	}
	// A dual-stack peer without any public IP is unusable, naming both.
	nopubs := nopub
	nopubs.Attrs.PublicIP = netip.Addr{}
	if _, err := b.PeerState(nopubs); err == nil || !strings.Contains(err.Error(), "no IPv4 public-ip and no IPv6 public-ipv6") {
		t.Errorf("peer without public IPs: %v", err)
	}
	if _, err := b6.PeerState(v4only); err == nil || !strings.Contains(err.Error(), "no IPv6 subnet") {
		t.Errorf("IPv6-only node, IPv4-only peer: %v", err)
	}
}

func lease(name, sn, pub, typ string) subnet.Lease {
	return subnet.Lease{Name: name, Subnet: netip.MustParsePrefix(sn),
		Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(pub), BackendType: typ}}
}

func TestHostGW(t *testing.T) {
	b := newBackend(t)
	if b.MTU() != 1500 {
		t.Fatalf("MTU %d, want the external interface's 1500", b.MTU())
	}
	attrs, err := b.Setup(t.Context(), nil)
	if err != nil || attrs.BackendType != "host-gw" || attrs.BackendData != nil || attrs.PublicIP.String() != "192.168.100.11" {
		t.Fatalf("attrs %+v, %v", attrs, err)
	}
	st, err := b.PeerState(lease("n2", "10.244.2.0/24", "192.168.100.12", Type))
	if err != nil {
		t.Fatal(err)
	}
	want := kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("192.168.100.12"), LinkIndex: 2}
	if len(st.Routes) != 1 || st.Routes[0] != want || len(st.Neighs)+len(st.FDBs)+len(st.OwnedLinks) != 0 {
		t.Fatalf("state %+v", st)
	}
}

func TestHostGWSkipsPeers(t *testing.T) {
	b := newBackend(t)
	for _, tt := range []struct {
		peer subnet.Lease
		want string
	}{
		{lease("far", "10.244.3.0/24", "192.168.200.13", Type), "peer far at 192.168.200.13 is not on this node's L2 segment (reached only through the gateway 192.168.100.1)"},
		{lease("vx", "10.244.4.0/24", "192.168.100.14", "vxlan"), `peer vx uses backend "vxlan"`},
		{subnet.Lease{Name: "nopub", Subnet: netip.MustParsePrefix("10.244.5.0/24"), Attrs: subnet.LeaseAttrs{BackendType: Type}}, "no IPv4 public-ip"},
	} {
		_, err := b.PeerState(tt.peer)
		if err == nil || !errors.Is(err, backend.ErrPeerData) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one containing %q", tt.peer.Name, err, tt.want)
		}
	}
}
