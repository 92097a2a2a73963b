package vxlan

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/subnet"
)

// FuzzParsePeer feeds parsePeer a peer's backend-data, public-ip and
// podCIDR as they arrive from the API (any bytes, any strings). It must
// never panic; every error must wrap ErrPeerData and name the peer (the
// daemon logs it as the reason the peer is skipped); and whatever it
// accepts must be a usable VXLAN peer: an IPv4 subnet and public IP, the
// node's VNI, a unicast MAC, and a neighbour, FDB entry and onlink route
// that all agree.
func FuzzParsePeer(f *testing.F) {
	for _, s := range []struct {
		data, publicIP, subnet, backendType string
		vni                                 int
	}{
		{`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}`, "192.168.100.12", "10.244.2.0/24", "vxlan", 1},
		{`{"VNI":4096,"VtepMAC":"0A:58:0A:F4:02:00","Extra":[1,{"x":null}]}`, "10.0.0.1", "10.244.2.7/24", "vxlan", 4096},
		{`{"vni":1,"vtepmac":"aa:bb:cc:dd:ee:02"}`, "192.168.100.12", "10.244.2.0/24", "vxlan", 1},
		{`{"VNI":1,"VtepMAC":`, "192.168.100.12", "10.244.2.0/24", "vxlan", 1},
		{`{"VtepMAC":"aa:bb:cc:dd:ee:02"}`, "192.168.100.12", "10.244.2.0/24", "vxlan", 0},
		{`{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`, "192.168.100.12", "10.244.2.0/24", "vxlan", 1},
		{`{"VNI":1.5,"VtepMAC":"aa:bb:cc:dd:ee:02"}`, "192.168.100.12", "10.244.2.0/24", "vxlan", 1},
		{`{"VNI":1,"VtepMAC":"aa-bb-cc-dd-ee-02"}`, "::ffff:192.168.100.12", "::ffff:10.244.2.0/120", "vxlan", 1},
		{`null`, "fd00::12", "fd00:10:244:2::/64", "host-gw", 1},
		{``, "", "", "", -1},
	} {
		f.Add([]byte(s.data), s.publicIP, s.subnet, s.backendType, s.vni)
	}
	f.Fuzz(func(t *testing.T, data []byte, publicIP, podCIDR, backendType string, vni int) {
		lease := subnet.Lease{Name: "fuzz-peer", Attrs: subnet.LeaseAttrs{BackendType: backendType, BackendData: json.RawMessage(data)}}
		if p, err := netip.ParsePrefix(podCIDR); err == nil {
			// As subnet/kube hands leases over: IPv4 or IPv6, masked.
			if p.Addr().Is4() {
				lease.Subnet = p.Masked()
			} else {
				lease.IPv6Subnet = p.Masked()
			}
		}
		if a, err := netip.ParseAddr(publicIP); err == nil {
			lease.Attrs.PublicIP = a
		}

		mac, err := parseV4(lease, vni)
		if err != nil {
			if !errors.Is(err, ErrPeerData) {
				t.Fatalf("error %q does not wrap ErrPeerData", err)
			}
			if !strings.Contains(err.Error(), lease.Name) {
				t.Fatalf("error %q does not name the peer", err)
			}
			return
		}
		if backendType != Type {
			t.Fatalf("accepted backend type %q", backendType)
		}
		if !lease.Subnet.IsValid() || !lease.Subnet.Addr().Is4() {
			t.Fatalf("accepted a peer without an IPv4 subnet: %+v", lease)
		}
		if !lease.Attrs.PublicIP.Is4() {
			t.Fatalf("accepted public ip %s", lease.Attrs.PublicIP)
		}
		if mac.IsZero() || mac[0]&1 != 0 {
			t.Fatalf("accepted MAC %s, which is not unicast", mac)
		}
		var d struct{ VNI *int }
		if err := json.Unmarshal(data, &d); err != nil || d.VNI == nil || *d.VNI != vni {
			t.Fatalf("accepted backend-data %q for VNI %d", data, vni)
		}

		// What the node advertises for this MAC parses back to it.
		own, err := json.Marshal(Data{VNI: vni, VtepMAC: mac.String()})
		if err != nil {
			t.Fatal(err)
		}
		again := lease
		again.Attrs.BackendData = own
		if mac2, err := parseV4(again, vni); err != nil || mac2 != mac {
			t.Fatalf("re-parsing %s: %s, %v; want %s", own, mac2, err, mac)
		}

		st := peerState(7, lease.Subnet, lease.Attrs.PublicIP, mac)
		if len(st.Routes) != 1 || len(st.Neighs) != 1 || len(st.FDBs) != 1 {
			t.Fatalf("peerState = %+v, want one route, neighbour and FDB entry", st)
		}
		r, n, fdb := st.Routes[0], st.Neighs[0], st.FDBs[0]
		if r.Dst != lease.Subnet || !r.Onlink || r.Gw != lease.Subnet.Addr() || !r.Dst.Contains(r.Gw) {
			t.Fatalf("route %+v for subnet %s", r, lease.Subnet)
		}
		if n.IP != r.Gw || n.MAC != mac || fdb.MAC != mac || fdb.Dst != lease.Attrs.PublicIP {
			t.Fatalf("neighbour %+v and FDB entry %+v do not match route %+v, MAC %s, public ip %s", n, fdb, r, mac, lease.Attrs.PublicIP)
		}
		if r.LinkIndex != 7 || n.LinkIndex != 7 || fdb.LinkIndex != 7 {
			t.Fatalf("state %+v is not on link 7", st)
		}
	})
}
