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

// stripNode keeps only what flanneld reads of a Node, so that the cache of a
// 5,000-node cluster holds a few hundred bytes per node instead of the whole
// object (status, images, managed fields, labels).
func (a Annotations) stripNode(obj any) (any, error) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return obj, nil
	}
	var ann map[string]string
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, a.prefix) {
			if ann == nil {
				ann = make(map[string]string, 8)
			}
			ann[k] = v
		}
	}
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:            n.Name,
			UID:             n.UID,
			ResourceVersion: n.ResourceVersion,
			Annotations:     ann,
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
	for _, c := range cidrs {
		p, perr := netip.ParsePrefix(c)
		if perr != nil {
			return v4, v6, fmt.Errorf("node %s has a malformed podCIDR %q: %w", n.Name, c, perr)
		}
		if p.Addr().Is4() {
			v4 = p.Masked()
		} else {
			v6 = p.Masked()
		}
	}
	return v4, v6, nil
}

func parseAddrAnnotation(n *v1.Node, key string, want4 bool) (netip.Addr, error) {
	s, ok := n.Annotations[key]
	if !ok || s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is4() != want4 || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("node %s has a malformed %s annotation %q", n.Name, key, s)
	}
	return a, nil
}

// isManaged reports whether flanneld runs on the node.
func (a Annotations) isManaged(n *v1.Node) bool { return n.Annotations[a.SubnetManager] == "true" }

// leaseFromNode reads a node's lease. Backend data is validated by the
// backend, not here.
func (a Annotations) leaseFromNode(n *v1.Node) (subnet.Lease, error) {
	l := subnet.Lease{Name: n.Name}
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
	l.Attrs.BackendType = n.Annotations[a.BackendType]
	if d := n.Annotations[a.BackendData]; d != "" {
		l.Attrs.BackendData = json.RawMessage(d)
	}
	if d := n.Annotations[a.BackendV6Data]; d != "" {
		l.Attrs.BackendV6Data = json.RawMessage(d)
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
