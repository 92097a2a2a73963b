package kube

import (
	"encoding/json"
	"maps"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flanneld/flanneld/subnet"
)

const (
	annManaged      = "flannel.alpha.coreos.com/kube-subnet-manager"
	annBackendType  = "flannel.alpha.coreos.com/backend-type"
	annBackendData  = "flannel.alpha.coreos.com/backend-data"
	annBackendV6    = "flannel.alpha.coreos.com/backend-v6-data"
	annPublicIP     = "flannel.alpha.coreos.com/public-ip"
	annPublicIPv6   = "flannel.alpha.coreos.com/public-ipv6"
	annOverwrite    = "flannel.alpha.coreos.com/public-ip-overwrite"
	annOverwriteV6  = "flannel.alpha.coreos.com/public-ipv6-overwrite"
	annNodePublic   = "flannel.alpha.coreos.com/node-public-ip"
	annNodePublicV6 = "flannel.alpha.coreos.com/node-public-ipv6"

	vxlanData = `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`
)

var defaultAnn = NewAnnotations(DefaultAnnotationPrefix)

// makeNode builds a Node; podCIDRs go to spec.podCIDRs, the first also to
// spec.podCIDR, as the node IPAM controller does.
func makeNode(name string, ann map[string]string, podCIDRs ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
		n.Spec.PodCIDRs = podCIDRs
	}
	return n
}

// managedAnn returns the annotations a flanneld node writes for itself.
func managedAnn(publicIP string) map[string]string {
	return map[string]string{
		annManaged:     "true",
		annBackendType: "vxlan",
		annBackendData: vxlanData,
		annPublicIP:    publicIP,
	}
}

func TestNewAnnotations(t *testing.T) {
	for _, prefix := range []string{"example.com/flannel", "example.com/flannel/"} {
		a := NewAnnotations(prefix)
		want := map[string]string{
			a.SubnetManager:       "example.com/flannel/kube-subnet-manager",
			a.BackendType:         "example.com/flannel/backend-type",
			a.BackendData:         "example.com/flannel/backend-data",
			a.BackendV6Data:       "example.com/flannel/backend-v6-data",
			a.PublicIP:            "example.com/flannel/public-ip",
			a.PublicIPv6:          "example.com/flannel/public-ipv6",
			a.PublicIPOverwrite:   "example.com/flannel/public-ip-overwrite",
			a.PublicIPv6Overwrite: "example.com/flannel/public-ipv6-overwrite",
			a.NodePublicIP:        "example.com/flannel/node-public-ip",
			a.NodePublicIPv6:      "example.com/flannel/node-public-ipv6",
		}
		for got, w := range want {
			if got != w {
				t.Errorf("NewAnnotations(%q): key %q, want %q", prefix, got, w)
			}
		}
	}
	// The default keys are upstream's (REFERENCE.md section 3).
	if defaultAnn.SubnetManager != annManaged || defaultAnn.BackendData != annBackendData ||
		defaultAnn.PublicIPOverwrite != annOverwrite || defaultAnn.NodePublicIPv6 != annNodePublicV6 {
		t.Errorf("default annotation keys differ from upstream's: %+v", defaultAnn)
	}
}

