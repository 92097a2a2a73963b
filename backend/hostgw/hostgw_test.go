package hostgw

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/pkg/kernel"
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
	ext := &ip.ExternalInterface{Name: "eth0", Index: 2, MTU: 1500,
		IfaceAddr: netip.MustParseAddr("192.168.100.11"), ExtAddr: netip.MustParseAddr("192.168.100.11")}
	b, err := New(backend.Params{Config: &subnet.Config{BackendType: Type}, ExtIface: ext,
		Reach: segment{netip.MustParsePrefix("192.168.100.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	return b
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
