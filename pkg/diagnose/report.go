// Package diagnose is `flanneld diagnose`: it compares what flanneld on this
// node should have programmed with what the kernel, the firewall and the
// subnet file hold, and prints the differences for an operator.
//
// It reads the same lease source as the daemon (one List of Nodes, no
// informer) and the kernel of the namespace it runs in, and changes
// nothing, so it works while the daemon is stopped. The comparison itself
// (Build) is pure: everything it reads comes in through Inputs, so it is
// unit-tested with kernel.Fake and a fake backend; Collect gathers the
// Inputs on a real node.
package diagnose

// FormatVersion is the version of the JSON report. Fields are only ever
// added within a version; a change to the meaning of a field bumps it.
const FormatVersion = 1

// Statuses of the compared items.
const (
	// StatusOK: the kernel (device, file, annotation) has what is expected.
	StatusOK = "ok"
	// StatusMissing: the expected entry (rule, file, device) is absent.
	StatusMissing = "missing"
	// StatusDiffers: something is there but not what is expected; Have
	// (or Detail) says what.
	StatusDiffers = "differs"
	// StatusNotAdvertised: the Node lacks the annotation (flanneld never
	// completed its start-up on this node).
	StatusNotAdvertised = "not advertised"
)

// Report is the result of a diagnosis: the JSON document `flanneld diagnose
// --json` prints. Addresses and prefixes are strings in their usual
// notation; an absent value is "".
type Report struct {
	// Format is FormatVersion.
	Format int `json:"format"`
	// Node is this node's name.
	Node string `json:"node"`
	// Backend is the backend type of the network configuration.
	Backend string `json:"backend"`
	// Network is the cluster Network (IPv4; "" when IPv4 is disabled).
	Network string `json:"network"`
	// IPv6Network is the cluster's IPv6Network (with EnableIPv6).
	IPv6Network string `json:"ipv6Network,omitempty"`
	// Interface is the external interface flanneld would use.
	Interface InterfaceReport `json:"interface"`
	// Lease compares the lease the Node advertises with what this node has.
	Lease LeaseReport `json:"lease"`
	// Devices are the devices the backend owns (flannel.1 for vxlan and,
	// with IPv6, flannel-v6.1; none for host-gw).
	Devices []DeviceReport `json:"devices"`
	// Peers are the peers flanneld programs, sorted by name, with each
	// expected kernel entry and its status.
	Peers []PeerReport `json:"peers"`
	// Skipped are the peers flanneld does not program, with why.
	Skipped []SkippedPeer `json:"skipped"`
	// Stale are entries flanneld owns that no peer needs: the next full
	// pass of a running daemon removes them.
	Stale []string `json:"stale"`
	// Firewall compares the firewall rules (iptables or nftables).
	Firewall FirewallReport `json:"firewall"`
	// SubnetEnv compares subnet.env.
	SubnetEnv SubnetEnvReport `json:"subnetEnv"`
	// PodMTU compares the MTU of the node's pods with the MTU pods must
	// have.
	PodMTU PodMTUReport `json:"podMTU"`
	// Unreachable are the peers the running daemon's probes find
	// unreachable through the overlay (--peer-probe-interval).
	Unreachable []UnreachableReport `json:"unreachable"`
	// Problems lists every difference found, one sentence each; empty when
	// the node is as flanneld would make it.
	Problems []string `json:"problems"`
	// OK is true when Problems is empty (exit status 0).
	OK bool `json:"ok"`
}

// InterfaceReport is the external interface.
type InterfaceReport struct {
	Name string `json:"name"`
	// Address is its IPv4 address ("" when IPv4 is disabled), AddressIPv6
	// its global IPv6 address (with EnableIPv6).
	Address     string `json:"address"`
	AddressIPv6 string `json:"addressIPv6,omitempty"`
	MTU         int    `json:"mtu"`
}

