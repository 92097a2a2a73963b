package vxlan

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

func TestParseOptions(t *testing.T) {
	def := Options{VNI: 1, Port: 8472}
	tests := []struct {
		name string
		raw  string // "" for no options at all
		want Options
	}{
		{"no options", "", def},
		{"type only", `{"Type":"vxlan"}`, def},
		{"null", `null`, def},
		{"VNI 0", `{"Type":"vxlan","VNI":0}`, Options{VNI: 0, Port: 8472}},
		{"largest VNI", `{"VNI":16777215}`, Options{VNI: 1<<24 - 1, Port: 8472}},
		{"port 0 is the kernel default", `{"Port":0}`, def},
		{"IANA port", `{"Port":4789}`, Options{VNI: 1, Port: 4789}},
		{"largest port", `{"Port":65535}`, Options{VNI: 1, Port: 65535}},
		{"smallest MTU", `{"MTU":626}`, Options{VNI: 1, Port: 8472, MTU: 626}},
		{"jumbo MTU", `{"MTU":9000}`, Options{VNI: 1, Port: 8472, MTU: 9000}},
		{"flags", `{"GBP":true,"Learning":true,"DirectRouting":true}`,
			Options{VNI: 1, Port: 8472, GBP: true, Learning: true, DirectRouting: true}},
		// encoding/json matches keys case-insensitively, as upstream's
		// decoding does.
		{"lower-case keys", `{"type":"vxlan","vni":4096,"port":4789,"directrouting":true}`,
			Options{VNI: 4096, Port: 4789, DirectRouting: true}},
		{"unknown keys are ignored", `{"Type":"vxlan","Frobnicate":3,"VNI":2}`, Options{VNI: 2, Port: 8472}},
		{"all", `{"Type":"vxlan","VNI":7,"Port":8999,"MTU":1400,"GBP":true,"Learning":true,"DirectRouting":false}`,
			Options{VNI: 7, Port: 8999, MTU: 1400, GBP: true, Learning: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var raw json.RawMessage
			if tt.raw != "" {
				raw = json.RawMessage(tt.raw)
			}
			got, err := ParseOptions(raw)
			if err != nil {
				t.Fatalf("ParseOptions(%s): %v", tt.raw, err)
			}
			if got != tt.want {
				t.Errorf("ParseOptions(%s) = %+v, want %+v", tt.raw, got, tt.want)
			}
		})
	}
}

func TestParseOptionsErrors(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		wantErr []string
	}{
		{"VNI -1", `{"VNI":-1}`, []string{"VNI -1", "out of range", "16777215"}},
		{"VNI 1<<24", `{"VNI":16777216}`, []string{"VNI 16777216", "out of range"}},
		{"VNI as string", `{"VNI":"1"}`, []string{"vxlan", "VNI"}},
		{"VNI fractional", `{"VNI":1.5}`, []string{"vxlan", "VNI"}},
		{"VNI overflows int", `{"VNI":1e30}`, []string{"vxlan"}},
		{"port -1", `{"Port":-1}`, []string{"Port -1", "out of range"}},
		{"port 65536", `{"Port":65536}`, []string{"Port 65536", "out of range"}},
		{"port as string", `{"Port":"8472"}`, []string{"vxlan", "Port"}},
		{"GBP as string", `{"GBP":"true"}`, []string{"vxlan", "GBP"}},
		{"Learning as number", `{"Learning":1}`, []string{"vxlan", "Learning"}},
		{"DirectRouting as string", `{"DirectRouting":"yes"}`, []string{"vxlan", "DirectRouting"}},
		{"MTU as bool", `{"MTU":true}`, []string{"vxlan", "MTU"}},
		{"MTU too small", `{"MTU":625}`, []string{"MTU 625", "too small", "576"}},
		{"MTU tiny", `{"MTU":68}`, []string{"MTU 68", "too small"}},
		{"MTU negative", `{"MTU":-1}`, []string{"MTU -1"}},
		{"not an object", `[1,2]`, []string{"vxlan"}},
		{"truncated", `{"VNI":1`, []string{"vxlan"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseOptions(json.RawMessage(tt.raw))
			if err == nil {
				t.Fatalf("ParseOptions(%s) succeeded, want an error", tt.raw)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ParseOptions(%s) error %q does not mention %q", tt.raw, err, w)
				}
			}
		})
	}
}

