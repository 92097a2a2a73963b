package diagnose

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/daemon"
	"github.com/flanneld/flanneld/subnet"
)

// Inputs is everything a diagnosis compares. Collect gathers them on a
// node; tests build them from fakes.
type Inputs struct {
	// Node is this node's name.
	Node string
	// Config is the network configuration (net-conf.json).
	Config *subnet.Config
	// ExtIface is the external interface.
	ExtIface *ip.ExternalInterface
	// Own is this node's lease as its Node advertises it.
	Own subnet.Lease
	// Local are the attributes this node would advertise now: the
	// configured backend type, the devices' backend data (BackendData of
	// the IPv4 device, BackendV6Data of the IPv6 one), the public IPs.
	Local subnet.LeaseAttrs
	// Backend is built as the daemon builds it, and attached to the
	// existing device (AttachErr says why that failed).
	Backend   backend.Backend
	AttachErr error
	// Segments are the external interface's addresses with their
	// prefixes (the peer rules refuse their network and broadcast
	// addresses as a peer's public IP).
	Segments []netip.Prefix
	// Devices are the backend's owned links as the kernel has them, in
	// the order of its OwnedLinks.
	Devices []Device
	// Peers are the peers' leases, sorted by name; Skipped the nodes the
	// lease source could not read, with why.
	Peers   []subnet.Lease
	Skipped map[string]error
	// Kernel is read (never written) for flanneld's entries.
	Kernel kernel.Interface
	// LinkName names a link index in the output (nil: the index).
	LinkName func(index int) string
	// FirewallMode is the daemon's firewall mode: "iptables" or
	// "nftables" (daemon.FirewallMode).
	FirewallMode string
	// Firewall checks the rules the daemon keeps, in FirewallMode; it is
	// only read. Nil when the daemon keeps no rules.
	Firewall FirewallChecker
	// OtherMode are flanneld's rules of the other firewall mode found on
	// the node (network.FindOtherModeRules), which the daemon removes when
	// it starts; OtherModeErr says why they could not be looked for.
	OtherMode    []string
	OtherModeErr error
	// Probes is the running daemon's probe state (peers that do not
	// answer through the overlay); nil when there is none.
	Probes *daemon.ProbeState
	// Now is when the diagnosis runs (zero: time.Now).
	Now time.Time
	// Env is subnet.env: expected and on disk.
	Env EnvInput
	// PodBridge is the node's cni0 bridge with its ports (the host side of
	// each pod's veth, with the pod's MTU); nil when there is no cni0 (no
	// pod was created yet).
	PodBridge *Bridge
	// Probe, if set, pings an address once and returns nil if it answered.
	Probe func(netip.Addr) error
}

// Device is one link the backend owns, as the kernel has it.
type Device struct {
	Name  string
	Index int
	Type  string
	VNI   int // vxlan
	MAC   string
	MTU   int
	Up    bool
	// Addresses are its IPv4 and IPv6 addresses, link-local ones left out
	// (the daemon leaves them alone).
	Addresses []netip.Prefix
	// Local is the underlay address a VXLAN device sends from: its family
	// tells the device of the IPv4 pods from that of the IPv6 pods.
	// Invalid for a device without one (the udp backend's TUN).
	Local netip.Addr
}

// FirewallChecker reads flanneld's firewall rules without changing them:
// the read-only part of network.RuleKeeper.
type FirewallChecker interface {
	// Status says for each wanted rule whether the kernel has it.
	Status() ([]network.RuleStatus, error)
	// Check describes the differences of flanneld's chains or tables as a
	// whole.
	Check() ([]string, error)
}

// EnvInput is subnet.env as expected and as read from disk.
type EnvInput struct {
	Path     string
	Expected subnet.Env
	// OnDisk is the file's content; ReadErr the error reading it (wrapping
	// fs.ErrNotExist when there is no file).
	OnDisk  []byte
	ReadErr error
}

// maxProbes bounds the pings in flight.
const maxProbes = 32