// Compared is one value as advertised on the Node next to this node's
// value (from the configuration, the interface or the device).
type Compared struct {
	Advertised string `json:"advertised"`
	Local      string `json:"local"`
	// Status is "ok", "differs" or "not advertised".
	Status string `json:"status"`
}

// LeaseReport is this node's lease. The IPv4 fields (Subnet,
// SubnetStatus, PublicIP, BackendData) are empty when IPv4 is disabled;
// the IPv6 ones are there with EnableIPv6 only.
type LeaseReport struct {
	// Subnet is the node's IPv4 podCIDR.
	Subnet string `json:"subnet"`
	// SubnetStatus is "ok", or "differs" when the podCIDR is missing or
	// outside the Network (the daemon refuses to start).
	SubnetStatus string `json:"subnetStatus"`
	// IPv6Subnet and IPv6SubnetStatus are the same for the IPv6 podCIDR
	// and the IPv6Network.
	IPv6Subnet       string `json:"ipv6Subnet,omitempty"`
	IPv6SubnetStatus string `json:"ipv6SubnetStatus,omitempty"`
	// PublicIP: the public-ip annotation vs the address this node would
	// advertise (--public-ip, the interface's, or an overwrite annotation).
	PublicIP Compared `json:"publicIP"`
	// PublicIPv6: the same for public-ipv6 (--public-ipv6, the interface's
	// global IPv6 address, or an overwrite annotation).
	PublicIPv6 *Compared `json:"publicIPv6,omitempty"`
	// BackendType: the backend-type annotation vs the configuration.
	BackendType Compared `json:"backendType"`
	// BackendData: the backend-data annotation vs what the device has
	// (vxlan: the VNI and flannel.1's MAC).
	BackendData Compared `json:"backendData"`
	// BackendV6Data: the backend-v6-data annotation vs what the IPv6
	// device has (vxlan: the VNI and flannel-v6.1's MAC).
	BackendV6Data *Compared `json:"backendV6Data,omitempty"`
}