// peer returns a good vxlan lease; change modifies it.
func peer(change func(l *subnet.Lease)) subnet.Lease {
	l := subnet.Lease{
		Name:   "n2",
		Subnet: netip.MustParsePrefix("10.244.2.0/24"),
		Attrs: subnet.LeaseAttrs{
			PublicIP:    netip.MustParseAddr("192.168.100.12"),
			BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}`),
		},
	}
	if change != nil {
		change(&l)
	}
	return l
}

func withData(d string) func(l *subnet.Lease) {
	return func(l *subnet.Lease) { l.Attrs.BackendData = json.RawMessage(d) }
}

func TestParsePeer(t *testing.T) {
	tests := []struct {
		name    string
		lease   subnet.Lease
		vni     int
		wantMAC string
		wantErr []string
	}{
		{name: "good", lease: peer(nil), vni: 1, wantMAC: "aa:bb:cc:dd:ee:02"},
		{name: "upper-case MAC", lease: peer(withData(`{"VNI":1,"VtepMAC":"AA:BB:CC:DD:EE:02"}`)), vni: 1, wantMAC: "aa:bb:cc:dd:ee:02"},
		{name: "extra keys", lease: peer(withData(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02","Extra":true}`)), vni: 1, wantMAC: "aa:bb:cc:dd:ee:02"},
		{name: "VNI 0 on both sides", lease: peer(withData(`{"VNI":0,"VtepMAC":"aa:bb:cc:dd:ee:02"}`)), vni: 0, wantMAC: "aa:bb:cc:dd:ee:02"},
		{name: "other VNI", lease: peer(withData(`{"VNI":2,"VtepMAC":"aa:bb:cc:dd:ee:02"}`)), vni: 1,
			wantErr: []string{"n2", "VNI 2", "this node uses 1"}},
		{name: "missing VNI", lease: peer(withData(`{"VtepMAC":"aa:bb:cc:dd:ee:02"}`)), vni: 1,
			wantErr: []string{"n2", "no VNI"}},
		{name: "missing VNI is not VNI 0", lease: peer(withData(`{"VtepMAC":"aa:bb:cc:dd:ee:02"}`)), vni: 0,
			wantErr: []string{"no VNI"}},
		{name: "null data", lease: peer(withData(`null`)), vni: 1, wantErr: []string{"no VNI"}},
		{name: "no data", lease: peer(withData(``)), vni: 1, wantErr: []string{"n2", "malformed backend-data"}},
		{name: "bad JSON", lease: peer(withData(`{"VNI":1,`)), vni: 1, wantErr: []string{"n2", "malformed backend-data"}},
		{name: "VNI as string", lease: peer(withData(`{"VNI":"1","VtepMAC":"aa:bb:cc:dd:ee:02"}`)), vni: 1,
			wantErr: []string{"malformed backend-data"}},
		{name: "bad MAC", lease: peer(withData(`{"VNI":1,"VtepMAC":"zz:bb:cc:dd:ee:02"}`)), vni: 1,
			wantErr: []string{"n2", "bad VtepMAC", "zz:bb:cc:dd:ee:02"}},
		{name: "missing MAC", lease: peer(withData(`{"VNI":1}`)), vni: 1, wantErr: []string{"bad VtepMAC"}},
		{name: "EUI-64 MAC", lease: peer(withData(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff:00:11"}`)), vni: 1,
			wantErr: []string{"bad VtepMAC"}},
		{name: "multicast MAC", lease: peer(withData(`{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`)), vni: 1,
			wantErr: []string{"n2", "not a unicast"}},
		{name: "broadcast MAC", lease: peer(withData(`{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}`)), vni: 1,
			wantErr: []string{"not a unicast"}},
		{name: "zero MAC", lease: peer(withData(`{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`)), vni: 1,
			wantErr: []string{"not a unicast"}},
		{name: "wrong backend type", lease: peer(func(l *subnet.Lease) { l.Attrs.BackendType = "host-gw" }), vni: 1,
			wantErr: []string{"n2", `"host-gw"`}},
		{name: "no backend type", lease: peer(func(l *subnet.Lease) { l.Attrs.BackendType = "" }), vni: 1,
			wantErr: []string{"n2", "backend"}},
		{name: "missing public ip", lease: peer(func(l *subnet.Lease) { l.Attrs.PublicIP = netip.Addr{} }), vni: 1,
			wantErr: []string{"n2", "no IPv4 public-ip"}},
		{name: "IPv6 public ip", lease: peer(func(l *subnet.Lease) { l.Attrs.PublicIP = netip.MustParseAddr("fd00::12") }), vni: 1,
			wantErr: []string{"n2", "no IPv4 public-ip"}},
		{name: "no subnet", lease: peer(func(l *subnet.Lease) { l.Subnet = netip.Prefix{} }), vni: 1,
			wantErr: []string{"n2", "no IPv4 subnet"}},
		{name: "IPv6 subnet only", lease: peer(func(l *subnet.Lease) {
			l.Subnet, l.IPv6Subnet = netip.Prefix{}, netip.MustParsePrefix("fd00:10:244:2::/64")
		}), vni: 1, wantErr: []string{"no IPv4 subnet"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mac, err := parseV4(tt.lease, tt.vni)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("parsePeer succeeded with %s, want an error", mac)
				}
				if !errors.Is(err, ErrPeerData) {
					t.Errorf("error %q does not wrap ErrPeerData", err)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("parsePeer: %v", err)
			}
			if mac.String() != tt.wantMAC {
				t.Errorf("MAC = %s, want %s", mac, tt.wantMAC)
			}
		})
	}
}

