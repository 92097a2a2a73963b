// Package kube is the Kubernetes lease source: the node's podCIDR is its
// lease, and every node advertises its attributes in annotations on its own
// Node object (REFERENCE.md section 3), which all flanneld instances watch.
package kube

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// DefaultAnnotationPrefix is upstream flannel's annotation prefix.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// Annotations are the full annotation keys for a prefix.
type Annotations struct {
	prefix              string
	SubnetManager       string // "true" on every node flanneld runs on
	BackendType         string
	BackendData         string
	BackendV6Data       string
	PublicIP            string
	PublicIPv6          string
	PublicIPOverwrite   string
	PublicIPv6Overwrite string
	NodePublicIP        string
	NodePublicIPv6      string
}

// NewAnnotations returns the annotation keys under prefix.
func NewAnnotations(prefix string) Annotations {
	p := strings.TrimSuffix(prefix, "/") + "/"
	return Annotations{
		prefix:              p,
		SubnetManager:       p + "kube-subnet-manager",
		BackendType:         p + "backend-type",
		BackendData:         p + "backend-data",
		BackendV6Data:       p + "backend-v6-data",
		PublicIP:            p + "public-ip",
		PublicIPv6:          p + "public-ipv6",
		PublicIPOverwrite:   p + "public-ip-overwrite",
		PublicIPv6Overwrite: p + "public-ipv6-overwrite",
		NodePublicIP:        p + "node-public-ip",
		NodePublicIPv6:      p + "node-public-ipv6",
	}
}

// keys are the annotation keys flanneld reads.
func (a Annotations) keys() []string {
	return []string{a.SubnetManager, a.BackendType, a.BackendData, a.BackendV6Data, a.PublicIP, a.PublicIPv6,
		a.PublicIPOverwrite, a.PublicIPv6Overwrite, a.NodePublicIP, a.NodePublicIPv6}
}

// stripNode keeps only what flanneld reads of a Node, so that the cache of a
// 5,000-node cluster holds a few hundred bytes per node instead of the whole
// object (status, images, managed fields, labels): of the annotations only
// the keys flanneld reads, each cut to one byte more than
// subnet.MaxAnnotationBytes (enough to tell it is too long), so a Node
// whose annotations fill the API server's 256 KiB costs a few KiB at most.
func (a Annotations) stripNode(obj any) (any, error) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return obj, nil
	}
	var ann map[string]string
	for _, k := range a.keys() {
		v, ok := n.Annotations[k]
		if !ok {
			continue
		}
		if ann == nil {
			ann = make(map[string]string, 8)
		}
		if len(v) > subnet.MaxAnnotationBytes {
			v = strings.Clone(v[:subnet.MaxAnnotationBytes+1])
		}
		ann[k] = v
	}
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:              n.Name,
			UID:               n.UID,
			ResourceVersion:   n.ResourceVersion,
			CreationTimestamp: n.CreationTimestamp,
			Annotations:       ann,
		},
		Spec: v1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}, nil
}

// podCIDRs returns the node's IPv4 and IPv6 pod subnets.
func podCIDRs(n *v1.Node) (v4, v6 netip.Prefix, err error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) > 2 {
		return v4, v6, fmt.Errorf("node %s has %d podCIDRs, at most one per address family is possible", n.Name, len(cidrs))
	}
	for _, c := range cidrs {
		p, perr := netip.ParsePrefix(c)
		if perr != nil {
			return v4, v6, fmt.Errorf("node %s has a malformed podCIDR %s", n.Name, subnet.Quote(c))
		}
		if p.Addr().Zone() != "" {
			return v4, v6, fmt.Errorf("node %s has a podCIDR with a zone %s", n.Name, subnet.Quote(c))
		}
		if p.Addr().Is4() {
			v4 = p.Masked()
		} else {
			v6 = p.Masked()
		}
	}
	return v4, v6, nil
}

// annotation returns the value of a flannel annotation of n, or an error
// when it is longer than subnet.MaxAnnotationBytes.
func annotation(n *v1.Node, key string) (string, error) {
	v := n.Annotations[key]
	if len(v) > subnet.MaxAnnotationBytes {
		return "", fmt.Errorf("node %s has a %s annotation longer than %d bytes: %s", n.Name, key, subnet.MaxAnnotationBytes, subnet.Quote(v))
	}
	return v, nil
}

func parseAddrAnnotation(n *v1.Node, key string, want4 bool) (netip.Addr, error) {
	s, err := annotation(n, key)
	if err != nil || s == "" {
		return netip.Addr{}, err
	}
	a, err := ip.ParseAddrOf(s, want4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("node %s has a malformed %s annotation %s: %w", n.Name, key, subnet.Quote(s), err)
	}
	return a, nil
}

// isManaged reports whether flanneld runs on the node.
func (a Annotations) isManaged(n *v1.Node) bool { return n.Annotations[a.SubnetManager] == "true" }

// leaseFromNode reads a node's lease. Backend data is validated by the
// backend, not here; the lease's Created is the Node's creationTimestamp.
func (a Annotations) leaseFromNode(n *v1.Node) (subnet.Lease, error) {
	l := subnet.Lease{Name: n.Name, Created: n.CreationTimestamp.Unix()}
	if n.CreationTimestamp.IsZero() {
		l.Created = 0
	}
	var err error
	if l.Subnet, l.IPv6Subnet, err = podCIDRs(n); err != nil {
		return l, err
	}
	if !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid() {
		return l, fmt.Errorf("node %s has no podCIDR", n.Name)
	}
	if l.Attrs.PublicIP, err = parseAddrAnnotation(n, a.PublicIP, true); err != nil {
		return l, err
	}
	if l.Attrs.PublicIPv6, err = parseAddrAnnotation(n, a.PublicIPv6, false); err != nil {
		return l, err
	}
	if l.Attrs.BackendType, err = annotation(n, a.BackendType); err != nil {
		return l, err
	}
	for key, dst := range map[string]*json.RawMessage{a.BackendData: &l.Attrs.BackendData, a.BackendV6Data: &l.Attrs.BackendV6Data} {
		d, err := annotation(n, key)
		if err != nil {
			return l, err
		}
		if d != "" {
			*dst = json.RawMessage(d)
		}
	}
	return l, nil
}

// annotationPatch returns the annotations a node must carry to advertise
// attrs, only those that differ from what it has now (nil if none).
func (a Annotations) annotationPatch(n *v1.Node, attrs subnet.LeaseAttrs) map[string]string {
	want := map[string]string{
		a.SubnetManager: "true",
		a.BackendType:   attrs.BackendType,
		a.BackendData:   rawOrNull(attrs.BackendData),
	}
	if attrs.PublicIP.IsValid() {
		want[a.PublicIP] = attrs.PublicIP.String()
	}
	if attrs.PublicIPv6.IsValid() {
		want[a.PublicIPv6] = attrs.PublicIPv6.String()
		want[a.BackendV6Data] = rawOrNull(attrs.BackendV6Data)
	}
	for k, v := range want {
		if n != nil && n.Annotations[k] == v {
			delete(want, k)
		}
	}
	if len(want) == 0 {
		return nil
	}
	return want
}

func rawOrNull(r json.RawMessage) string {
	if len(r) == 0 {
		return "null"
	}
	return string(r)
}