func TestStripNode(t *testing.T) {
	full := &v1.Node{
		TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              "n1",
			UID:               "uid-1",
			ResourceVersion:   "42",
			CreationTimestamp: metav1.Unix(1700000000, 0),
			Generation:        7,
			Labels:            map[string]string{"kubernetes.io/hostname": "n1"},
			Annotations: map[string]string{
				annManaged:                     "true",
				annBackendData:                 vxlanData,
				annOverwrite:                   "203.0.113.1",
				"node.alpha.kubernetes.io/ttl": "0",
				"flannel.alpha.coreos.com.evil/public-ip": "198.51.100.1", // not under the prefix
				"flannel.alpha.coreos.comx":               "x",
				"flannel.alpha.coreos.com/junk":           strings.Repeat("j", 200000), // under the prefix, never read
				annBackendType:                            strings.Repeat("v", 250000), // read, but too long
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
			Finalizers:    []string{"f"},
		},
		Spec: v1.NodeSpec{
			PodCIDR:    "10.244.1.0/24",
			PodCIDRs:   []string{"10.244.1.0/24", "fd00:0:0:1::/64"},
			ProviderID: "kind://n1",
			Taints:     []v1.Taint{{Key: "k", Effect: v1.TaintEffectNoSchedule}},
		},
		Status: v1.NodeStatus{
			Capacity:  v1.ResourceList{v1.ResourceCPU: resource.MustParse("2")},
			Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.100.11"}},
			Images:    []v1.ContainerImage{{Names: []string{"big/image"}, SizeBytes: 1 << 30}},
		},
	}
	want := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:              "n1",
			UID:               "uid-1",
			ResourceVersion:   "42",
			CreationTimestamp: metav1.Unix(1700000000, 0),
			Annotations: map[string]string{
				annManaged:     "true",
				annBackendData: vxlanData,
				annOverwrite:   "203.0.113.1",
				// Cut to one byte more than is ever read: still too long.
				annBackendType: strings.Repeat("v", subnet.MaxAnnotationBytes+1),
			},
		},
		Spec: v1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:0:0:1::/64"}},
	}
	fullCopy := full.DeepCopy()

	got, err := defaultAnn.stripNode(full)
	if err != nil {
		t.Fatalf("stripNode: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stripNode =\n%+v\nwant\n%+v", got, want)
	}
	if !reflect.DeepEqual(full, fullCopy) {
		t.Error("stripNode modified its input")
	}
	// The transform may see an object twice: stripping is idempotent.
	again, err := defaultAnn.stripNode(got)
	if err != nil || !reflect.DeepEqual(again, want) {
		t.Errorf("stripNode(stripNode(n)) = %+v, %v; want %+v", again, err, want)
	}

	t.Run("no annotations", func(t *testing.T) {
		got, err := defaultAnn.stripNode(makeNode("bare", nil, "10.244.2.0/24"))
		if err != nil {
			t.Fatal(err)
		}
		n := got.(*v1.Node)
		if n.Annotations != nil {
			t.Errorf("annotations = %v, want nil", n.Annotations)
		}
		if n.Name != "bare" || n.Spec.PodCIDR != "10.244.2.0/24" {
			t.Errorf("stripped node = %+v", n)
		}
	})
	t.Run("only foreign annotations", func(t *testing.T) {
		got, _ := defaultAnn.stripNode(makeNode("n", map[string]string{"a/b": "c"}))
		if ann := got.(*v1.Node).Annotations; len(ann) != 0 {
			t.Errorf("annotations = %v, want none", ann)
		}
	})
	t.Run("custom prefix", func(t *testing.T) {
		a := NewAnnotations("example.com/flannel")
		got, _ := a.stripNode(makeNode("n", map[string]string{
			annManaged: "true",
			"example.com/flannel/kube-subnet-manager": "true",
		}))
		want := map[string]string{"example.com/flannel/kube-subnet-manager": "true"}
		if ann := got.(*v1.Node).Annotations; !maps.Equal(ann, want) {
			t.Errorf("annotations = %v, want %v", ann, want)
		}
	})
	t.Run("not a node", func(t *testing.T) {
		pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
		got, err := defaultAnn.stripNode(pod)
		if err != nil || got != any(pod) {
			t.Errorf("stripNode(pod) = %v, %v; want the pod unchanged", got, err)
		}
		tomb := "some-key"
		if got, err := defaultAnn.stripNode(tomb); err != nil || got != any(tomb) {
			t.Errorf("stripNode(string) = %v, %v; want it unchanged", got, err)
		}
	})
}

