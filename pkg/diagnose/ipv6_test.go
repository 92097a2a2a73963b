package diagnose

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
)

const (
	vtep6Index       = 6 // flannel-v6.1
	device6Name      = "flannel-v6.1"
	dualStackNetConf = `{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`
	ipv6OnlyNetConf  = `{"EnableIPv4":false,"IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`
)

// fakeDualBackend is a vxlan-like backend with a device per enabled
// family, flannel.1 on vtepIndex and flannel-v6.1 on vtep6Index, and per
// peer and family both sides have a neighbour, an FDB entry and an onlink
// route on the device of the family. Like vxlan on a 1500-byte underlay,
// its MTU (the pods') is 1430 with IPv6 (flannel-v6.1's; flannel.1 has
// 1450), else 1450.
type fakeDualBackend struct{ ipv4, ipv6 bool }

func (fakeDualBackend) Setup(context.Context, *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	return subnet.LeaseAttrs{}, errors.New("diagnose must not set anything up")
}
func (fakeDualBackend) Configure(context.Context, subnet.Lease) error {
	return errors.New("diagnose must not configure anything")
}
func (fakeDualBackend) Attach() error { return nil }
func (b fakeDualBackend) MTU() int {
	if b.ipv6 {
		return 1430
	}
	return 1450
}
func (b fakeDualBackend) Base() network.State {
	var st network.State
	if b.ipv4 {
		st.OwnedLinks = append(st.OwnedLinks, vtepIndex)
	}
	if b.ipv6 {
		st.OwnedLinks = append(st.OwnedLinks, vtep6Index)
	}
	return st
}
func (b fakeDualBackend) PeerState(p subnet.Lease) (network.State, error) {
	fams, err := backend.PeerFamilies(p, b.ipv4, b.ipv6)
	if err != nil {
		return network.State{}, err
	}
	var st network.State
	for _, f := range fams {
		var d struct{ VtepMAC string }
		if err := json.Unmarshal(f.BackendData, &d); err != nil {
			return network.State{}, fmt.Errorf("%w: peer %s has malformed backend data %q", backend.ErrPeerData, p.Name, f.BackendData)
		}
		mac, err := kernel.ParseMAC(d.VtepMAC)
		if err != nil {
			return network.State{}, fmt.Errorf("%w: peer %s has a bad VtepMAC %q", backend.ErrPeerData, p.Name, d.VtepMAC)
		}
		link := vtepIndex
		if f.IPv6 {
			link = vtep6Index
		}
		st.Merge(vtepState(link, f.Subnet, f.PublicIP, mac))
	}
	return st, nil
}

// dualLease is the lease of lab-like node i: fd00:10:244:<i>::/64 at
// fd00:100::<10+i> and, with ipv4, 10.244.<i>.0/24 at 192.168.100.<10+i>.
func dualLease(i int, ipv4 bool) subnet.Lease {
	l := subnet.Lease{Name: fmt.Sprintf("n%d", i), IPv6Subnet: netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", i)),
		Attrs: subnet.LeaseAttrs{BackendType: "vxlan", PublicIPv6: netip.MustParseAddr(fmt.Sprintf("fd00:100::%d", 10+i)),
			BackendV6Data: vxlanData(fmt.Sprintf("0a:00:00:00:06:%02d", i))}}
	if ipv4 {
		l.Subnet = netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))
		l.Attrs.PublicIP = netip.MustParseAddr(fmt.Sprintf("192.168.100.%d", 10+i))
		l.Attrs.BackendData = vxlanData(fmt.Sprintf("0a:00:00:00:04:%02d", i))
	}
	return l
}

