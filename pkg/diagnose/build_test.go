package diagnose

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/backend/hostgw"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/subnet"
	"sigs.k8s.io/knftables"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const (
	extIndex   = 2 // eth0
	vtepIndex  = 5 // flannel.1
	ownMAC     = "0a:00:00:00:00:01"
	netConf    = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	deviceName = "flannel.1"
)

// fakeBackend is a vxlan-like backend on link vtepIndex: per peer a
// neighbour and an FDB entry for the VtepMAC of its backend data, and an
// onlink route. It rejects peers whose data is not such a document.
type fakeBackend struct{}

func (fakeBackend) Setup(context.Context, *subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	return subnet.LeaseAttrs{}, errors.New("diagnose must not set anything up")
}
func (fakeBackend) Configure(context.Context, subnet.Lease) error {
	return errors.New("diagnose must not configure anything")
}
func (fakeBackend) Attach() error       { return nil }
func (fakeBackend) MTU() int            { return 1450 }
func (fakeBackend) Base() network.State { return network.State{OwnedLinks: []int{vtepIndex}} }
func (fakeBackend) PeerState(p subnet.Lease) (network.State, error) {
	var d struct{ VtepMAC string }
	if err := json.Unmarshal(p.Attrs.BackendData, &d); err != nil {
		return network.State{}, fmt.Errorf("%w: peer %s has malformed backend-data %q", backend.ErrPeerData, p.Name, p.Attrs.BackendData)
	}
	mac, err := kernel.ParseMAC(d.VtepMAC)
	if err != nil {
		return network.State{}, fmt.Errorf("%w: peer %s has a bad VtepMAC %q", backend.ErrPeerData, p.Name, d.VtepMAC)
	}
	return vtepState(vtepIndex, p.Subnet, p.Attrs.PublicIP, mac), nil
}

// vtepState is what vxlan programs for a peer's subnet sn on the device
// link: an onlink route, a neighbour and an FDB entry.
func vtepState(link int, sn netip.Prefix, publicIP netip.Addr, mac kernel.MAC) network.State {
	gw := sn.Masked().Addr()
	return network.State{
		Routes: []kernel.Route{{Dst: sn.Masked(), Gw: gw, LinkIndex: link, Onlink: true}},
		Neighs: []kernel.Neigh{{LinkIndex: link, IP: gw, MAC: mac}},
		FDBs:   []kernel.FDB{{LinkIndex: link, MAC: mac, Dst: publicIP}},
	}
}

func vxlanData(mac string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac))
}

func lease(name, sn, publicIP, mac string) subnet.Lease {
	return subnet.Lease{Name: name, Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{
		PublicIP: netip.MustParseAddr(publicIP), BackendType: "vxlan", BackendData: vxlanData(mac)}}
}

// readOnlyIPTables holds rules in iptables -S form and fails every write.
type readOnlyIPTables struct {
	chains map[string][]string // "table/chain" -> "-A chain ..." lines
}

func newIPTables(rules []network.Rule) *readOnlyIPTables {
	f := &readOnlyIPTables{chains: map[string][]string{}}
	for _, r := range rules {
		id := r.Table + "/" + r.Chain
		f.chains[id] = append(f.chains[id], strings.TrimPrefix(r.String(), "-t "+r.Table+" "))
	}
	return f
}

func (f *readOnlyIPTables) ChainExists(table, chain string) (bool, error) {
	_, ok := f.chains[table+"/"+chain]
	return ok, nil
}
func (f *readOnlyIPTables) List(table, chain string) ([]string, error) {
	return append([]string{"-N " + chain}, f.chains[table+"/"+chain]...), nil
}
func (f *readOnlyIPTables) Exists(table, chain string, spec ...string) (bool, error) {
	line := strings.TrimPrefix(network.Rule{Table: table, Chain: chain, Spec: spec}.String(), "-t "+table+" ")
	return slices.Contains(f.chains[table+"/"+chain], line), nil
}
func (f *readOnlyIPTables) NewChain(string, string) error { return errors.New("read-only") }
func (f *readOnlyIPTables) Append(string, string, ...string) error {
	return errors.New("read-only")
}
func (f *readOnlyIPTables) Insert(string, string, int, ...string) error {
	return errors.New("read-only")
}
func (f *readOnlyIPTables) DeleteById(string, string, int) error { return errors.New("read-only") }
func (f *readOnlyIPTables) Delete(string, string, ...string) error {
	return errors.New("read-only")
}
func (f *readOnlyIPTables) ClearAndDeleteChain(string, string) error { return errors.New("read-only") }

