package wireguard

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

const (
	key2 = "YdEuCvQRh/CgOdzgG+1y1qgxc0F2RS5dXoVVm0vDFUk="
	key3 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
)

func testBackend(t *testing.T, netConf string) *Backend {
	t.Helper()
	cfg, err := subnet.ParseConfig([]byte(netConf))
	if err != nil {
		t.Fatal(err)
	}
	a, a6 := netip.MustParseAddr("192.168.100.11"), netip.MustParseAddr("fd00:100::11")
	ext := &ip.ExternalInterface{Name: "eth0", Index: 2, MTU: 1500, IfaceAddr: a, ExtAddr: a, IfaceV6Addr: a6, ExtV6Addr: a6}
	be, err := New(backend.Params{Config: cfg, ExtIface: ext})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	for i, d := range b.devs {
		d.linkIndex = 10 + i
	}
	b.private[0] = 1
	b.public = publicKey(b.private)
	return b
}

func netConf(network, backendJSON string) string {
	return `{` + network + `,"Backend":` + backendJSON + `}`
}

const (
	v4Net   = `"Network":"10.244.0.0/16"`
	dualNet = `"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true`
)

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions(json.RawMessage(`{"Type":"wireguard"}`))
	if err != nil {
		t.Fatal(err)
	}
	if o.ListenPort != 51820 || o.ListenPortV6 != 51821 || o.Mode != ModeSeparate || o.PersistentKeepaliveInterval != 0 || o.MTU != 0 {
		t.Errorf("defaults: %+v", o)
	}
	o, err = ParseOptions(json.RawMessage(`{"psk":"` + key2 + `","listenport":5000,"Mode":"AUTO","PersistentKeepaliveInterval":25,"MTU":1400}`))
	if err != nil || o.ListenPort != 5000 || o.Mode != ModeAuto || o.PersistentKeepaliveInterval != 25 || o.psk.String() != key2 {
		t.Errorf("options: %+v, %v", o, err)
	}
	for _, bad := range []string{`{"ListenPort":70000}`, `{"ListenPortV6":-1}`, `{"Mode":"both"}`, `{"PSK":"secret"}`,
		`{"PersistentKeepaliveInterval":-5}`, `{"MTU":600}`, `{"ListenPort":"x"}`} {
		if _, err := ParseOptions(json.RawMessage(bad)); err == nil {
			t.Errorf("ParseOptions(%s) accepted", bad)
		}
	}
}

func TestNewDevicesAndMTU(t *testing.T) {
	b := testBackend(t, netConf(dualNet, `{"Type":"wireguard"}`))
	if len(b.devs) != 2 || b.devs[0].name != "flannel-wg" || b.devs[1].name != "flannel-wg-v6" || b.devs[1].port != 51821 {
		t.Errorf("separate dual-stack devices: %+v %+v", b.devs[0], b.devs[1])
	}
	if b.MTU() != 1420 {
		t.Errorf("MTU %d, want 1500 - 80", b.MTU())
	}
	b = testBackend(t, netConf(dualNet, `{"Type":"wireguard","Mode":"auto","MTU":9000}`))
	if len(b.devs) != 1 || !b.devs[0].ipv4 || !b.devs[0].ipv6 || b.MTU() != 8920 {
		t.Errorf("auto: %+v, MTU %d", b.devs[0], b.MTU())
	}
	base := b.Base()
	if len(base.Routes) != 2 || base.Routes[0].Dst.String() != "10.244.0.0/16" || base.Routes[1].Dst.String() != "fd00:10:244::/56" {
		t.Errorf("routes: %v", base.Routes)
	}
	if err := b.SetUnderlayMTU(600); err != nil || b.MTU() != 8920 {
		t.Errorf("the MTU option did not fix the MTU: %v, %d", err, b.MTU())
	}
	b = testBackend(t, netConf(v4Net, `{"Type":"wireguard"}`))
	if err := b.SetUnderlayMTU(600); err == nil {
		t.Error("an MTU leaving less than 576 bytes was accepted")
	}
	if err := b.SetUnderlayMTU(9000); err != nil || b.MTU() != 8920 {
		t.Errorf("the MTU does not follow the underlay's: %v, %d", err, b.MTU())
	}
}