// Build compares and returns the report. It fails only when something
// could not be read (the kernel's entries, the firewall), not when
// something differs: that is what the report is for.
func Build(in Inputs) (Report, error) {
	b := builder{in: in, r: Report{
		Format:  FormatVersion,
		Node:    in.Node,
		Backend: in.Config.BackendType,
		// Empty lists, not null, in the JSON.
		Devices: []DeviceReport{}, Peers: []PeerReport{}, Skipped: []SkippedPeer{}, Stale: []string{}, Unreachable: []UnreachableReport{},
		Firewall: FirewallReport{Mode: in.FirewallMode, Rules: []RuleReport{}, Problems: []string{}, OtherMode: []string{}},
		Problems: []string{},
	}}
	if in.Config.EnableIPv4 {
		b.r.Network = ip.Text(in.Config.Network)
	}
	if in.Config.EnableIPv6 {
		b.r.IPv6Network = ip.Text(in.Config.IPv6Network)
	}
	if e := in.ExtIface; e != nil {
		b.r.Interface = InterfaceReport{Name: e.Name, Address: ip.Text(e.IfaceAddr), AddressIPv6: ip.Text(e.IfaceV6Addr), MTU: e.MTU}
	}
	b.lease()
	b.devices()
	var errs []error
	if err := b.peers(); err != nil {
		errs = append(errs, err)
	}
	if err := b.firewall(); err != nil {
		errs = append(errs, err)
	}
	b.subnetEnv()
	b.podMTU()
	b.unreachable()
	b.probe()
	b.r.OK = len(b.r.Problems) == 0
	return b.r, errors.Join(errs...)
}

type builder struct {
	in Inputs
	r  Report
}

func (b *builder) problem(format string, a ...any) {
	b.r.Problems = append(b.r.Problems, fmt.Sprintf(format, a...))
}

// name replaces the link index after every "dev" in an entry's text with
// the link's name.
func (b *builder) name(entry string) string {
	if b.in.LinkName == nil {
		return entry
	}
	f := strings.Fields(entry)
	for i := 0; i+1 < len(f); i++ {
		if f[i] != "dev" {
			continue
		}
		if idx, err := strconv.Atoi(f[i+1]); err == nil {
			f[i+1] = b.in.LinkName(idx)
		}
	}
	return strings.Join(f, " ")
}

// attached reports whether the backend found its device (or needs none).
func (b *builder) attached() bool { return b.in.AttachErr == nil }

// ownedLinks are the backend's devices that exist.
func (b *builder) ownedLinks() []int {
	if !b.attached() {
		return nil
	}
	return slices.DeleteFunc(slices.Clone(b.in.Backend.Base().OwnedLinks), func(i int) bool { return i <= 0 })
}

// lease compares this node's lease, in every enabled address family,
// with what this node has.
func (b *builder) lease() {
	cfg, own, local := b.in.Config, b.in.Own.Attrs, b.in.Local
	l := &b.r.Lease
	if cfg.EnableIPv4 {
		l.Subnet, l.SubnetStatus = b.podCIDR("podCIDR", b.in.Own.Subnet)
	}
	if cfg.EnableIPv6 {
		l.IPv6Subnet, l.IPv6SubnetStatus = b.podCIDR("IPv6 podCIDR", b.in.Own.IPv6Subnet)
	}
	if cfg.EnableIPv4 {
		l.PublicIP = b.compare("public IP", ip.Text(own.PublicIP), ip.Text(local.PublicIP))
	}
	if cfg.EnableIPv6 {
		c := b.compare("public IPv6", ip.Text(own.PublicIPv6), ip.Text(local.PublicIPv6))
		l.PublicIPv6 = &c
	}
	l.BackendType = b.compare("backend type", own.BackendType, local.BackendType)
	if cfg.EnableIPv4 {
		l.BackendData = b.compareData("backend data", own.BackendData, local.BackendData)
	}
	if cfg.EnableIPv6 {
		c := b.compareData("backend v6 data", own.BackendV6Data, local.BackendV6Data)
		l.BackendV6Data = &c
	}
}