func TestPeerState(t *testing.T) {
	mac, _ := kernel.ParseMAC("aa:bb:cc:dd:ee:02")
	tests := []struct {
		name      string
		linkIndex int
		sn        string
		pub       string
		want      network.State
	}{
		{
			// REFERENCE.md section 4: neighbour, FDB entry, onlink route.
			name: "reference example", linkIndex: 7, sn: "10.244.2.0/24", pub: "192.168.100.12",
			want: network.State{
				Neighs: []kernel.Neigh{{LinkIndex: 7, IP: netip.MustParseAddr("10.244.2.0"), MAC: mac}},
				FDBs:   []kernel.FDB{{LinkIndex: 7, MAC: mac, Dst: netip.MustParseAddr("192.168.100.12")}},
				Routes: []kernel.Route{{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("10.244.2.0"), LinkIndex: 7, Onlink: true}},
			},
		},
		{
			name: "unmasked subnet", linkIndex: 3, sn: "10.244.2.9/23", pub: "10.0.0.2",
			want: network.State{
				Neighs: []kernel.Neigh{{LinkIndex: 3, IP: netip.MustParseAddr("10.244.2.0"), MAC: mac}},
				FDBs:   []kernel.FDB{{LinkIndex: 3, MAC: mac, Dst: netip.MustParseAddr("10.0.0.2")}},
				Routes: []kernel.Route{{Dst: netip.MustParsePrefix("10.244.2.0/23"), Gw: netip.MustParseAddr("10.244.2.0"), LinkIndex: 3, Onlink: true}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := peerState(tt.linkIndex, netip.MustParsePrefix(tt.sn), netip.MustParseAddr(tt.pub), mac)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("peerState =\n%+v\nwant\n%+v", got, tt.want)
			}
			if got.OwnedLinks != nil {
				t.Errorf("a peer's state claims links: %v", got.OwnedLinks)
			}
			if got.Routes[0].Protocol != 0 {
				t.Errorf("the backend set the route protocol (the reconciler's job): %d", got.Routes[0].Protocol)
			}
		})
	}
}

func testExt() *ip.ExternalInterface {
	a, a6 := netip.MustParseAddr("192.168.100.11"), netip.MustParseAddr("fd00:100::11")
	return &ip.ExternalInterface{Name: "eth0", Index: 2, MTU: 1500, IfaceAddr: a, ExtAddr: a, IfaceV6Addr: a6, ExtV6Addr: a6}
}

