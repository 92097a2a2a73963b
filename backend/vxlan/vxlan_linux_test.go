//go:build linux

package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network/nstest"
	"github.com/flanneld/flanneld/subnet"
)

// testNS is a throwaway named network namespace (named so that `ip -n`
// can inspect it) with a veth pair whose end "veth0" plays the external
// interface.
type testNS struct {
	t    *testing.T
	name string
	h    *netlink.Handle
	ext  *ip.ExternalInterface
}

const (
	vethMTU   = 1400 // not 1500, so that the MTU really comes from the interface
	vethAddr  = "192.168.100.11"
	otherAddr = "192.168.100.99"
)

// newTestNS creates the namespace; it is deleted when the test ends, even on
// failure. The test's own thread never changes namespace.
func newTestNS(t *testing.T) *testNS {
	t.Helper()
	ns := nstest.New(t)
	n := &testNS{t: t, name: ns.Name, h: ns.Handle(t)}

	n.ip("link", "add", "veth0", "mtu", fmt.Sprint(vethMTU), "type", "veth", "peer", "name", "veth1", "mtu", fmt.Sprint(vethMTU))
	n.ip("addr", "add", vethAddr+"/24", "dev", "veth0")
	n.ip("addr", "add", otherAddr+"/24", "dev", "veth0")
	n.ip("link", "set", "veth0", "up")
	n.ip("link", "set", "veth1", "up")
	link, err := n.h.LinkByName("veth0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr(vethAddr)
	n.ext = &ip.ExternalInterface{Name: "veth0", Index: link.Attrs().Index, MTU: link.Attrs().MTU, IfaceAddr: a, ExtAddr: a}
	return n
}

// ip runs `ip -n <ns> args...` and returns its output.
func (n *testNS) ip(args ...string) string {
	n.t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ipLink is the part of `ip -d -j link show` the tests read.
type ipLink struct {
	Ifindex  int      `json:"ifindex"`
	Ifname   string   `json:"ifname"`
	Flags    []string `json:"flags"`
	MTU      int      `json:"mtu"`
	Address  string   `json:"address"`
	Linkinfo struct {
		InfoKind string `json:"info_kind"`
		InfoData struct {
			ID       int    `json:"id"`
			Local    string `json:"local"`
			Link     string `json:"link"`
			Port     int    `json:"port"`
			Learning bool   `json:"learning"`
			GBP      bool   `json:"gbp"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

func (n *testNS) link(name string) ipLink {
	n.t.Helper()
	var links []ipLink
	out := n.ip("-d", "-j", "link", "show", "dev", name)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		n.t.Fatalf("parse `ip -d -j link show dev %s` (%v): %s", name, err, out)
	}
	return links[0]
}

// addrs4 returns the IPv4 addresses of a device as "a.b.c.d/len".
func (n *testNS) addrs4(name string) []string {
	n.t.Helper()
	var links []struct {
		AddrInfo []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	out := n.ip("-j", "addr", "show", "dev", name)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		n.t.Fatalf("parse `ip -j addr show dev %s` (%v): %s", name, err, out)
	}
	var got []string
	for _, a := range links[0].AddrInfo {
		if a.Family == "inet" {
			got = append(got, fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
		}
	}
	return got
}

// newBackend builds the backend as the daemon does, from net-conf.json's
// Backend object.
func (n *testNS) newBackend(backendJSON string) *Backend {
	n.t.Helper()
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"10.244.0.0/16","Backend":` + backendJSON + `}`))
	if err != nil {
		n.t.Fatal(err)
	}
	be, err := New(backend.Params{Config: cfg, ExtIface: n.ext, Handle: n.h})
	if err != nil {
		n.t.Fatalf("New: %v", err)
	}
	return be.(*Backend)
}

func (n *testNS) setup(b *Backend, prev *subnet.LeaseAttrs) subnet.LeaseAttrs {
	n.t.Helper()
	attrs, err := b.Setup(context.Background(), prev)
	if err != nil {
		n.t.Fatalf("Setup: %v", err)
	}
	return attrs
}

var ownLease = subnet.Lease{Name: "n1", Subnet: netip.MustParsePrefix("10.244.1.0/24")}

func prevAttrs(vni int, mac string) *subnet.LeaseAttrs {
	return &subnet.LeaseAttrs{
		PublicIP:    netip.MustParseAddr(vethAddr),
		BackendType: "vxlan",
		BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":%d,"VtepMAC":%q}`, vni, mac)),
	}
}

// checkDevice checks flannel.<vni> against REFERENCE.md section 4 and the
// attributes Setup returned.
func (n *testNS) checkDevice(name string, vni int, attrs subnet.LeaseAttrs) ipLink {
	n.t.Helper()
	l := n.link(name)
	d := l.Linkinfo.InfoData
	if l.Linkinfo.InfoKind != "vxlan" || d.ID != vni || d.Local != vethAddr || d.Link != "veth0" || d.Port != 8472 || d.Learning {
		n.t.Errorf("%s: kind %s id %d local %s dev %s dstport %d learning %v; want vxlan id %d local %s dev veth0 dstport 8472 nolearning",
			name, l.Linkinfo.InfoKind, d.ID, d.Local, d.Link, d.Port, d.Learning, vni, vethAddr)
	}
	if l.MTU != vethMTU-50 {
		n.t.Errorf("%s: MTU %d, want %d", name, l.MTU, vethMTU-50)
	}
	if attrs.BackendType != "vxlan" || attrs.PublicIP != netip.MustParseAddr(vethAddr) ||
		attrs.PublicIPv6.IsValid() || attrs.BackendV6Data != nil {
		n.t.Errorf("Setup attrs = %+v", attrs)
	}
	if want := fmt.Sprintf(`{"VNI":%d,"VtepMAC":%q}`, vni, l.Address); string(attrs.BackendData) != want {
		n.t.Errorf("BackendData = %s, want %s", attrs.BackendData, want)
	}
	return l
}

func TestSetupConfigure(t *testing.T) {
	n := newTestNS(t)
	b := n.newBackend(`{"Type":"vxlan"}`)
	attrs := n.setup(b, nil)
	l := n.checkDevice("flannel.1", 1, attrs)
	if b.MTU() != vethMTU-50 {
		t.Errorf("MTU() = %d, want %d", b.MTU(), vethMTU-50)
	}
	if got := b.Base().OwnedLinks; !slices.Equal(got, []int{l.Ifindex}) {
		t.Errorf("Base().OwnedLinks = %v, want [%d]", got, l.Ifindex)
	}
	if got := n.addrs4("flannel.1"); len(got) != 0 {
		t.Errorf("addresses before Configure: %v", got)
	}

	if err := b.Configure(context.Background(), ownLease); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	if got := n.addrs4("flannel.1"); !slices.Equal(got, []string{"10.244.1.0/32"}) {
		t.Errorf("addresses = %v, want [10.244.1.0/32]", got)
	}
	if l := n.link("flannel.1"); !slices.Contains(l.Flags, "UP") {
		t.Errorf("flannel.1 flags %v, want UP", l.Flags)
	}
	// Configure is idempotent.
	if err := b.Configure(context.Background(), ownLease); err != nil {
		t.Fatalf("second Configure: %v", err)
	}
	if got := n.addrs4("flannel.1"); !slices.Equal(got, []string{"10.244.1.0/32"}) {
		t.Errorf("addresses after a second Configure = %v", got)
	}
	// PeerState uses the device.
	st, err := b.PeerState(subnet.Lease{Name: "n2", Subnet: netip.MustParsePrefix("10.244.2.0/24"), Attrs: subnet.LeaseAttrs{
		PublicIP: netip.MustParseAddr("192.168.100.12"), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}`),
	}})
	if err != nil || len(st.Routes) != 1 || st.Routes[0].LinkIndex != l.Ifindex {
		t.Errorf("PeerState = %+v, %v; want a route through ifindex %d", st, err, l.Ifindex)
	}
}

func TestSetupOptions(t *testing.T) {
	n := newTestNS(t)
	b := n.newBackend(`{"Type":"vxlan","VNI":42,"Port":4789,"Learning":true,"GBP":true}`)
	attrs := n.setup(b, nil)
	l := n.link("flannel.42")
	d := l.Linkinfo.InfoData
	if d.ID != 42 || d.Port != 4789 || !d.Learning || !d.GBP || d.Local != vethAddr {
		t.Errorf("flannel.42: %+v, want id 42 dstport 4789 learning gbp local %s", d, vethAddr)
	}
	if want := fmt.Sprintf(`{"VNI":42,"VtepMAC":%q}`, l.Address); string(attrs.BackendData) != want {
		t.Errorf("BackendData = %s, want %s", attrs.BackendData, want)
	}
	// Reusing it with the same options keeps it.
	attrs2 := n.setup(n.newBackend(`{"Type":"vxlan","VNI":42,"Port":4789,"Learning":true,"GBP":true}`), nil)
	if l2 := n.link("flannel.42"); l2.Ifindex != l.Ifindex || string(attrs2.BackendData) != string(attrs.BackendData) {
		t.Errorf("restart with the same options replaced the device (ifindex %d -> %d)", l.Ifindex, l2.Ifindex)
	}
}

func TestSetupRestartReusesDevice(t *testing.T) {
	n := newTestNS(t)
	first := n.newBackend(`{"Type":"vxlan"}`)
	attrs1 := n.setup(first, nil)
	if err := first.Configure(context.Background(), ownLease); err != nil {
		t.Fatal(err)
	}
	l1 := n.link("flannel.1")

	// A restarted flanneld, with and without what it advertised before.
	for _, prev := range []*subnet.LeaseAttrs{nil, &attrs1} {
		b := n.newBackend(`{"Type":"vxlan"}`)
		attrs := n.setup(b, prev)
		l := n.checkDevice("flannel.1", 1, attrs)
		if l.Ifindex != l1.Ifindex || l.Address != l1.Address {
			t.Errorf("restart (prev %v) replaced the device: ifindex %d -> %d, MAC %s -> %s", prev != nil, l1.Ifindex, l.Ifindex, l1.Address, l.Address)
		}
		if string(attrs.BackendData) != string(attrs1.BackendData) {
			t.Errorf("restart changed the advertised data: %s -> %s", attrs1.BackendData, attrs.BackendData)
		}
		// The reused device keeps its address and state.
		if got := n.addrs4("flannel.1"); !slices.Equal(got, []string{"10.244.1.0/32"}) {
			t.Errorf("addresses after restart = %v", got)
		}
		if b.Base().OwnedLinks[0] != l1.Ifindex {
			t.Errorf("Base() after restart = %v, want [%d]", b.Base(), l1.Ifindex)
		}
	}

	// A stale advertised MAC does not replace a compatible device: the
	// device's MAC is the one advertised.
	attrs := n.setup(n.newBackend(`{"Type":"vxlan"}`), prevAttrs(1, "0a:00:00:00:00:01"))
	if l := n.checkDevice("flannel.1", 1, attrs); l.Ifindex != l1.Ifindex || l.Address != l1.Address {
		t.Errorf("a different previous MAC replaced a compatible device")
	}

	// A wrong MTU is fixed in place.
	n.ip("link", "set", "flannel.1", "mtu", "1300")
	attrs = n.setup(n.newBackend(`{"Type":"vxlan"}`), nil)
	if l := n.checkDevice("flannel.1", 1, attrs); l.Ifindex != l1.Ifindex {
		t.Errorf("an MTU change replaced the device")
	}
}

func TestSetupRecreatesWithPreviousMAC(t *testing.T) {
	n := newTestNS(t)
	const mac = "0a:58:0a:f4:01:00"
	// After a reboot the device is gone; the MAC comes from the Node's
	// backend-data so peers need not relearn it.
	attrs := n.setup(n.newBackend(`{"Type":"vxlan"}`), prevAttrs(1, mac))
	if l := n.checkDevice("flannel.1", 1, attrs); l.Address != mac {
		t.Errorf("MAC = %s, want the previous %s", l.Address, mac)
	}

	n.ip("link", "del", "flannel.1")
	attrs = n.setup(n.newBackend(`{"Type":"vxlan"}`), prevAttrs(1, mac))
	if l := n.checkDevice("flannel.1", 1, attrs); l.Address != mac {
		t.Errorf("MAC after deleting the device = %s, want the previous %s", l.Address, mac)
	}

	// A previous MAC of another VNI or an unusable one is not reused.
	for _, prev := range []*subnet.LeaseAttrs{prevAttrs(2, "0a:58:0a:f4:01:02"), prevAttrs(1, "01:00:5e:00:00:01")} {
		n.ip("link", "del", "flannel.1")
		attrs = n.setup(n.newBackend(`{"Type":"vxlan"}`), prev)
		if l := n.checkDevice("flannel.1", 1, attrs); l.Address == "0a:58:0a:f4:01:02" || l.Address == "01:00:5e:00:00:01" {
			t.Errorf("MAC %s taken from unusable previous data %s", l.Address, prev.BackendData)
		}
	}
}

func TestSetupReplacesIncompatibleDevice(t *testing.T) {
	tests := []struct {
		name   string
		create []string // ip link add arguments for the stale device
	}{
		{"other VNI", []string{"flannel.1", "type", "vxlan", "id", "2", "local", vethAddr, "dev", "veth0", "dstport", "8472", "nolearning"}},
		{"other local address", []string{"flannel.1", "type", "vxlan", "id", "1", "local", otherAddr, "dev", "veth0", "dstport", "8472", "nolearning"}},
		{"no underlay device", []string{"flannel.1", "type", "vxlan", "id", "1", "local", vethAddr, "dstport", "8472", "nolearning"}},
		{"other port", []string{"flannel.1", "type", "vxlan", "id", "1", "local", vethAddr, "dev", "veth0", "dstport", "4789", "nolearning"}},
		{"learning on", []string{"flannel.1", "type", "vxlan", "id", "1", "local", vethAddr, "dev", "veth0", "dstport", "8472", "learning"}},
		{"not vxlan", []string{"flannel.1", "type", "veth", "peer", "name", "flannel-peer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newTestNS(t)
			n.ip(append([]string{"link", "add"}, tt.create...)...)
			n.ip("addr", "add", "10.9.9.9/24", "dev", "flannel.1")
			stale := n.link("flannel.1")

			b := n.newBackend(`{"Type":"vxlan"}`)
			attrs := n.setup(b, nil)
			l := n.checkDevice("flannel.1", 1, attrs)
			if l.Ifindex == stale.Ifindex {
				t.Errorf("the incompatible device was kept (ifindex %d)", l.Ifindex)
			}
			// With no previous MAC the stale device's is kept, so peers
			// that knew it need not relearn.
			if l.Address != stale.Address {
				t.Errorf("MAC = %s, want the replaced device's %s", l.Address, stale.Address)
			}
			if b.Base().OwnedLinks[0] != l.Ifindex {
				t.Errorf("Base() = %v, want [%d]", b.Base(), l.Ifindex)
			}
			if err := b.Configure(context.Background(), ownLease); err != nil {
				t.Fatal(err)
			}
			if got := n.addrs4("flannel.1"); !slices.Equal(got, []string{"10.244.1.0/32"}) {
				t.Errorf("addresses = %v, want [10.244.1.0/32]", got)
			}
		})
	}
}

func TestSetupReplacesIncompatibleDeviceWithPreviousMAC(t *testing.T) {
	n := newTestNS(t)
	n.ip("link", "add", "flannel.1", "type", "vxlan", "id", "2", "local", vethAddr, "dev", "veth0", "dstport", "8472")
	const mac = "0a:58:0a:f4:01:00"
	attrs := n.setup(n.newBackend(`{"Type":"vxlan"}`), prevAttrs(1, mac))
	if l := n.checkDevice("flannel.1", 1, attrs); l.Address != mac {
		t.Errorf("MAC = %s, want the previously advertised %s", l.Address, mac)
	}
}

func TestConfigureReplacesStaleAddress(t *testing.T) {
	n := newTestNS(t)
	b := n.newBackend(`{"Type":"vxlan"}`)
	n.setup(b, nil)
	// Left over from a previous lease, and someone else's.
	n.ip("addr", "add", "10.244.7.0/32", "dev", "flannel.1")
	n.ip("addr", "add", "10.1.2.3/24", "dev", "flannel.1")
	n.ip("addr", "add", "fd00::1/64", "dev", "flannel.1", "nodad")
	if err := b.Configure(context.Background(), ownLease); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	if got := n.addrs4("flannel.1"); !slices.Equal(got, []string{"10.244.1.0/32"}) {
		t.Errorf("addresses = %v, want only 10.244.1.0/32", got)
	}
	// The node's lease changed (a new podCIDR): the old address goes.
	moved := subnet.Lease{Name: "n1", Subnet: netip.MustParsePrefix("10.244.5.0/24")}
	if err := b.Configure(context.Background(), moved); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	if got := n.addrs4("flannel.1"); !slices.Equal(got, []string{"10.244.5.0/32"}) {
		t.Errorf("addresses after a new lease = %v, want only 10.244.5.0/32", got)
	}
	// The same address with another prefix length is replaced too.
	n.ip("addr", "flush", "dev", "flannel.1")
	n.ip("addr", "add", "10.244.5.0/24", "dev", "flannel.1")
	if err := b.Configure(context.Background(), moved); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	if got := n.addrs4("flannel.1"); !slices.Equal(got, []string{"10.244.5.0/32"}) {
		t.Errorf("addresses = %v, want only 10.244.5.0/32", got)
	}
}

func TestConfigureDeviceGone(t *testing.T) {
	n := newTestNS(t)
	b := n.newBackend(`{"Type":"vxlan"}`)
	n.setup(b, nil)
	n.ip("link", "del", "flannel.1")
	err := b.Configure(context.Background(), ownLease)
	if err == nil || !strings.Contains(err.Error(), "flannel.1") {
		t.Errorf("Configure with the device gone: %v, want an error naming flannel.1", err)
	}
}

func TestSetupReusesUpstreamDevice(t *testing.T) {
	// Upstream flanneld creates flannel.1 without a port (the kernel then
	// uses 8472) and with its MTU: a node migrating to this flanneld keeps
	// the device and its MAC.
	n := newTestNS(t)
	n.ip("link", "add", "flannel.1", "mtu", fmt.Sprint(vethMTU-50), "type", "vxlan", "id", "1", "local", vethAddr, "dev", "veth0", "nolearning")
	old := n.link("flannel.1")
	attrs := n.setup(n.newBackend(`{"Type":"vxlan"}`), nil)
	if l := n.checkDevice("flannel.1", 1, attrs); l.Ifindex != old.Ifindex || l.Address != old.Address {
		t.Errorf("upstream's device was replaced: ifindex %d -> %d, MAC %s -> %s", old.Ifindex, l.Ifindex, old.Address, l.Address)
	}
}