// podCIDR checks this node's podCIDR of an enabled family as the daemon
// does before it starts.
func (b *builder) podCIDR(what string, sn netip.Prefix) (string, string) {
	if !sn.IsValid() {
		b.problem("lease: the Node has no %s, but the network config enables its address family (flanneld refuses to start)", what)
		return "", StatusDiffers
	}
	if err := b.in.Config.CheckSubnet(sn); err != nil {
		b.problem("lease: %s %s: %v (flanneld refuses to start)", what, sn, err)
		return sn.String(), StatusDiffers
	}
	return sn.String(), StatusOK
}

// compare compares an advertised value with this node's.
func (b *builder) compare(what, advertised, local string) Compared {
	c := Compared{Advertised: advertised, Local: local, Status: StatusOK}
	switch {
	case advertised == "":
		c.Status = StatusNotAdvertised
		b.problem("lease: %s is not advertised on the Node (has flanneld started here?)", what)
	case advertised != local:
		c.Status = StatusDiffers
		b.problem("lease: %s advertised %s, this node has %s", what, advertised, local)
	}
	return c
}

// compareData compares advertised backend data with the device's, as
// JSON documents. Nothing advertised is "null" when the backend has no
// data (etcd leases leave it out).
func (b *builder) compareData(what string, advertised, local json.RawMessage) Compared {
	adv, loc := canonicalJSON(advertised), canonicalJSON(local)
	if !b.attached() {
		loc = "(no device)"
	}
	if len(bytes.TrimSpace(advertised)) == 0 && loc != "null" {
		adv = ""
	}
	return b.compare(what, adv, loc)
}

// canonicalJSON re-encodes a JSON document so that equal documents compare
// equal (key order, white space); "null" when empty, the raw text when it
// is not JSON.
func canonicalJSON(raw json.RawMessage) string {
	if len(bytes.TrimSpace(raw)) == 0 {
		return "null"
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return string(raw)
	}
	out, err := json.Marshal(v)
	if err != nil {
		return string(raw)
	}
	return string(out)
}

// peers decides, as the daemon's sync loop does, which peers are
// programmed (in name order, a peer overlapping this node or an earlier
// peer is skipped), then compares each one's entries with the kernel.
func (b *builder) peers() error {
	snap, err := network.ReadOwned(b.in.Kernel, b.ownedLinks())
	if err != nil {
		return fmt.Errorf("read flanneld's kernel entries: %w", err)
	}
	var desired network.State
	if b.attached() {
		desired = b.in.Backend.Base()
	}
	states, skipped := daemon.Admit(b.rules(), b.in.Backend, b.in.Peers)
	for _, p := range b.in.Peers {
		st, ok := states[p.Name]
		if !ok {
			reason := "not programmed"
			if err := skipped[p.Name]; err != nil {
				reason = err.Error()
			}
			sn, sn6 := b.subnets(p)
			b.r.Skipped = append(b.r.Skipped, SkippedPeer{Name: p.Name, Subnet: sn, IPv6Subnet: sn6, Reason: reason})
			continue
		}
		desired.Merge(st)
		pr := PeerReport{Name: p.Name}
		pr.Subnet, pr.IPv6Subnet = b.subnets(p)
		if b.in.Config.EnableIPv4 {
			pr.PublicIP = ip.Text(p.Attrs.PublicIP)
		}
		if b.in.Config.EnableIPv6 {
			pr.PublicIPv6 = ip.Text(p.Attrs.PublicIPv6)
		}
		for _, rt := range st.Routes {
			pr.Entries = append(pr.Entries, b.entry("route", rt.String(), snap.RouteStatus(rt), func() string {
				return snap.Routes[rt.Key()].String()
			}))
		}
		for _, n := range st.Neighs {
			pr.Entries = append(pr.Entries, b.entry("neighbour", n.String(), snap.NeighStatus(n), func() string {
				return snap.Neighs[n.Key()].String()
			}))
		}
		for _, f := range st.FDBs {
			pr.Entries = append(pr.Entries, b.entry("fdb", f.String(), snap.FDBStatus(f), func() string {
				return snap.FDBs[f.Key()].String()
			}))
		}
		for _, w := range st.WGPeers {
			pr.Entries = append(pr.Entries, b.entry("wgpeer", w.String(), snap.WGPeerStatus(w), func() string {
				return snap.WGPeers[w.Key()].String()
			}))
		}
		for _, e := range pr.Entries {
			if e.Status != StatusOK {
				msg := fmt.Sprintf("peer %s: %s %s: %s", p.Name, e.Kind, e.Want, e.Status)
				if e.Have != "" {
					msg += ", the kernel has " + e.Have
				}
				b.problem("%s", msg)
			}
		}
		b.r.Peers = append(b.r.Peers, pr)
	}
	for _, name := range sortedKeys(b.in.Skipped) {
		b.r.Skipped = append(b.r.Skipped, SkippedPeer{Name: name, Reason: b.in.Skipped[name].Error()})
	}
	slices.SortFunc(b.r.Skipped, func(a, c SkippedPeer) int { return strings.Compare(a.Name, c.Name) })
	if !b.attached() {
		return nil // without the device, everything on it would look stale
	}
	for _, s := range snap.Stale(desired) {
		s = b.name(s)
		b.r.Stale = append(b.r.Stale, s)
		b.problem("stale: %s (no peer needs it)", s)
	}
	return nil
}