func linkName(idx int) string {
	switch idx {
	case extIndex:
		return "eth0"
	case vtepIndex:
		return deviceName
	case vtep6Index:
		return device6Name
	}
	return fmt.Sprint(idx)
}

// cleanInputs is a node on which everything is as flanneld makes it: own
// subnet 10.244.1.0/24, peers n2 and n3 programmed.
func cleanInputs(t *testing.T) (Inputs, *kernel.Fake) {
	t.Helper()
	cfg, err := subnet.ParseConfig([]byte(netConf))
	if err != nil {
		t.Fatal(err)
	}
	own := lease("n1", "10.244.1.0/24", "192.168.100.11", ownMAC)
	peers := []subnet.Lease{
		lease("n2", "10.244.2.0/24", "192.168.100.12", "0a:00:00:00:00:02"),
		lease("n3", "10.244.3.0/24", "192.168.100.13", "0a:00:00:00:00:03"),
	}
	k := kernel.NewFake()
	// What the daemon programs, with a foreign route it must not report.
	rec := network.NewReconciler(k)
	desired := fakeBackend{}.Base()
	for _, p := range peers {
		st, err := fakeBackend{}.PeerState(p)
		if err != nil {
			t.Fatal(err)
		}
		desired.Merge(st)
	}
	rec.SetOwnedLinks(desired.OwnedLinks)
	rec.Update("", network.State{}, desired)
	if _, err := rec.Apply(true); err != nil {
		t.Fatal(err)
	}
	foreign := kernel.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("192.168.100.1"), LinkIndex: extIndex, Protocol: 3}
	k.Routes[foreign.Key()] = foreign

	rules := cleanRuleSet(cfg, own).IPTablesRules()
	env := subnet.NewEnv(cfg, &own, 1450, true)
	onDisk, err := subnet.FormatEnv(env)
	if err != nil {
		t.Fatal(err)
	}
	return Inputs{
		Node:     "n1",
		Config:   cfg,
		ExtIface: &ip.ExternalInterface{Name: "eth0", Index: extIndex, MTU: 1500, IfaceAddr: own.Attrs.PublicIP, ExtAddr: own.Attrs.PublicIP},
		Own:      own,
		Local:    own.Attrs,
		Backend:  fakeBackend{},
		Devices: []Device{{Name: deviceName, Index: vtepIndex, Type: "vxlan", VNI: 1, MAC: ownMAC, MTU: 1450, Up: true,
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/32")}}},
		Peers:        peers,
		Kernel:       k,
		LinkName:     linkName,
		FirewallMode: "iptables",
		Firewall:     network.NewFirewall(newIPTables(rules), rules),
		Env:          EnvInput{Path: "/run/flannel/subnet.env", Expected: env, OnDisk: onDisk},
	}, k
}

// cleanRuleSet is the rule set of the clean node: masquerade (fully random)
// and forward rules.
func cleanRuleSet(cfg *subnet.Config, own subnet.Lease) network.RuleSet {
	return network.RuleSet{
		FirewallConfig: network.FirewallConfig{Network: cfg.Network, Lease: own.Subnet, MasqFullyRandom: true},
		Masq:           true, Forward: true,
	}
}

// checkGolden compares got with testdata/name, or rewrites it with -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it); got:\n%s\nwant:\n%s", path, got, want)
	}
}

func render(t *testing.T, r Report) (text, js []byte) {
	t.Helper()
	var tb, jb bytes.Buffer
	if err := WriteText(&tb, r); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(&jb, r); err != nil {
		t.Fatal(err)
	}
	return tb.Bytes(), jb.Bytes()
}