func wgLease(name string, change func(l *subnet.Lease)) subnet.Lease {
	l := subnet.Lease{
		Name:   name,
		Subnet: netip.MustParsePrefix("10.244.2.0/24"),
		Attrs: subnet.LeaseAttrs{
			PublicIP:    netip.MustParseAddr("192.168.100.12"),
			BackendType: Type,
			BackendData: json.RawMessage(`{"PublicKey":"` + key2 + `","Port":51820}`),
		},
	}
	if change != nil {
		change(&l)
	}
	return l
}

func dual(l *subnet.Lease) {
	l.IPv6Subnet = netip.MustParsePrefix("fd00:10:244:2::/64")
	l.Attrs.PublicIPv6 = netip.MustParseAddr("fd00:100::12")
	l.Attrs.BackendV6Data = json.RawMessage(`{"PublicKey":"` + key2 + `","Port":51821}`)
}

func TestPeerStateSeparate(t *testing.T) {
	b := testBackend(t, netConf(dualNet, `{"Type":"wireguard","PersistentKeepaliveInterval":25,"PSK":"`+key3+`"}`))
	st, err := b.PeerState(wgLease("n2", dual))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.WGPeers) != 2 {
		t.Fatalf("peers %v", st.WGPeers)
	}
	v4, v6 := st.WGPeers[0], st.WGPeers[1]
	if v4.LinkIndex != 10 || v4.Endpoint.String() != "192.168.100.12:51820" || v4.AllowedIPs != "10.244.2.0/24" ||
		v4.PublicKey.String() != key2 || v4.Keepalive != 25 || v4.PSK.String() != key3 {
		t.Errorf("IPv4 peer %v", v4)
	}
	if v6.LinkIndex != 11 || v6.Endpoint.String() != "[fd00:100::12]:51821" || v6.AllowedIPs != "fd00:10:244:2::/64" {
		t.Errorf("IPv6 peer %v", v6)
	}
}

func TestPeerStateSingleDevice(t *testing.T) {
	// A single-device peer advertises its one port in both families.
	single := func(l *subnet.Lease) {
		dual(l)
		l.Attrs.BackendV6Data = l.Attrs.BackendData
	}
	public := func(l *subnet.Lease) {
		single(l)
		l.Attrs.PublicIPv6 = netip.MustParseAddr("2001:db8::12")
	}
	for _, tt := range []struct {
		mode     string
		change   func(l *subnet.Lease)
		local6   string // this node's IPv6 address, if not fd00:100::11
		endpoint string
	}{
		{"auto", single, "", "192.168.100.12:51820"},
		// Only the peer's IPv6 address is public: IPv6 when this node's
		// is public too (upstream's choice), else IPv4.
		{"auto", public, "2001:db8::11", "[2001:db8::12]:51820"},
		{"auto", public, "", "192.168.100.12:51820"},
		{"ipv4", public, "", "192.168.100.12:51820"},
		{"ipv6", single, "", "[fd00:100::12]:51820"},
	} {
		b := testBackend(t, netConf(dualNet, `{"Type":"wireguard","Mode":"`+tt.mode+`"}`))
		if tt.local6 != "" {
			b.ext.ExtV6Addr = netip.MustParseAddr(tt.local6)
		}
		st, err := b.PeerState(wgLease("n2", tt.change))
		if err != nil {
			t.Fatalf("%s: %v", tt.mode, err)
		}
		if len(st.WGPeers) != 1 || st.WGPeers[0].Endpoint.String() != tt.endpoint ||
			st.WGPeers[0].AllowedIPs != "10.244.2.0/24,fd00:10:244:2::/64" || st.WGPeers[0].LinkIndex != 10 {
			t.Errorf("%s: peers %v, want one at %s for both subnets", tt.mode, st.WGPeers, tt.endpoint)
		}
	}
}

