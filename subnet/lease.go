// Package subnet holds what flanneld knows about the cluster network: the
// network configuration (net-conf.json), leases (a node's pod subnet and the
// attributes it advertises to its peers) and the subnet.env file. The lease
// sources live in subnet/kube and subnet/etcd.
package subnet

import (
	"encoding/json"
	"net/netip"
)

// LeaseAttrs is what a node advertises to its peers about itself.
type LeaseAttrs struct {
	// PublicIP is the underlay address peers send encapsulated traffic to.
	PublicIP netip.Addr
	// PublicIPv6 is the IPv6 underlay address, if any.
	PublicIPv6 netip.Addr
	// BackendType is "vxlan", "host-gw" or "udp".
	BackendType string
	// BackendData is the backend's JSON document (vxlan: VNI and VtepMAC);
	// nil or "null" for backends without data.
	BackendData json.RawMessage
	// BackendV6Data is the IPv6 counterpart of BackendData.
	BackendV6Data json.RawMessage
}

// Lease is a node's pod subnet together with its advertised attributes.
type Lease struct {
	// Name identifies the lease's owner (the Node name in Kubernetes mode,
	// the lease key in etcd mode).
	Name string
	// Subnet is the IPv4 pod subnet; the zero Prefix when the node has none.
	Subnet netip.Prefix
	// IPv6Subnet is the IPv6 pod subnet; the zero Prefix when the node has none.
	IPv6Subnet netip.Prefix
	Attrs      LeaseAttrs
	// Created orders leases by age, as the source knows it: a Node's
	// creationTimestamp (Unix seconds), an etcd key's create revision. The
	// smaller is older; zero when unknown. Of two peers that claim the same
	// subnet or kernel entry, the older keeps it.
	Created int64
	// Err is set on a peer whose data the source could not read: the
	// peer is known but skipped (with its Name only), reported like any
	// other refused peer.
	Err error
}