func testConfig(t *testing.T, backendJSON string) *subnet.Config {
	t.Helper()
	return testConfigOf(t, `{"Network":"10.244.0.0/16","Backend":`+backendJSON+`}`)
}

const (
	dualStack = `{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`
	ipv6Only  = `{"EnableIPv4":false,"IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`
)

func testConfigOf(t *testing.T, netConf string) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(netConf))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNew(t *testing.T) {
	tests := []struct {
		name     string
		backend  string
		conf     string // whole net-conf.json instead of backend
		ext      func(e *ip.ExternalInterface)
		wantMTU  int
		wantName string
		wantErr  string
	}{
		{name: "defaults", backend: `{"Type":"vxlan"}`, wantMTU: 1450, wantName: "flannel.1"},
		{name: "VNI names the device", backend: `{"Type":"vxlan","VNI":4096}`, wantMTU: 1450, wantName: "flannel.4096"},
		{name: "jumbo underlay", backend: `{"Type":"vxlan"}`, ext: func(e *ip.ExternalInterface) { e.MTU = 9000 }, wantMTU: 8950, wantName: "flannel.1"},
		{name: "MTU option overrides the interface's", backend: `{"Type":"vxlan","MTU":1400}`, wantMTU: 1350, wantName: "flannel.1"},
		{name: "DirectRouting needs a reachability check", backend: `{"Type":"vxlan","DirectRouting":true}`, wantErr: "reachability"},
		{name: "public ip differs from the interface's", backend: `{"Type":"vxlan"}`,
			ext: func(e *ip.ExternalInterface) { e.ExtAddr = netip.MustParseAddr("203.0.113.1") }, wantMTU: 1450, wantName: "flannel.1"},
		{name: "bad options", backend: `{"Type":"vxlan","VNI":-1}`, wantErr: "VNI"},
		{name: "no IPv4 address", backend: `{"Type":"vxlan"}`, ext: func(e *ip.ExternalInterface) { e.IfaceAddr = netip.Addr{} },
			wantErr: "eth0 has no IPv4 address"},
		{name: "interface MTU too small", backend: `{"Type":"vxlan"}`, ext: func(e *ip.ExternalInterface) { e.MTU = 600 },
			wantErr: "MTU 600"},
		{name: "dual stack: pods get the smaller MTU, IPv6 over IPv6 costs 70", conf: dualStack, wantMTU: 1430, wantName: "flannel.1,flannel-v6.1"},
		{name: "IPv6 only", conf: ipv6Only, wantMTU: 1430, wantName: "flannel-v6.1"},
		{name: "IPv6 only needs no IPv4 address", conf: ipv6Only, ext: func(e *ip.ExternalInterface) { e.IfaceAddr, e.ExtAddr = netip.Addr{}, netip.Addr{} },
			wantMTU: 1430, wantName: "flannel-v6.1"},
		{name: "dual stack without an IPv6 address", conf: dualStack, ext: func(e *ip.ExternalInterface) { e.IfaceV6Addr = netip.Addr{} },
			wantErr: "eth0 has no global IPv6 address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ext := testExt()
			if tt.ext != nil {
				tt.ext(ext)
			}
			// No handle: New must not touch the kernel.
			netConf := tt.conf
			if netConf == "" {
				netConf = `{"Network":"10.244.0.0/16","Backend":` + tt.backend + `}`
			}
			cfg := testConfigOf(t, netConf)
			be, err := New(backend.Params{Config: cfg, ExtIface: ext})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if be.MTU() != tt.wantMTU {
				t.Errorf("MTU() = %d, want %d", be.MTU(), tt.wantMTU)
			}
			var names []string
			for _, v := range be.(*Backend).vteps() {
				names = append(names, v.name)
			}
			if name := strings.Join(names, ","); name != tt.wantName {
				t.Errorf("device name = %s, want %s", name, tt.wantName)
			}
		})
	}
}