func TestBuildClean(t *testing.T) {
	in, k := cleanInputs(t)
	in.Probe = func(netip.Addr) error { return nil }
	k.ResetCalls()
	r, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK || len(r.Problems) != 0 {
		t.Errorf("clean node reported problems: %q", r.Problems)
	}
	if len(k.Calls) != 0 {
		t.Errorf("diagnose changed the kernel: %v", k.Calls)
	}
	text, js := render(t, r)
	checkGolden(t, "clean.txt", text)
	checkGolden(t, "clean.json", js)
}

// TestBuildProblems breaks one thing of each kind and checks that each
// is reported, and nothing else.
func TestBuildProblems(t *testing.T) {
	in, k := cleanInputs(t)
	own := in.Own
	// The device's MAC is not the advertised one, and it is down.
	in.Local.BackendData = vxlanData("0a:00:00:00:00:99")
	in.Devices[0].MAC, in.Devices[0].Up = "0a:00:00:00:00:99", false
	// n2's route was deleted; n3's neighbour points to another MAC.
	delete(k.Routes, kernel.RouteKey{Dst: netip.MustParsePrefix("10.244.2.0/24")})
	n := kernel.Neigh{LinkIndex: vtepIndex, IP: netip.MustParseAddr("10.244.3.0"), MAC: kernel.MAC{0x0a, 0, 0, 0, 0, 0x77}}
	k.Neighs[n.Key()] = n
	// A node deleted while flanneld was down left its entries.
	staleMAC := kernel.MAC{0x0a, 0, 0, 0, 0, 0x09}
	for _, rt := range []kernel.Route{{Dst: netip.MustParsePrefix("10.244.9.0/24"), Gw: netip.MustParseAddr("10.244.9.0"), LinkIndex: vtepIndex, Onlink: true, Protocol: kernel.RouteProtocol}} {
		k.Routes[rt.Key()] = rt
	}
	f := kernel.FDB{LinkIndex: vtepIndex, MAC: staleMAC, Dst: netip.MustParseAddr("192.168.100.19")}
	k.FDBs[f.Key()] = f
	// Peers flanneld skips: bad data, overlapping this node, unreadable Node.
	in.Peers = append(in.Peers,
		subnet.Lease{Name: "bad4", Subnet: netip.MustParsePrefix("10.244.4.0/24"), Attrs: subnet.LeaseAttrs{
			PublicIP: netip.MustParseAddr("192.168.100.14"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,`)}},
		lease("over5", "10.244.1.0/25", "192.168.100.15", "0a:00:00:00:00:05"),
	)
	in.Skipped = map[string]error{"nocidr6": errors.New("node nocidr6 has no podCIDR")}
	// A forward rule was deleted; subnet.env has another MTU.
	fw := newIPTables(cleanRuleSet(in.Config, own).IPTablesRules())
	in.Firewall = network.NewFirewall(fw, cleanRuleSet(in.Config, own).IPTablesRules())
	fw.chains["filter/FLANNEL-FWD"] = fw.chains["filter/FLANNEL-FWD"][:1]
	in.Env.OnDisk = bytes.Replace(in.Env.OnDisk, []byte("FLANNEL_MTU=1450"), []byte("FLANNEL_MTU=1400"), 1)
	// n3 does not answer.
	in.Probe = func(a netip.Addr) error {
		if a == netip.MustParseAddr("10.244.3.0") {
			return errors.New("no reply within 1s")
		}
		return nil
	}
	k.ResetCalls()

	r, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK {
		t.Error("report is OK")
	}
	if len(k.Calls) != 0 {
		t.Errorf("diagnose changed the kernel: %v", k.Calls)
	}
	if r.Lease.Subnet != own.Subnet.String() || r.Lease.BackendData.Status != StatusDiffers {
		t.Errorf("lease %+v", r.Lease)
	}
	text, js := render(t, r)
	checkGolden(t, "problems.txt", text)
	checkGolden(t, "problems.json", js)

	// The JSON reads back into the documented struct.
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if back.Format != FormatVersion || back.Peers[0].Entries[0].Status != StatusMissing || len(back.Skipped) != 3 {
		t.Errorf("JSON round trip: %+v", back)
	}
}

// TestBuildWithoutDevice: flannel.1 is gone (deleted, or flanneld never
// ran), subnet.env too.
// TestBuildNFTables is the clean node in nftables mode: the rules are
// read from the nftables tables; a deleted rule is missing and its chain
// differs, and iptables rules left from iptables mode are problems too.
func TestBuildNFTables(t *testing.T) {
	in, _ := cleanInputs(t)
	nft := network.NewFakeNFTables()
	fw := network.NewNFTFirewall(nft, []network.NFTTable{cleanRuleSet(in.Config, in.Own).NFTTable()})
	if _, err := fw.Ensure(); err != nil {
		t.Fatal(err)
	}
	in.FirewallMode, in.Firewall = "nftables", fw

	r, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK || r.Firewall.Mode != "nftables" || len(r.Firewall.Rules) != 8 {
		t.Fatalf("clean nftables node: OK %v, firewall %+v, problems %q", r.OK, r.Firewall, r.Problems)
	}
	for _, rule := range r.Firewall.Rules {
		if rule.Status != StatusOK || !strings.HasPrefix(rule.Rule, "ip flannel-ipv4 ") {
			t.Errorf("rule %+v", rule)
		}
	}

	// Someone deleted the forward rule for traffic to the network, and
	// iptables mode left its masquerade chain.
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Rule{Family: knftables.IPv4Family, Table: network.NFTTableIPv4, Chain: network.NFTForwardChain,
		Handle: nft.Tables[knftables.IPv4Family][network.NFTTableIPv4].Chains[network.NFTForwardChain].Rules[1].Handle})
	if err := nft.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	nft.LastTransaction = nil
	in.OtherMode = []string{"iptables chain nat/FLANNEL-POSTRTG"}
	r, err = Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if nft.LastTransaction != nil {
		t.Errorf("diagnose changed the tables:\n%s", nft.LastTransaction)
	}
	want := []string{
		"firewall: left over from the other firewall mode (flanneld removes it when it starts in nftables mode): iptables chain nat/FLANNEL-POSTRTG",
		"firewall: ip flannel-ipv4/forward: 1 rule missing",
	}
	if r.OK || !slices.Equal(r.Problems, want) {
		t.Errorf("problems %q, want %q", r.Problems, want)
	}
	last := r.Firewall.Rules[len(r.Firewall.Rules)-1]
	if last.Status != StatusMissing || last.Rule != `ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept comment "flanneld forward"` {
		t.Errorf("last rule %+v, want the deleted forward rule missing", last)
	}
	text, _ := render(t, r)
	checkGolden(t, "nftables.txt", text)

	// A failure to look for the other mode's rules is an error of the
	// diagnosis, not a difference.
	in.OtherMode, in.OtherModeErr = nil, errors.New("ip6tables: permission denied")
	if _, err := Build(in); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Build error = %v, want the error looking for the other mode", err)
	}
}

func TestBuildWithoutDevice(t *testing.T) {
	in, k := cleanInputs(t)
	for key, n := range k.Neighs {
		if n.LinkIndex == vtepIndex {
			delete(k.Neighs, key)
		}
	}
	for key, f := range k.FDBs {
		if f.LinkIndex == vtepIndex {
			delete(k.FDBs, key)
		}
	}
	for key, rt := range k.Routes {
		if rt.LinkIndex == vtepIndex {
			delete(k.Routes, key)
		}
	}
	in.AttachErr = errors.New("vxlan device flannel.1: Link not found")
	in.Devices, in.Local.BackendData = nil, nil
	in.Env.OnDisk, in.Env.ReadErr = nil, fmt.Errorf("open: %w", fs.ErrNotExist)
	r, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := render(t, r)
	checkGolden(t, "nodevice.txt", text)
	for _, want := range []string{"device: vxlan device flannel.1: Link not found", "subnet.env: /run/flannel/subnet.env does not exist",
		"peer n2: route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink: missing"} {
		if !slices.Contains(r.Problems, want) {
			t.Errorf("problems lack %q:\n%s", want, strings.Join(r.Problems, "\n"))
		}
	}
	if len(r.Stale) != 0 {
		t.Errorf("stale entries without a device: %v", r.Stale)
	}
}

// sameSegment says that addresses in 192.168.100.0/24 are on eth0's
// segment and everything else is behind the gateway 192.168.100.1.
type sameSegment struct{}

func (sameSegment) Direct(a netip.Addr, linkIndex int) (bool, netip.Addr, error) {
	if netip.MustParsePrefix("192.168.100.0/24").Contains(a) {
		return linkIndex == extIndex, netip.Addr{}, nil
	}
	return false, netip.MustParseAddr("192.168.100.1"), nil
}

// TestBuildHostGW uses the real host-gw backend: no device, one route per
// peer through its public IP, a peer behind a router skipped, and the probe
// aimed at the public IP.
func TestBuildHostGW(t *testing.T) {
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	ext := &ip.ExternalInterface{Name: "eth0", Index: extIndex, MTU: 1500,
		IfaceAddr: netip.MustParseAddr("192.168.100.11"), ExtAddr: netip.MustParseAddr("192.168.100.11")}
	be, err := hostgw.New(backend.Params{Config: cfg, ExtIface: ext, Reach: sameSegment{}})
	if err != nil {
		t.Fatal(err)
	}
	hostGW := func(name, sn, publicIP string) subnet.Lease {
		return subnet.Lease{Name: name, Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{
			PublicIP: netip.MustParseAddr(publicIP), BackendType: hostgw.Type, BackendData: json.RawMessage("null")}}
	}
	own := hostGW("n1", "10.244.1.0/24", "192.168.100.11")
	k := kernel.NewFake()
	rt := kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gw: netip.MustParseAddr("192.168.100.12"), LinkIndex: extIndex, Protocol: kernel.RouteProtocol}
	k.Routes[rt.Key()] = rt
	env := subnet.NewEnv(cfg, &own, be.MTU(), false)
	onDisk, err := subnet.FormatEnv(env)
	if err != nil {
		t.Fatal(err)
	}
	var probed []netip.Addr
	in := Inputs{
		Node: "n1", Config: cfg, ExtIface: ext, Own: own, Local: own.Attrs, Backend: be,
		Peers:    []subnet.Lease{hostGW("n2", "10.244.2.0/24", "192.168.100.12"), hostGW("n3", "10.244.3.0/24", "192.168.200.13")},
		Kernel:   k,
		LinkName: linkName,
		Env:      EnvInput{Path: "/run/flannel/subnet.env", Expected: env, OnDisk: onDisk},
		Probe: func(a netip.Addr) error {
			probed = append(probed, a)
			return nil
		},
	}
	r, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK {
		t.Errorf("problems: %q", r.Problems)
	}
	if len(r.Devices) != 0 || r.Lease.BackendData.Status != StatusOK {
		t.Errorf("devices %+v, backend data %+v; want none and null = null", r.Devices, r.Lease.BackendData)
	}
	if len(r.Peers) != 1 || len(r.Peers[0].Entries) != 1 || r.Peers[0].Entries[0] != (EntryReport{
		Kind: "route", Want: "10.244.2.0/24 via 192.168.100.12 dev eth0", Status: StatusOK}) {
		t.Errorf("peers %+v", r.Peers)
	}
	if len(r.Skipped) != 1 || r.Skipped[0].Name != "n3" || !strings.Contains(r.Skipped[0].Reason, "L2 segment") {
		t.Errorf("skipped %+v, want n3 behind the router", r.Skipped)
	}
	if !slices.Equal(probed, []netip.Addr{netip.MustParseAddr("192.168.100.12")}) {
		t.Errorf("probed %v, want n2's public IP", probed)
	}
	if len(r.Firewall.Rules) != 0 || r.SubnetEnv.Status != StatusOK {
		t.Errorf("firewall %+v, subnet.env %+v", r.Firewall, r.SubnetEnv)
	}
	text, _ := render(t, r)
	checkGolden(t, "hostgw.txt", text)
}