// DeviceReport is one device flanneld owns.
type DeviceReport struct {
	Name string `json:"name"`
	// Type is the kernel's link type ("vxlan"); VNI its VXLAN id.
	Type string `json:"type"`
	VNI  int    `json:"vni,omitempty"`
	MAC  string `json:"mac"`
	MTU  int    `json:"mtu"`
	Up   bool   `json:"up"`
	// Addresses are its IPv4 and IPv6 addresses (link-local ones left
	// out).
	Addresses []string `json:"addresses"`
	// Local is the underlay address a VXLAN device sends from; its family
	// is the device's: an IPv6 device carries the IPv6 pods.
	Local string `json:"local,omitempty"`
	// WantMTU and WantAddress are what flanneld gives the device: the
	// backend's MTU for the device's family (vxlan: the external MTU, or
	// the MTU option, - 50 over IPv4, - 70 over IPv6), the network address
	// of the lease's subnet of that family as a /32 (/128).
	WantMTU     int    `json:"wantMTU"`
	WantAddress string `json:"wantAddress"`
	// Status is "ok", "missing" or "differs"; Detail says what differs,
	// or why the device is missing.
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// PeerReport is one programmed peer. Subnet and PublicIP are its IPv4
// ones ("" when IPv4 is disabled); with EnableIPv6, IPv6Subnet and
// PublicIPv6 its IPv6 ones.
type PeerReport struct {
	Name       string        `json:"name"`
	Subnet     string        `json:"subnet"`
	PublicIP   string        `json:"publicIP"`
	IPv6Subnet string        `json:"ipv6Subnet,omitempty"`
	PublicIPv6 string        `json:"publicIPv6,omitempty"`
	Entries    []EntryReport `json:"entries"`
	// Probe is the reachability probe's result over IPv4, ProbeIPv6 over
	// IPv6 (only with --probe, for each family the peer is programmed in).
	Probe     *ProbeReport `json:"probe,omitempty"`
	ProbeIPv6 *ProbeReport `json:"probeIPv6,omitempty"`
}

// EntryReport is one kernel entry a peer needs.
type EntryReport struct {
	// Kind is "route", "neighbour" or "fdb".
	Kind string `json:"kind"`
	// Want is the entry as `ip route` / `ip neigh` / `bridge fdb` would
	// describe it, e.g. "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink".
	Want string `json:"want"`
	// Status is "ok", "missing" or "differs".
	Status string `json:"status"`
	// Have is the kernel's entry with the same key, when it differs.
	Have string `json:"have,omitempty"`
}

// ProbeReport is the result of one ping of a peer.
type ProbeReport struct {
	// Target is the address pinged: the network address of the peer's
	// subnet of the family (its VTEP) for vxlan, its public IP of the
	// family for host-gw.
	Target    string `json:"target"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
}

// SkippedPeer is a peer flanneld does not program.
type SkippedPeer struct {
	Name       string `json:"name"`
	Subnet     string `json:"subnet"`
	IPv6Subnet string `json:"ipv6Subnet,omitempty"`
	Reason     string `json:"reason"`
}

// FirewallReport compares the firewall rules flanneld keeps.
type FirewallReport struct {
	// Mode is "iptables" or "nftables" (EnableNFTables).
	Mode string `json:"mode"`
	// Rules are the expected rules and whether each is present ("ok" or
	// "missing"): in iptables mode in iptables-save form with the table,
	// in nftables mode as `nft add rule` takes them ("ip flannel-ipv4
	// postrtg ...").
	Rules []RuleReport `json:"rules"`
	// Problems are the differences of flanneld's chains or tables as a
	// whole (missing, unexpected or reordered rules), e.g.
	// "nat/FLANNEL-POSTRTG: 1 rule missing" or
	// "ip flannel-ipv4/postrtg: 1 rule missing".
	Problems []string `json:"problems"`
	// OtherMode are flanneld's rules of the other mode still on the node,
	// e.g. "iptables chain nat/FLANNEL-POSTRTG" in nftables mode, or
	// "nftables table ip flannel-ipv4" in iptables mode.
	OtherMode []string `json:"otherMode"`
}

// RuleReport is one expected rule.
type RuleReport struct {
	Rule   string `json:"rule"`
	Status string `json:"status"`
}

// SubnetEnvReport compares subnet.env.
type SubnetEnvReport struct {
	Path string `json:"path"`
	// Status is "ok", "missing" (no file) or "differs".
	Status string `json:"status"`
	// Error says why the file could not be read (other than missing).
	Error string `json:"error,omitempty"`
	// Lines compare each key, expected keys first.
	Lines []EnvLine `json:"lines"`
}

// EnvLine is one key of subnet.env.
type EnvLine struct {
	Key      string `json:"key"`
	Expected string `json:"expected"`
	OnDisk   string `json:"onDisk"`
	Status   string `json:"status"`
}

// PodMTUReport compares the MTU of the pods on this node, as the host side
// of each pod's veth (a port of the cni0 bridge) has it, with the MTU pods
// must have. Pods keep the MTU they were created with when flanneld follows
// a change of the underlay's MTU, until they are recreated.
type PodMTUReport struct {
	// Bridge is the pods' bridge, "cni0"; "" when the node has none (no
	// pod was created yet): nothing is compared then.
	Bridge string `json:"bridge"`
	// Want is the MTU pods must have: the backend's, FLANNEL_MTU in the
	// subnet.env flanneld writes.
	Want int `json:"want"`
	// Ports is the number of ports of the bridge: the node's pods.
	Ports int `json:"ports"`
	// Stale are the ports with another MTU than Want, sorted by name.
	Stale []PortMTU `json:"stale"`
}

// PortMTU is one port of the pods' bridge with its MTU.
type PortMTU struct {
	// Port is the name of the host side of the pod's veth.
	Port string `json:"port"`
	MTU  int    `json:"mtu"`
}
