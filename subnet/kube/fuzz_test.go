package kube

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// FuzzLeaseFromNode feeds leaseFromNode a Node built from arbitrary
// annotation values and podCIDR strings, as a peer (or an operator) could
// write them. It must never panic, and whatever it accepts must be a lease
// the daemon can use: masked pod subnets of the right family, public
// addresses of the right family and without a zone, the annotations carried
// over verbatim; and the informer cache's stripped copy of the Node must
// give the same lease.
func FuzzLeaseFromNode(f *testing.F) {
	for _, s := range []struct {
		managed, backendType, backendData, backendV6Data, publicIP, publicIPv6, podCIDR, podCIDRs string
	}{
		{"true", "vxlan", `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`, "", "192.168.100.12", "", "10.244.2.0/24", ""},
		{"true", "vxlan", `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`, `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:fe"}`,
			"192.168.100.12", "fd00::12", "10.244.2.0/24", "10.244.2.0/24,fd00:10:244:2::/64"},
		{"true", "host-gw", "null", "", "10.0.0.1", "", "", "fd00:10:244:2::/64"},
		{"true", "vxlan", `{"VNI":1,"VtepMAC":`, "", "192.168.100.300", "", "10.244.2.7/24", ""},
		{"false", "", "", "", "fd00::12", "192.168.100.12", "10.244.2.0/33", "banana"},
		{"true", "vxlan", "", "", "fe80::1%eth0", "fe80::1%eth0", "::ffff:10.244.2.0/120", ",,"},
		{"", "", "", "", "", "", "", ""},
	} {
		f.Add(s.managed, s.backendType, s.backendData, s.backendV6Data, s.publicIP, s.publicIPv6, s.podCIDR, s.podCIDRs)
	}
	a := NewAnnotations(DefaultAnnotationPrefix)
	f.Fuzz(func(t *testing.T, managed, backendType, backendData, backendV6Data, publicIP, publicIPv6, podCIDR, podCIDRs string) {
		ann := map[string]string{}
		for k, v := range map[string]string{
			a.SubnetManager: managed,
			a.BackendType:   backendType,
			a.BackendData:   backendData,
			a.BackendV6Data: backendV6Data,
			a.PublicIP:      publicIP,
			a.PublicIPv6:    publicIPv6,
		} {
			if v != "" {
				ann[k] = v
			}
		}
		ann["example.com/not-flannel"] = publicIP // ignored: another prefix
		var cidrs []string
		if podCIDRs != "" {
			cidrs = strings.Split(podCIDRs, ",")
		}
		n := makeNode("fuzz-node", ann)
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR, cidrs

		_ = a.isManaged(n)
		l, err := a.leaseFromNode(n)
		if l.Name != n.Name {
			t.Fatalf("lease name %q, want %q", l.Name, n.Name)
		}
		// The informer caches a stripped copy: it must give the same answer.
		stripped, serr := a.stripNode(n)
		if serr != nil {
			t.Fatalf("stripNode: %v", serr)
		}
		fromCache, cacheErr := a.leaseFromNode(stripped.(*v1.Node))
		if (err == nil) != (cacheErr == nil) || (err != nil && err.Error() != cacheErr.Error()) || (err == nil && !reflect.DeepEqual(fromCache, l)) {
			t.Fatalf("the stripped Node gives %+v, %v; the Node gives %+v, %v", fromCache, cacheErr, l, err)
		}
		if err != nil {
			if !strings.Contains(err.Error(), n.Name) {
				t.Fatalf("error %q does not name the node", err)
			}
			return
		}

		if !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid() {
			t.Fatalf("accepted a Node without a pod subnet: %+v", l)
		}
		if l.Subnet.IsValid() && (!l.Subnet.Addr().Is4() || l.Subnet != l.Subnet.Masked()) {
			t.Fatalf("IPv4 subnet %s is not a masked IPv4 prefix", l.Subnet)
		}
		if l.IPv6Subnet.IsValid() && (l.IPv6Subnet.Addr().Is4() || l.IPv6Subnet != l.IPv6Subnet.Masked()) {
			t.Fatalf("IPv6 subnet %s is not a masked IPv6 prefix", l.IPv6Subnet)
		}
		if (publicIP != "") != l.Attrs.PublicIP.IsValid() {
			t.Fatalf("public-ip %q became %v", publicIP, l.Attrs.PublicIP)
		}
		if l.Attrs.PublicIP.IsValid() && (!l.Attrs.PublicIP.Is4() || l.Attrs.PublicIP.Zone() != "") {
			t.Fatalf("public-ip %q accepted as %v", publicIP, l.Attrs.PublicIP)
		}
		if (publicIPv6 != "") != l.Attrs.PublicIPv6.IsValid() {
			t.Fatalf("public-ipv6 %q became %v", publicIPv6, l.Attrs.PublicIPv6)
		}
		if l.Attrs.PublicIPv6.IsValid() && (l.Attrs.PublicIPv6.Is4() || l.Attrs.PublicIPv6.Zone() != "") {
			t.Fatalf("public-ipv6 %q accepted as %v", publicIPv6, l.Attrs.PublicIPv6)
		}
		if l.Attrs.BackendType != backendType {
			t.Fatalf("backend type %q, want %q", l.Attrs.BackendType, backendType)
		}
		if string(l.Attrs.BackendData) != backendData || (backendData == "") != (l.Attrs.BackendData == nil) {
			t.Fatalf("backend-data %q, want %q", l.Attrs.BackendData, backendData)
		}
		if string(l.Attrs.BackendV6Data) != backendV6Data || (backendV6Data == "") != (l.Attrs.BackendV6Data == nil) {
			t.Fatalf("backend-v6-data %q, want %q", l.Attrs.BackendV6Data, backendV6Data)
		}
		if again, err := a.leaseFromNode(n); err != nil || !reflect.DeepEqual(again, l) {
			t.Fatalf("second parse: %+v, %v; first %+v", again, err, l)
		}
		// What the node would advertise for these attributes is a set of
		// plain string annotations (valid JSON where JSON is expected when
		// the input was).
		for k, v := range a.annotationPatch(n, l.Attrs) {
			if k == a.BackendData && json.Valid([]byte(backendData)) && !json.Valid([]byte(v)) {
				t.Fatalf("patch %s=%q is not JSON", k, v)
			}
		}
	})
}