// Peer data is untrusted: what is wrong with it skips the peer.
func TestPeerStateMalformed(t *testing.T) {
	b := testBackend(t, netConf(v4Net, `{"Type":"wireguard"}`))
	withData := func(d string) func(l *subnet.Lease) {
		return func(l *subnet.Lease) { l.Attrs.BackendData = json.RawMessage(d) }
	}
	for _, tt := range []struct {
		name, want string
		change     func(l *subnet.Lease)
	}{
		{"not JSON", "malformed backend-data", withData(`{"PublicKey":`)},
		{"no key", "bad PublicKey", withData(`{"Port":51820}`)},
		{"bad key", "bad PublicKey", withData(`{"PublicKey":"AAAA"}`)},
		{"zero key", "bad PublicKey", withData(`{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`)},
		{"bad port", "out of range", withData(`{"PublicKey":"` + key2 + `","Port":99999}`)},
		{"own key", "this node's own public key", withData(`{"PublicKey":"` + b.public.String() + `"}`)},
		{"other backend", "uses backend", func(l *subnet.Lease) { l.Attrs.BackendType = "vxlan" }},
	} {
		_, err := b.PeerState(wgLease("n2", tt.change))
		if !errors.Is(err, backend.ErrPeerData) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want ErrPeerData saying %q", tt.name, err, tt.want)
		}
	}
	// Upstream's nodes advertise no Port: they listen on this node's.
	st, err := b.PeerState(wgLease("n2", withData(`{"PublicKey":"`+key2+`"}`)))
	if err != nil || st.WGPeers[0].Endpoint.Port() != 51820 {
		t.Errorf("no Port: %v, %v", st.WGPeers, err)
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "wgkey")
	k1, err := loadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v; want mode 0600", fi, err)
	}
	k2, err := loadOrCreateKey(path)
	if err != nil || k2 != k1 {
		t.Errorf("second load: %v, %v; want the same key", k2, err)
	}
	// wg genkey's output, newline included, is a valid key file.
	if err := os.WriteFile(path, []byte(key2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := loadOrCreateKey(path); err != nil || k.String() != key2 {
		t.Errorf("wg genkey file: %v, %v", k, err)
	}
	// An empty file (a crash) gets a new key; garbage is an error.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := loadOrCreateKey(path); err != nil || k.IsZero() {
		t.Errorf("empty file: %v, %v; want a new key", k, err)
	}
	if err := os.WriteFile(path, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Errorf("corrupt file: %v; want an error saying what to do", err)
	}
	t.Setenv(KeyFileEnv, "/elsewhere/wgkey")
	if KeyFile() != "/elsewhere/wgkey" {
		t.Errorf("KeyFile() = %s with %s set", KeyFile(), KeyFileEnv)
	}
}

func TestAdvertisedData(t *testing.T) {
	b := testBackend(t, netConf(dualNet, `{"Type":"wireguard","ListenPortV6":6000}`))
	v6, err := b.advertised(true)
	if err != nil {
		t.Fatal(err)
	}
	var d Data
	if err := json.Unmarshal(v6, &d); err != nil || d.PublicKey != b.public.String() || d.Port != 6000 {
		t.Errorf("backend-v6-data %s", v6)
	}
	if _, err := kernel.ParseWGKey(d.PublicKey); err != nil {
		t.Error(err)
	}
}

// TestPrimeBookkeeping checks which peers' keys wait to be primed: those
// the sync loop programs, one per device of the peer's families, until
// primed (at once on kernel devices, which need none); a dropped peer's
// go.
func TestPrimeBookkeeping(t *testing.T) {
	b := testBackend(t, netConf(dualNet, `{"Type":"wireguard"}`))
	lease := wgLease("n2", dual)
	b.SetPeer("n2", &lease)
	if got := b.unprimed["n2"]; len(got) != 2 || got[0].dev != b.devs[0] || got[1].dev != b.devs[1] || got[0].key.String() != key2 {
		t.Fatalf("unprimed after SetPeer: %+v", got)
	}
	b.primePending()
	if len(b.unprimed) != 0 || len(b.known["n2"]) != 2 {
		t.Errorf("kernel devices: unprimed %v, known %v", b.unprimed, b.known)
	}
	b.reprimeAll()
	if len(b.unprimed["n2"]) != 2 {
		t.Errorf("after reprimeAll: %v", b.unprimed)
	}
	b.SetPeer("n2", nil)
	if len(b.unprimed) != 0 || len(b.known) != 0 {
		t.Errorf("after dropping n2: unprimed %v, known %v", b.unprimed, b.known)
	}
	bad := wgLease("n3", dual)
	bad.Attrs.BackendData = json.RawMessage(`{"PublicKey":"nope"}`)
	b.SetPeer("n3", &bad)
	if len(b.unprimed) != 0 {
		t.Errorf("an unusable peer is primed: %v", b.unprimed)
	}
}