func TestIsManaged(t *testing.T) {
	tests := []struct {
		name string
		ann  map[string]string
		want bool
	}{
		{"true", map[string]string{annManaged: "true"}, true},
		{"false", map[string]string{annManaged: "false"}, false},
		{"empty", map[string]string{annManaged: ""}, false},
		// Upstream compares with "true" exactly.
		{"capitalised", map[string]string{annManaged: "True"}, false},
		{"other prefix", map[string]string{"example.com/kube-subnet-manager": "true"}, false},
		{"no annotation", map[string]string{"x": "y"}, false},
		{"no annotations at all", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := defaultAnn.isManaged(makeNode("n", tt.ann)); got != tt.want {
				t.Errorf("isManaged = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLeaseFromNode(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name    string
		node    *v1.Node
		want    subnet.Lease
		wantErr string // substring; empty for success
	}{
		{
			name: "good node",
			node: makeNode("n2", managedAnn("192.168.100.12"), "10.244.2.0/24"),
			want: subnet.Lease{Name: "n2", Subnet: pfx("10.244.2.0/24"), Attrs: subnet.LeaseAttrs{
				PublicIP: addr("192.168.100.12"), BackendType: "vxlan", BackendData: json.RawMessage(vxlanData),
			}},
		},
		{
			name: "only the legacy podCIDR field",
			node: &v1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: "n2", Annotations: managedAnn("192.168.100.12")},
				Spec:       v1.NodeSpec{PodCIDR: "10.244.2.0/24"},
			},
			want: subnet.Lease{Name: "n2", Subnet: pfx("10.244.2.0/24"), Attrs: subnet.LeaseAttrs{
				PublicIP: addr("192.168.100.12"), BackendType: "vxlan", BackendData: json.RawMessage(vxlanData),
			}},
		},
		{
			name: "podCIDR with host bits is masked",
			node: makeNode("n2", managedAnn("192.168.100.12"), "10.244.2.7/24"),
			want: subnet.Lease{Name: "n2", Subnet: pfx("10.244.2.0/24"), Attrs: subnet.LeaseAttrs{
				PublicIP: addr("192.168.100.12"), BackendType: "vxlan", BackendData: json.RawMessage(vxlanData),
			}},
		},
		{
			name: "dual stack",
			node: makeNode("n2", map[string]string{
				annManaged:     "true",
				annBackendType: "vxlan",
				annBackendData: vxlanData,
				annBackendV6:   `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`,
				annPublicIP:    "192.168.100.12",
				annPublicIPv6:  "fd00:100::12",
			}, "10.244.2.0/24", "fd00:10:244:2::/64"),
			want: subnet.Lease{
				Name: "n2", Subnet: pfx("10.244.2.0/24"), IPv6Subnet: pfx("fd00:10:244:2::/64"),
				Attrs: subnet.LeaseAttrs{
					PublicIP: addr("192.168.100.12"), PublicIPv6: addr("fd00:100::12"),
					BackendType: "vxlan", BackendData: json.RawMessage(vxlanData),
					BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`),
				},
			},
		},
		{
			name: "dual stack, IPv6 first",
			node: makeNode("n2", map[string]string{annPublicIPv6: "fd00:100::12"}, "fd00:10:244:2::/64", "10.244.2.0/24"),
			want: subnet.Lease{
				Name: "n2", Subnet: pfx("10.244.2.0/24"), IPv6Subnet: pfx("fd00:10:244:2::/64"),
				Attrs: subnet.LeaseAttrs{PublicIPv6: addr("fd00:100::12")},
			},
		},
		{
			name: "IPv6 only",
			node: makeNode("n2", nil, "fd00:10:244:2::/64"),
			want: subnet.Lease{Name: "n2", IPv6Subnet: pfx("fd00:10:244:2::/64")},
		},
		{
			name: "null backend data is kept as given",
			node: makeNode("n2", map[string]string{annBackendType: "host-gw", annBackendData: "null", annPublicIP: "192.168.100.12"}, "10.244.2.0/24"),
			want: subnet.Lease{Name: "n2", Subnet: pfx("10.244.2.0/24"), Attrs: subnet.LeaseAttrs{
				PublicIP: addr("192.168.100.12"), BackendType: "host-gw", BackendData: json.RawMessage("null"),
			}},
		},
		{
			name: "empty public-ip is no address",
			node: makeNode("n2", map[string]string{annPublicIP: ""}, "10.244.2.0/24"),
			want: subnet.Lease{Name: "n2", Subnet: pfx("10.244.2.0/24")},
		},
		{
			// Upstream panics here (REFERENCE.md section 3).
			name: "no annotations at all",
			node: makeNode("n2", nil, "10.244.2.0/24"),
			want: subnet.Lease{Name: "n2", Subnet: pfx("10.244.2.0/24")},
		},
		{
			name: "annotations under another prefix are ignored",
			node: makeNode("n2", map[string]string{
				"example.com/public-ip":    "192.168.100.12",
				"example.com/backend-type": "vxlan",
			}, "10.244.2.0/24"),
			want: subnet.Lease{Name: "n2", Subnet: pfx("10.244.2.0/24")},
		},
		{
			name:    "no podCIDR",
			node:    makeNode("n2", managedAnn("192.168.100.12")),
			wantErr: "node n2 has no podCIDR",
		},
		{
			name:    "no podCIDR and no annotations",
			node:    makeNode("n2", nil),
			wantErr: "node n2 has no podCIDR",
		},
		{
			name:    "malformed podCIDR",
			node:    makeNode("n2", managedAnn("192.168.100.12"), "10.244.2.0"),
			wantErr: `node n2 has a malformed podCIDR "10.244.2.0"`,
		},
		{
			name:    "malformed second podCIDR",
			node:    makeNode("n2", managedAnn("192.168.100.12"), "10.244.2.0/24", "fd00::/129"),
			wantErr: `malformed podCIDR "fd00::/129"`,
		},
		{
			name:    "malformed public-ip",
			node:    makeNode("n2", managedAnn("not-an-ip"), "10.244.2.0/24"),
			wantErr: `malformed flannel.alpha.coreos.com/public-ip annotation "not-an-ip"`,
		},
		{
			name:    "IPv6 address in public-ip",
			node:    makeNode("n2", managedAnn("fd00::12"), "10.244.2.0/24"),
			wantErr: `malformed flannel.alpha.coreos.com/public-ip annotation "fd00::12"`,
		},
		{
			name:    "IPv4-mapped IPv6 address in public-ip",
			node:    makeNode("n2", managedAnn("::ffff:192.168.100.12"), "10.244.2.0/24"),
			wantErr: `malformed flannel.alpha.coreos.com/public-ip annotation`,
		},
		{
			name:    "IPv4 address in public-ipv6",
			node:    makeNode("n2", map[string]string{annPublicIPv6: "192.168.100.12"}, "10.244.2.0/24"),
			wantErr: `malformed flannel.alpha.coreos.com/public-ipv6 annotation "192.168.100.12"`,
		},
		{
			name:    "zoned address in public-ipv6",
			node:    makeNode("n2", map[string]string{annPublicIPv6: "fe80::1%eth0"}, "10.244.2.0/24"),
			wantErr: `malformed flannel.alpha.coreos.com/public-ipv6 annotation`,
		},
		{
			name:    "public-ip with a prefix length",
			node:    makeNode("n2", managedAnn("192.168.100.12/24"), "10.244.2.0/24"),
			wantErr: `malformed flannel.alpha.coreos.com/public-ip annotation`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := defaultAnn.leaseFromNode(tt.node)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("leaseFromNode error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("leaseFromNode: %v", err)
			}
			if !got.Equal(tt.want) {
				t.Errorf("leaseFromNode =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestAnnotationPatch(t *testing.T) {
	v4 := subnet.LeaseAttrs{
		PublicIP:    netip.MustParseAddr("192.168.100.11"),
		BackendType: "vxlan",
		BackendData: json.RawMessage(vxlanData),
	}
	full := map[string]string{
		annManaged:     "true",
		annBackendType: "vxlan",
		annBackendData: vxlanData,
		annPublicIP:    "192.168.100.11",
	}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := maps.Clone(m)
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name  string
		node  *v1.Node
		attrs subnet.LeaseAttrs
		want  map[string]string
	}{
		{"nil node gets everything", nil, v4, full},
		{"node without annotations gets everything", makeNode("n1", nil), v4, full},
		{"node with foreign annotations", makeNode("n1", map[string]string{"a": "b"}), v4, full},
		{"nothing differs", makeNode("n1", full), v4, nil},
		{"nothing differs, extra annotations", makeNode("n1", with(full, annOverwrite, "203.0.113.1", "x", "y")), v4, nil},
		{"public ip changed", makeNode("n1", with(full, annPublicIP, "192.168.100.99")), v4,
			map[string]string{annPublicIP: "192.168.100.11"}},
		{"mac changed", makeNode("n1", with(full, annBackendData, `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:00"}`)), v4,
			map[string]string{annBackendData: vxlanData}},
		{"not marked managed", makeNode("n1", with(full, annManaged, "false")), v4,
			map[string]string{annManaged: "true"}},
		{"backend changed", makeNode("n1", full), subnet.LeaseAttrs{PublicIP: v4.PublicIP, BackendType: "host-gw"},
			map[string]string{annBackendType: "host-gw", annBackendData: "null"}},
		{"empty backend data is null", nil, subnet.LeaseAttrs{PublicIP: v4.PublicIP, BackendType: "host-gw", BackendData: json.RawMessage{}},
			map[string]string{annManaged: "true", annBackendType: "host-gw", annBackendData: "null", annPublicIP: "192.168.100.11"}},
		{"null already there", makeNode("n1", map[string]string{annManaged: "true", annBackendType: "host-gw", annBackendData: "null", annPublicIP: "192.168.100.11"}),
			subnet.LeaseAttrs{PublicIP: v4.PublicIP, BackendType: "host-gw"}, nil},
		{"no public ip leaves public-ip alone", makeNode("n1", full), subnet.LeaseAttrs{BackendType: "vxlan", BackendData: json.RawMessage(vxlanData)}, nil},
		{"ipv6", makeNode("n1", full), subnet.LeaseAttrs{
			PublicIP: v4.PublicIP, PublicIPv6: netip.MustParseAddr("fd00::11"), BackendType: "vxlan",
			BackendData: json.RawMessage(vxlanData), BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`),
		}, map[string]string{annPublicIPv6: "fd00::11", annBackendV6: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`}},
		{"ipv6 without v6 data", makeNode("n1", full), subnet.LeaseAttrs{
			PublicIP: v4.PublicIP, PublicIPv6: netip.MustParseAddr("fd00::11"), BackendType: "vxlan", BackendData: json.RawMessage(vxlanData),
		}, map[string]string{annPublicIPv6: "fd00::11", annBackendV6: "null"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before *v1.Node
			if tt.node != nil {
				before = tt.node.DeepCopy()
			}
			got := defaultAnn.annotationPatch(tt.node, tt.attrs)
			if tt.want == nil {
				if got != nil {
					t.Errorf("annotationPatch = %v, want nil", got)
				}
			} else if !maps.Equal(got, tt.want) {
				t.Errorf("annotationPatch =\n%v\nwant\n%v", got, tt.want)
			}
			if tt.node != nil && !reflect.DeepEqual(tt.node, before) {
				t.Error("annotationPatch modified the node")
			}
		})
	}
}

func TestAdvertisedAttrs(t *testing.T) {
	ifaceIP := netip.MustParseAddr("192.168.100.11")
	flagIP := netip.MustParseAddr("198.51.100.11")
	ifaceIPv6 := netip.MustParseAddr("fd00::11")
	in := func(pub, pub6 netip.Addr) subnet.LeaseAttrs {
		return subnet.LeaseAttrs{PublicIP: pub, PublicIPv6: pub6, BackendType: "vxlan", BackendData: json.RawMessage(vxlanData)}
	}
	tests := []struct {
		name                string
		ann                 map[string]string
		explicit, explicit6 bool
		attrs               subnet.LeaseAttrs
		want4, want6        string // "" for no address
		wantErr             string
	}{
		{name: "interface address", attrs: in(ifaceIP, netip.Addr{}), want4: "192.168.100.11"},
		{name: "no annotations at all", ann: nil, attrs: in(ifaceIP, ifaceIPv6), want4: "192.168.100.11", want6: "fd00::11"},
		{name: "explicit --public-ip", explicit: true, attrs: in(flagIP, netip.Addr{}), want4: "198.51.100.11"},
		{name: "node-public-ip beats the interface", ann: map[string]string{annNodePublic: "203.0.113.2"},
			attrs: in(ifaceIP, netip.Addr{}), want4: "203.0.113.2"},
		{name: "explicit --public-ip beats node-public-ip", explicit: true, ann: map[string]string{annNodePublic: "203.0.113.2"},
			attrs: in(flagIP, netip.Addr{}), want4: "198.51.100.11"},
		{name: "overwrite beats the interface", ann: map[string]string{annOverwrite: "203.0.113.1"},
			attrs: in(ifaceIP, netip.Addr{}), want4: "203.0.113.1"},
		{name: "overwrite beats node-public-ip", ann: map[string]string{annOverwrite: "203.0.113.1", annNodePublic: "203.0.113.2"},
			attrs: in(ifaceIP, netip.Addr{}), want4: "203.0.113.1"},
		{name: "overwrite beats explicit --public-ip", explicit: true, ann: map[string]string{annOverwrite: "203.0.113.1", annNodePublic: "203.0.113.2"},
			attrs: in(flagIP, netip.Addr{}), want4: "203.0.113.1"},
		{name: "empty overwrite is ignored", ann: map[string]string{annOverwrite: "", annNodePublic: "203.0.113.2"},
			attrs: in(ifaceIP, netip.Addr{}), want4: "203.0.113.2"},
		{name: "the old public-ip annotation does not feed back", ann: map[string]string{annPublicIP: "203.0.113.9"},
			attrs: in(ifaceIP, netip.Addr{}), want4: "192.168.100.11"},
		{name: "ipv6 overwrite", ann: map[string]string{annOverwriteV6: "2001:db8::1", annNodePublicV6: "2001:db8::2"},
			attrs: in(ifaceIP, ifaceIPv6), want4: "192.168.100.11", want6: "2001:db8::1"},
		{name: "ipv6 node-public-ip", ann: map[string]string{annNodePublicV6: "2001:db8::2"},
			attrs: in(ifaceIP, ifaceIPv6), want4: "192.168.100.11", want6: "2001:db8::2"},
		{name: "explicit --public-ipv6 beats node-public-ipv6", explicit6: true, ann: map[string]string{annNodePublicV6: "2001:db8::2", annNodePublic: "203.0.113.2"},
			attrs: in(ifaceIP, netip.MustParseAddr("2001:db8::9")), want4: "203.0.113.2", want6: "2001:db8::9"},
		{name: "families are independent", ann: map[string]string{annOverwrite: "203.0.113.1"},
			attrs: in(ifaceIP, ifaceIPv6), want4: "203.0.113.1", want6: "fd00::11"},
		{name: "malformed overwrite", ann: map[string]string{annOverwrite: "bogus"},
			attrs: in(ifaceIP, netip.Addr{}), wantErr: `malformed flannel.alpha.coreos.com/public-ip-overwrite annotation "bogus"`},
		{name: "ipv6 in overwrite", ann: map[string]string{annOverwrite: "2001:db8::1"},
			attrs: in(ifaceIP, netip.Addr{}), wantErr: "public-ip-overwrite"},
		{name: "malformed node-public-ip", ann: map[string]string{annNodePublic: "1.2.3"},
			attrs: in(ifaceIP, netip.Addr{}), wantErr: "node-public-ip"},
		{name: "malformed node-public-ip is ignored with explicit --public-ip", explicit: true, ann: map[string]string{annNodePublic: "1.2.3"},
			attrs: in(flagIP, netip.Addr{}), want4: "198.51.100.11"},
		{name: "ipv4 in ipv6 overwrite", ann: map[string]string{annOverwriteV6: "203.0.113.1"},
			attrs: in(ifaceIP, ifaceIPv6), wantErr: "public-ipv6-overwrite"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{NodeName: "n1", ExplicitPublicIP: tt.explicit, ExplicitPublicIPv6: tt.explicit6})
			got, err := s.advertisedAttrs(makeNode("n1", tt.ann, "10.244.1.0/24"), tt.attrs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("advertisedAttrs error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("advertisedAttrs: %v", err)
			}
			if s := addrString(got.PublicIP); s != tt.want4 {
				t.Errorf("PublicIP = %q, want %q", s, tt.want4)
			}
			if s := addrString(got.PublicIPv6); s != tt.want6 {
				t.Errorf("PublicIPv6 = %q, want %q", s, tt.want6)
			}
			if got.BackendType != tt.attrs.BackendType || string(got.BackendData) != string(tt.attrs.BackendData) {
				t.Errorf("backend attributes changed: %+v", got)
			}
		})
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// A peer's annotation longer than subnet.MaxAnnotationBytes makes it
// malformed, and the error quotes only a bounded part of it.
func TestLeaseFromNodeOversized(t *testing.T) {
	for _, key := range []string{annBackendData, annBackendType, annPublicIP} {
		ann := map[string]string{annManaged: "true", annBackendType: "vxlan", annBackendData: vxlanData, annPublicIP: "192.168.100.12"}
		ann[key] = strings.Repeat("x", 250000)
		n := makeNode("fat", ann, "10.244.2.0/24")
		n.CreationTimestamp = metav1.Unix(1700000000, 0)
		stripped, _ := defaultAnn.stripNode(n)
		l, err := defaultAnn.leaseFromNode(stripped.(*v1.Node))
		if err == nil {
			t.Fatalf("%s of 250 KB accepted", key)
		}
		if len(err.Error()) > 2*subnet.MaxQuoteBytes+200 || !strings.Contains(err.Error(), "longer than 4096 bytes") {
			t.Errorf("%s: error of %d bytes: %.300s", key, len(err.Error()), err)
		}
		if l.Created != 1700000000 {
			t.Errorf("Created = %d, want the creationTimestamp", l.Created)
		}
	}
}