func TestBackendPeerState(t *testing.T) {
	be, err := New(backend.Params{Config: testConfig(t, `{"Type":"vxlan","VNI":5}`), ExtIface: testExt()})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	b.v4.linkIndex = 9 // as Setup would
	if got := b.Base(); !reflect.DeepEqual(got, network.State{OwnedLinks: []int{9}}) {
		t.Errorf("Base() = %+v, want the device owned", got)
	}

	good := peer(withData(`{"VNI":5,"VtepMAC":"aa:bb:cc:dd:ee:02"}`))
	st, err := b.PeerState(good)
	if err != nil {
		t.Fatalf("PeerState: %v", err)
	}
	mac, _ := kernel.ParseMAC("aa:bb:cc:dd:ee:02")
	if want := peerState(9, good.Subnet, good.Attrs.PublicIP, mac); !reflect.DeepEqual(st, want) {
		t.Errorf("PeerState = %+v, want %+v", st, want)
	}
	// A peer on the default VNI does not match this node's VNI 5.
	if _, err := b.PeerState(peer(nil)); !errors.Is(err, ErrPeerData) {
		t.Errorf("PeerState of a peer with another VNI: error %v, want ErrPeerData", err)
	}
}

func TestPreviousMAC(t *testing.T) {
	b := &Backend{opts: Options{VNI: 1}}
	attrs := func(typ, data string) *subnet.LeaseAttrs {
		return &subnet.LeaseAttrs{BackendType: typ, BackendData: json.RawMessage(data)}
	}
	tests := []struct {
		name string
		prev *subnet.LeaseAttrs
		want string // "" for none
	}{
		{"none", nil, ""},
		{"same backend and VNI", attrs("vxlan", `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`), "aa:bb:cc:dd:ee:01"},
		{"other backend", attrs("host-gw", `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`), ""},
		{"other VNI", attrs("vxlan", `{"VNI":2,"VtepMAC":"aa:bb:cc:dd:ee:01"}`), ""},
		{"no data", attrs("vxlan", ``), ""},
		{"null data", attrs("vxlan", `null`), ""},
		{"bad JSON", attrs("vxlan", `{"VNI":1,`), ""},
		{"bad MAC", attrs("vxlan", `{"VNI":1,"VtepMAC":"nope"}`), ""},
		{"multicast MAC", attrs("vxlan", `{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`), ""},
		{"zero MAC", attrs("vxlan", `{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`), ""},
	}
	v6 := &subnet.LeaseAttrs{BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`),
		BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:06"}`)}
	if got := b.previousMAC(true, v6); got.String() != "aa:bb:cc:dd:ee:06" {
		t.Errorf("previousMAC(IPv6) = %s, want the backend-v6-data MAC", got)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := b.previousMAC(false, tt.prev)
			if tt.want == "" {
				if got != nil {
					t.Errorf("previousMAC = %s, want none", got)
				}
				return
			}
			if got.String() != tt.want {
				t.Errorf("previousMAC = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestDataJSON(t *testing.T) {
	// The backend-data annotation other nodes (upstream's too) parse.
	b, err := json.Marshal(Data{VNI: 1, VtepMAC: "aa:bb:cc:dd:ee:ff"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`; got != want {
		t.Errorf("Data JSON = %s, want %s", got, want)
	}
}

// segment is a fake ip.Reachability: addresses in onLink are direct on the
// test interface, the others go through a gateway.
type segment struct{ onLink netip.Prefix }

func (s segment) Direct(a netip.Addr, link int) (bool, netip.Addr, error) {
	if s.onLink.Contains(a) {
		return link == testExt().Index, netip.Addr{}, nil
	}
	return false, netip.MustParseAddr("192.168.100.1"), nil
}

func TestDirectRouting(t *testing.T) {
	ext := testExt()
	be, err := New(backend.Params{Config: testConfig(t, `{"Type":"vxlan","DirectRouting":true}`), ExtIface: ext,
		Reach: segment{netip.MustParsePrefix("192.168.100.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	b.v4.linkIndex = 9

	near := peer(nil)
	st, err := b.PeerState(near)
	if err != nil {
		t.Fatal(err)
	}
	want := network.State{Routes: []kernel.Route{{Dst: near.Subnet, Gw: near.Attrs.PublicIP, LinkIndex: ext.Index}}}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("same-segment peer: %+v, want a direct route %+v", st, want)
	}

	far := peer(func(l *subnet.Lease) { l.Attrs.PublicIP = netip.MustParseAddr("192.168.200.13") })
	st, err = b.PeerState(far)
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := kernel.ParseMAC("aa:bb:cc:dd:ee:02")
	if want := peerState(9, far.Subnet, far.Attrs.PublicIP, mac); !reflect.DeepEqual(st, want) {
		t.Errorf("routed peer: %+v, want the VXLAN entries %+v", st, want)
	}
	// A malformed peer is skipped even when it is near.
	if _, err := b.PeerState(peer(withData(`{"VNI":1}`))); !errors.Is(err, ErrPeerData) {
		t.Errorf("bad peer with DirectRouting: %v", err)
	}
}

// parseV4 is parsePeer on an IPv4-only node: the peer's IPv4 VTEP MAC.
func parseV4(l subnet.Lease, vni int) (kernel.MAC, error) {
	vteps, err := parsePeer(l, vni, true, false)
	if err != nil {
		return kernel.MAC{}, err
	}
	return vteps[0].MAC, nil
}

func TestDualStackPeerState(t *testing.T) {
	be, err := New(backend.Params{Config: testConfigOf(t, dualStack), ExtIface: testExt()})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	b.v4.linkIndex, b.v6.linkIndex = 9, 10 // as Setup would
	p := peer(func(l *subnet.Lease) {
		l.IPv6Subnet = netip.MustParsePrefix("fd00:10:244:2::/64")
		l.Attrs.PublicIPv6 = netip.MustParseAddr("fd00:100::12")
		l.Attrs.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:06"}`)
	})
	st, err := b.PeerState(p)
	if err != nil {
		t.Fatal(err)
	}
	mac4, _ := kernel.ParseMAC("aa:bb:cc:dd:ee:02")
	mac6, _ := kernel.ParseMAC("aa:bb:cc:dd:ee:06")
	want := peerState(9, p.Subnet, p.Attrs.PublicIP, mac4)
	want.Merge(peerState(10, p.IPv6Subnet, p.Attrs.PublicIPv6, mac6))
	if !reflect.DeepEqual(st, want) {
		t.Errorf("state\n%+v\nwant\n%+v", st, want)
	}
	if st.Routes[1].String() == "" || st.Routes[1].Gw.String() != "fd00:10:244:2::" || !st.Routes[1].Onlink {
		t.Errorf("IPv6 route %v", st.Routes[1])
	}

	// Only the IPv6 annotations changed: only the IPv6 entries change.
	p2 := p
	p2.Attrs.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:07"}`)
	st2, err := b.PeerState(p2)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st2.FDBs[0], st.FDBs[0]) || st2.FDBs[1].MAC.String() != "aa:bb:cc:dd:ee:07" {
		t.Errorf("after an IPv6-only change: %+v", st2.FDBs)
	}

	// A malformed backend-v6-data makes the peer unusable, naming the key.
	bad := p
	bad.Attrs.BackendV6Data = json.RawMessage(`{"VNI":1`)
	if _, err := b.PeerState(bad); err == nil || !strings.Contains(err.Error(), "backend-v6-data") {
		t.Errorf("malformed backend-v6-data: %v", err)
	}

	// An IPv4-only peer (an upstream node without IPv6) keeps its IPv4 entries.
	v4 := peer(nil)
	if st, err := b.PeerState(v4); err != nil || len(st.Routes) != 1 || !st.Routes[0].Dst.Addr().Is4() {
		t.Errorf("IPv4-only peer: %+v, %v", st, err)
	}
	// So does a peer whose flanneld runs without IPv6 while its Node has
	// an IPv6 podCIDR (IPv6 being enabled node by node).
	noV6 := v4
	noV6.IPv6Subnet = p.IPv6Subnet
	if st, err := b.PeerState(noV6); err != nil || !reflect.DeepEqual(st, peerState(9, p.Subnet, p.Attrs.PublicIP, mac4)) {
		t.Errorf("peer without IPv6 annotations: %+v, %v", st, err)
	}
}