// ipv6Inputs is a healthy dual-stack node (ipv4) or IPv6-only node n1,
// with peers n2 and n3 programmed in every family, both devices as the
// backend makes them, and the firewall rules of each family.
func ipv6Inputs(t *testing.T, ipv4 bool) (Inputs, *kernel.Fake) {
	t.Helper()
	conf := ipv6OnlyNetConf
	if ipv4 {
		conf = dualStackNetConf
	}
	cfg, err := subnet.ParseConfig([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	be := fakeDualBackend{ipv4: ipv4, ipv6: true}
	own := dualLease(1, ipv4)
	peers := []subnet.Lease{dualLease(2, ipv4), dualLease(3, ipv4)}
	k := kernel.NewFake()
	desired := be.Base()
	for _, p := range peers {
		st, err := be.PeerState(p)
		if err != nil {
			t.Fatal(err)
		}
		desired.Merge(st)
	}
	rec := network.NewReconciler(k)
	rec.SetOwnedLinks(desired.OwnedLinks)
	rec.Update("", network.State{}, desired)
	if _, err := rec.Apply(true); err != nil {
		t.Fatal(err)
	}

	ext := &ip.ExternalInterface{Name: "eth0", Index: extIndex, MTU: 1500,
		IfaceV6Addr: own.Attrs.PublicIPv6, ExtV6Addr: own.Attrs.PublicIPv6}
	segments := []netip.Prefix{netip.MustParsePrefix("fd00:100::11/64")}
	var devices []Device
	firewall := network.RuleKeepers{}
	addRules := func(clusterNetwork, sn netip.Prefix) {
		rules := network.RuleSet{FirewallConfig: network.FirewallConfig{Network: clusterNetwork, Lease: sn, MasqFullyRandom: true},
			Masq: true, Forward: true}.IPTablesRules()
		firewall = append(firewall, network.NewFirewall(newIPTables(rules), rules))
	}
	if ipv4 {
		ext.IfaceAddr, ext.ExtAddr = own.Attrs.PublicIP, own.Attrs.PublicIP
		segments = append(segments, netip.MustParsePrefix("192.168.100.11/24"))
		devices = append(devices, Device{Name: deviceName, Index: vtepIndex, Type: "vxlan", VNI: 1, MAC: "0a:00:00:00:04:01",
			MTU: 1450, Up: true, Addresses: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/32")}, Local: own.Attrs.PublicIP})
		addRules(cfg.Network, own.Subnet)
	}
	devices = append(devices, Device{Name: device6Name, Index: vtep6Index, Type: "vxlan", VNI: 1, MAC: "0a:00:00:00:06:01",
		MTU: 1430, Up: true, Addresses: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/128")}, Local: own.Attrs.PublicIPv6})
	addRules(cfg.IPv6Network, own.IPv6Subnet)

	env := subnet.NewEnv(cfg, &own, be.MTU(), true)
	onDisk, err := subnet.FormatEnv(env)
	if err != nil {
		t.Fatal(err)
	}
	return Inputs{
		Node: "n1", Config: cfg, ExtIface: ext, Own: own, Local: own.Attrs, Backend: be,
		Segments: segments, Devices: devices, Peers: peers, Kernel: k, LinkName: linkName,
		FirewallMode: "iptables", Firewall: firewall,
		Env: EnvInput{Path: "/run/flannel/subnet.env", Expected: env, OnDisk: onDisk},
	}, k
}

// TestBuildIPv6Clean: a healthy dual-stack node and a healthy IPv6-only
// node have no problems: both devices with their own family's address and
// MTU, the IPv6 lease attributes, every peer's entries in every family,
// and the probes of every family answered.
func TestBuildIPv6Clean(t *testing.T) {
	for _, c := range []struct {
		name    string
		ipv4    bool
		golden  string
		probed  []string
		devices map[string][2]string // name -> want address, MTU
	}{
		{"dual stack", true, "dualstack", []string{"10.244.2.0", "10.244.3.0", "fd00:10:244:2::", "fd00:10:244:3::"},
			map[string][2]string{deviceName: {"10.244.1.0/32", "1450"}, device6Name: {"fd00:10:244:1::/128", "1430"}}},
		{"IPv6 only", false, "ipv6only", []string{"fd00:10:244:2::", "fd00:10:244:3::"},
			map[string][2]string{device6Name: {"fd00:10:244:1::/128", "1430"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			in, k := ipv6Inputs(t, c.ipv4)
			probed := make(chan netip.Addr, 10)
			in.Probe = func(a netip.Addr) error {
				probed <- a
				return nil
			}
			k.ResetCalls()
			r, err := Build(in)
			if err != nil {
				t.Fatal(err)
			}
			if !r.OK || len(r.Problems) != 0 {
				t.Errorf("healthy node reported problems: %q", r.Problems)
			}
			if len(k.Calls) != 0 {
				t.Errorf("diagnose changed the kernel: %v", k.Calls)
			}
			close(probed)
			var got []string
			for a := range probed {
				got = append(got, a.String())
			}
			if slices.Sort(got); !slices.Equal(got, c.probed) {
				t.Errorf("probed %v, want %v", got, c.probed)
			}
			if len(r.Devices) != len(c.devices) {
				t.Errorf("devices %+v, want %v", r.Devices, c.devices)
			}
			for _, d := range r.Devices {
				if want := c.devices[d.Name]; d.WantAddress != want[0] || fmt.Sprint(d.WantMTU) != want[1] || d.Status != StatusOK {
					t.Errorf("device %+v, want address %s, MTU %s, ok", d, want[0], want[1])
				}
			}
			l := r.Lease
			if l.IPv6SubnetStatus != StatusOK || l.PublicIPv6 == nil || l.PublicIPv6.Status != StatusOK ||
				l.BackendV6Data == nil || l.BackendV6Data.Status != StatusOK || (l.SubnetStatus == StatusOK) != c.ipv4 {
				t.Errorf("lease %+v", l)
			}
			for _, p := range r.Peers {
				if n := len(p.Entries); n != 3*len(c.devices) {
					t.Errorf("peer %s has %d entries, want 3 per family", p.Name, n)
				}
			}
			text, js := render(t, r)
			checkGolden(t, c.golden+".txt", text)
			checkGolden(t, c.golden+".json", js)
		})
	}
}

// TestBuildIPv6Problems breaks one thing of the IPv6 family at a time on a
// dual-stack and on an IPv6-only node, and checks that exactly it is
// reported.
func TestBuildIPv6Problems(t *testing.T) {
	for _, c := range []struct {
		name  string
		ipv4  bool // dual stack, else IPv6-only
		spoil func(in *Inputs, k *kernel.Fake)
		want  []string
	}{
		{"wrong IPv6 device address", true, func(in *Inputs, _ *kernel.Fake) {
			in.Devices[1].Addresses = []netip.Prefix{netip.MustParsePrefix("fd00:10:244:9::/128")}
		}, []string{"device flannel-v6.1: addresses [fd00:10:244:9::/128], want fd00:10:244:1::/128"}},
		{"IPv6 device address missing, IPv4 one added", false, func(in *Inputs, _ *kernel.Fake) {
			in.Devices[0].Addresses = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/32")}
		}, []string{"device flannel-v6.1: addresses [10.244.1.0/32], want fd00:10:244:1::/128"}},
		{"IPv4 device with the IPv6 device's MTU", true, func(in *Inputs, _ *kernel.Fake) {
			in.Devices[0].MTU = 1430
		}, []string{"device flannel.1: MTU 1430, want 1450"}},
		{"missing IPv6 peer route", true, deleteRoute("fd00:10:244:2::/64"),
			[]string{"peer n2: route fd00:10:244:2::/64 via fd00:10:244:2:: dev flannel-v6.1 onlink: missing"}},
		{"missing IPv6 peer route, IPv6 only", false, deleteRoute("fd00:10:244:3::/64"),
			[]string{"peer n3: route fd00:10:244:3::/64 via fd00:10:244:3:: dev flannel-v6.1 onlink: missing"}},
		{"public-ipv6 differs", true, func(in *Inputs, _ *kernel.Fake) {
			in.Local.PublicIPv6 = netip.MustParseAddr("fd00:100::99")
		}, []string{"lease: public IPv6 advertised fd00:100::11, this node has fd00:100::99"}},
		{"public-ipv6 differs, IPv6 only", false, func(in *Inputs, _ *kernel.Fake) {
			in.Own.Attrs.PublicIPv6 = netip.MustParseAddr("fd00:100::99")
		}, []string{"lease: public IPv6 advertised fd00:100::99, this node has fd00:100::11"}},
		{"backend-v6-data differs", true, func(in *Inputs, _ *kernel.Fake) {
			in.Local.BackendV6Data = vxlanData("0a:00:00:00:06:99")
		}, []string{`lease: backend v6 data advertised {"VNI":1,"VtepMAC":"0a:00:00:00:06:01"}, this node has {"VNI":1,"VtepMAC":"0a:00:00:00:06:99"}`}},
		{"IPv6 podCIDR outside IPv6Network", false, func(in *Inputs, _ *kernel.Fake) {
			in.Own.IPv6Subnet = netip.MustParsePrefix("fd00:99::/64")
			in.Devices[0].Addresses = []netip.Prefix{netip.MustParsePrefix("fd00:99::/128")}
		}, []string{"lease: IPv6 podCIDR fd00:99::/64: fd00:99::/64 is outside IPv6Network fd00:10:244::/56 (flanneld refuses to start)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			in, k := ipv6Inputs(t, c.ipv4)
			c.spoil(&in, k)
			r, err := Build(in)
			if err != nil {
				t.Fatal(err)
			}
			if r.OK || !slices.Equal(r.Problems, c.want) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(r.Problems, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

// deleteRoute deletes the route to dst from the kernel.
func deleteRoute(dst string) func(*Inputs, *kernel.Fake) {
	return func(_ *Inputs, k *kernel.Fake) {
		key := kernel.RouteKey{Dst: netip.MustParsePrefix(dst)}
		if _, ok := k.Routes[key]; !ok {
			panic("no route to " + dst)
		}
		delete(k.Routes, key)
	}
}