// subnets are a peer's subnets of the enabled families.
func (b *builder) subnets(p subnet.Lease) (sn, sn6 string) {
	if b.in.Config.EnableIPv4 {
		sn = ip.Text(p.Subnet)
	}
	if b.in.Config.EnableIPv6 {
		sn6 = ip.Text(p.IPv6Subnet)
	}
	return sn, sn6
}

// entry reports one expected entry; have describes the kernel's entry
// with the same key, asked for only when it differs.
func (b *builder) entry(kind, want, status string, have func() string) EntryReport {
	e := EntryReport{Kind: kind, Want: b.name(want), Status: status}
	if strings.HasPrefix(status, StatusDiffers) {
		e.Status, e.Have = StatusDiffers, b.name(have())
	}
	return e
}

// rules are the daemon's peer rules on this node.
func (b *builder) rules() subnet.PeerRules {
	local := []netip.Addr{b.in.Own.Attrs.PublicIP, b.in.Own.Attrs.PublicIPv6, b.in.Local.PublicIP, b.in.Local.PublicIPv6}
	for _, p := range b.in.Segments {
		local = append(local, p.Addr())
	}
	local = slices.DeleteFunc(local, func(a netip.Addr) bool { return !a.IsValid() })
	return subnet.PeerRules{Config: b.in.Config, Own: b.in.Own, Local: local, Segments: b.in.Segments}
}

func (b *builder) firewall() error {
	var errs []error
	for _, r := range b.in.OtherMode {
		b.r.Firewall.OtherMode = append(b.r.Firewall.OtherMode, r)
		b.problem("firewall: left over from the other firewall mode (flanneld removes it when it starts in %s mode): %s", b.in.FirewallMode, r)
	}
	if b.in.OtherModeErr != nil {
		errs = append(errs, fmt.Errorf("look for rules of the other firewall mode: %w", b.in.OtherModeErr))
	}
	if b.in.Firewall == nil {
		return errors.Join(errs...)
	}
	statuses, err := b.in.Firewall.Status()
	if err != nil {
		errs = append(errs, fmt.Errorf("check the firewall rules: %w", err))
	}
	for _, st := range statuses {
		status := StatusOK
		if !st.Present {
			status = StatusMissing
		}
		b.r.Firewall.Rules = append(b.r.Firewall.Rules, RuleReport{Rule: st.Rule, Status: status})
	}
	problems, err := b.in.Firewall.Check()
	if err != nil {
		errs = append(errs, fmt.Errorf("check the firewall rules: %w", err))
	}
	for _, p := range problems {
		b.r.Firewall.Problems = append(b.r.Firewall.Problems, p)
		b.problem("firewall: %s", p)
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
