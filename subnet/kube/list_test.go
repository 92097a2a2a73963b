package kube

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flanneld/flanneld/subnet"
)

func listTestNode(name, podCIDR string, ann map[string]string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if podCIDR != "" {
		n.Spec.PodCIDR = podCIDR
	}
	return n
}

func TestListLeases(t *testing.T) {
	a := NewAnnotations(DefaultAnnotationPrefix)
	managed := func(publicIP string) map[string]string {
		return map[string]string{
			a.SubnetManager: "true",
			a.BackendType:   "vxlan",
			a.BackendData:   `{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}`,
			a.PublicIP:      publicIP,
		}
	}
	own := managed("192.168.0.1")
	own[a.PublicIPOverwrite] = "203.0.113.1"
	client := fake.NewClientset(
		listTestNode("self", "10.244.1.0/24", own),
		listTestNode("b", "10.244.3.0/24", managed("192.168.0.3")),
		listTestNode("a", "10.244.2.0/24", managed("192.168.0.2")),
		listTestNode("bad", "10.244.4.0/24", managed("not-an-ip")),
		listTestNode("nocidr", "", managed("192.168.0.5")),
		listTestNode("unmanaged", "10.244.6.0/24", nil),
	)
	ls, err := ListLeases(context.Background(), clientset{client}, "", "self")
	if err != nil {
		t.Fatal(err)
	}
	if ls.Own == nil || ls.OwnErr != nil || ls.Own.Subnet != netip.MustParsePrefix("10.244.1.0/24") ||
		ls.Own.Attrs.PublicIP != netip.MustParseAddr("192.168.0.1") || ls.Own.Attrs.BackendType != "vxlan" {
		t.Errorf("own lease %+v, err %v", ls.Own, ls.OwnErr)
	}
	var names []string
	for _, p := range ls.Peers {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, ","); got != "a,b" {
		t.Errorf("peers %s, want a,b (sorted, without self, unmanaged and unusable nodes)", got)
	}
	if len(ls.Skipped) != 2 || ls.Skipped["bad"] == nil || ls.Skipped["nocidr"] == nil {
		t.Errorf("skipped %v, want bad and nocidr", ls.Skipped)
	}

	// The overwrite annotation wins over what the interface has, as in the daemon.
	attrs, err := ls.Advertise(subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.0.1")}, true, false)
	if err != nil || attrs.PublicIP != netip.MustParseAddr("203.0.113.1") {
		t.Errorf("Advertise: %v, %v; want 203.0.113.1", attrs.PublicIP, err)
	}

	// A node without its Node object, and one without a podCIDR.
	ls, err = ListLeases(context.Background(), clientset{client}, "", "missing")
	if err != nil || ls.Own != nil || len(ls.Peers) != 3 {
		t.Errorf("missing own Node: own %v, peers %d, err %v", ls.Own, len(ls.Peers), err)
	}
	ls, err = ListLeases(context.Background(), clientset{client}, "", "nocidr")
	if err != nil || ls.Own == nil || ls.OwnErr == nil || !strings.Contains(ls.OwnErr.Error(), "no podCIDR") {
		t.Errorf("own Node without podCIDR: own %v, err %v / %v", ls.Own, ls.OwnErr, err)
	}
}
