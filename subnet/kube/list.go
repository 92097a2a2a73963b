package kube

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flanneld/flanneld/subnet"
)

// Leases is a one-time, read-only view of the cluster's leases: what the
// daemon's Node informer delivers at its first sync, read with one (paged)
// List of Nodes and without writing anything (for `flanneld diagnose`).
type Leases struct {
	// Own is this node's lease as its Node advertises it: the podCIDR and
	// the flannel annotations. Nil when the Node does not exist.
	Own *subnet.Lease
	// OwnErr says why Own is unusable (no podCIDR, a malformed
	// annotation); Own then holds what could be read.
	OwnErr error
	// Peers are the other nodes running flanneld with usable annotations,
	// sorted by name.
	Peers []subnet.Lease
	// Skipped are the nodes running flanneld whose annotations the lease
	// source cannot read, with why; the daemon ignores them too.
	Skipped map[string]error

	own *v1.Node
	ann Annotations
}

// ListLeases lists the Nodes once (in pages) and returns this node's lease, the
// peers' leases and the nodes skipped for unusable annotations, as the
// daemon's lease source would see them.
func ListLeases(ctx context.Context, client Client, prefix, ownName string) (*Leases, error) {
	if prefix == "" {
		prefix = DefaultAnnotationPrefix
	}
	var nodes []v1.Node
	_, err := pageNodes(ctx, client, metav1.ListOptions{}, func(page *v1.NodeList) { nodes = append(nodes, page.Items...) })
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	ls := &Leases{ann: NewAnnotations(prefix), Skipped: map[string]error{}}
	for i := range nodes {
		n := &nodes[i]
		if n.Name == ownName {
			lease, err := ls.ann.leaseFromNode(n)
			ls.own, ls.Own, ls.OwnErr = n, &lease, err
			continue
		}
		if !ls.ann.isManaged(n) {
			continue
		}
		lease, err := ls.ann.leaseFromNode(n)
		if err != nil {
			ls.Skipped[n.Name] = err
			continue
		}
		ls.Peers = append(ls.Peers, lease)
	}
	slices.SortFunc(ls.Peers, func(a, b subnet.Lease) int { return cmp.Compare(a.Name, b.Name) })
	return ls, nil
}

// Advertise returns the attributes the daemon on this node would advertise
// for the backend's attrs: the public-ip-overwrite annotations always win,
// node-public-ip applies unless --public-ip (explicitPublicIP) was given.
func (l *Leases) Advertise(attrs subnet.LeaseAttrs, explicitPublicIP, explicitPublicIPv6 bool) (subnet.LeaseAttrs, error) {
	if l.own == nil {
		return attrs, nil
	}
	s := &Source{cfg: Config{ExplicitPublicIP: explicitPublicIP, ExplicitPublicIPv6: explicitPublicIPv6}, ann: l.ann}
	return s.advertisedAttrs(l.own, attrs)
}
