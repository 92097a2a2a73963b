package udp

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

func TestParseOptions(t *testing.T) {
	for _, c := range []struct {
		raw  string
		port int
		ok   bool
	}{
		{``, 8285, true},
		{`{"Type":"udp"}`, 8285, true},
		{`{"Type":"udp","Port":9000}`, 9000, true},
		{`{"Type":"udp","port":9001}`, 9001, true},
		{`{"Type":"udp","Port":70000}`, 0, false},
		{`{"Type":"udp","Port":-1}`, 0, false},
		{`{"Type":"udp","Port":"8285"}`, 0, false},
	} {
		o, err := ParseOptions(json.RawMessage(c.raw))
		if (err == nil) != c.ok || (c.ok && o.Port != c.port) {
			t.Errorf("%s: port %d, error %v; want port %d, ok %v", c.raw, o.Port, err, c.port, c.ok)
		}
	}
}

func params(mtu int) backend.Params {
	return backend.Params{
		Config: &subnet.Config{Network: netip.MustParsePrefix("10.244.0.0/16"), BackendType: Type,
			Backend: json.RawMessage(`{"Type":"udp"}`)},
		ExtIface: &ip.ExternalInterface{Name: "eth0", Index: 2, MTU: mtu,
			IfaceAddr: netip.MustParseAddr("192.168.100.11"), ExtAddr: netip.MustParseAddr("192.168.100.11")},
	}
}

func TestNew(t *testing.T) {
	be, err := New(params(1500))
	if err != nil {
		t.Fatal(err)
	}
	if be.MTU() != 1472 {
		t.Errorf("MTU %d, want 1472 (external MTU - 28)", be.MTU())
	}
	if _, err := New(params(600)); err == nil {
		t.Error("accepted an external MTU leaving pods less than 576 bytes")
	}
	p := params(1500)
	p.ExtIface.IfaceAddr = netip.Addr{}
	if _, err := New(p); err == nil {
		t.Error("accepted an interface without an IPv4 address")
	}
	p = params(1500)
	p.Config.EnableIPv6 = true
	if _, err := New(p); err == nil {
		t.Error("accepted IPv6")
	}
}

func TestBaseAndPeerState(t *testing.T) {
	be, err := New(params(1500))
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	b.linkIndex = 7
	base := b.Base()
	if len(base.OwnedLinks) != 1 || base.OwnedLinks[0] != 7 {
		t.Errorf("owned links %v, want [7]", base.OwnedLinks)
	}
	if len(base.Routes) != 1 || base.Routes[0].Dst.String() != "10.244.0.0/16" || base.Routes[0].LinkIndex != 7 || base.Routes[0].Gw.IsValid() {
		t.Errorf("routes %v, want 10.244.0.0/16 dev 7", base.Routes)
	}

	good := *lease("n2", "10.244.2.0/24", "192.168.100.12")
	st, err := b.PeerState(good)
	if err != nil || len(st.Routes)+len(st.Neighs)+len(st.FDBs) != 0 {
		t.Errorf("peer state %+v, %v; want nothing per peer", st, err)
	}
	for name, l := range map[string]subnet.Lease{
		"vxlan peer":   func() subnet.Lease { l := good; l.Attrs.BackendType = "vxlan"; return l }(),
		"no subnet":    func() subnet.Lease { l := good; l.Subnet = netip.Prefix{}; return l }(),
		"IPv6 public":  func() subnet.Lease { l := good; l.Attrs.PublicIP = netip.MustParseAddr("fd00::1"); return l }(),
		"no public ip": func() subnet.Lease { l := good; l.Attrs.PublicIP = netip.Addr{}; return l }(),
		"IPv6 subnet":  func() subnet.Lease { l := good; l.Subnet = netip.MustParsePrefix("fd00::/64"); return l }(),
	} {
		if _, err := b.PeerState(l); !errors.Is(err, backend.ErrPeerData) {
			t.Errorf("%s: error %v, want ErrPeerData", name, err)
		}
	}

	// The peers the sync loop programs are the forwarder's.
	b.SetPeer("n2", &good)
	if b.fwd.peers.len() != 1 {
		t.Fatal("SetPeer did not add the peer")
	}
	b.SetPeer("n2", nil)
	if b.fwd.peers.len() != 0 {
		t.Fatal("SetPeer(nil) did not remove the peer")
	}
	if d := b.Dropped(); len(d) != int(numDropReasons) {
		t.Errorf("Dropped has %d reasons, want all %d", len(d), numDropReasons)
	}
}
