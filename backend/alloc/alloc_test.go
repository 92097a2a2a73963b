package alloc

import (
	"context"
	"net/netip"
	"testing"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

func TestAlloc(t *testing.T) {
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	ext := &ip.ExternalInterface{Name: "eth0", Index: 2, MTU: 1400,
		IfaceAddr: netip.MustParseAddr("192.168.100.11"), ExtAddr: netip.MustParseAddr("192.168.100.11"),
		IfaceV6Addr: netip.MustParseAddr("fd00:100::11"), ExtV6Addr: netip.MustParseAddr("fd00:100::11")}
	be, err := backend.Registry{Type: New}.New(backend.Params{Config: cfg, ExtIface: ext})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := be.Setup(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if attrs.BackendType != "alloc" || attrs.PublicIP != ext.ExtAddr || attrs.PublicIPv6 != ext.ExtV6Addr || attrs.BackendData != nil || attrs.BackendV6Data != nil {
		t.Errorf("Setup = %+v", attrs)
	}
	if err := be.Configure(context.Background(), subnet.Lease{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: attrs}); err != nil {
		t.Error(err)
	}
	if err := be.Attach(); err != nil {
		t.Error(err)
	}
	if be.MTU() != 1400 {
		t.Errorf("MTU = %d, want 1400", be.MTU())
	}
	if err := be.(backend.MTUFollower).SetUnderlayMTU(9000); err != nil || be.MTU() != 9000 {
		t.Errorf("after SetUnderlayMTU(9000): MTU = %d, %v", be.MTU(), err)
	}
	if st := be.Base(); len(st.OwnedLinks) != 0 || len(st.Routes) != 0 {
		t.Errorf("Base = %+v, want empty", st)
	}
	for _, typ := range []string{"alloc", "vxlan", ""} {
		st, err := be.PeerState(subnet.Lease{Name: "n2", Subnet: netip.MustParsePrefix("10.244.2.0/24"), Attrs: subnet.LeaseAttrs{BackendType: typ}})
		if err != nil || len(st.Routes) != 0 {
			t.Errorf("PeerState(%q peer) = %+v, %v; want empty, nil", typ, st, err)
		}
	}
}
