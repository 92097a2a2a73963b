package kube

import (
	"bytes"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"

	"github.com/flanneld/flanneld/subnet"
)

// kubeletNode is a Node as a kubelet fills it in, with the annotations of
// a flannel peer.
func kubeletNode(i int) v1.Node {
	n := v1.Node{
		TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              fmt.Sprintf("node-%d", i),
			UID:               "uid-1",
			ResourceVersion:   fmt.Sprint(1000 + i),
			CreationTimestamp: metav1.Unix(int64(1700000000+i), 0),
			Labels:            map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": "node"},
			Annotations: map[string]string{
				"node.alpha.kubernetes.io/ttl":                 "0",
				"flannel.alpha.coreos.com/kube-subnet-manager": "true",
				"flannel.alpha.coreos.com/backend-type":        "vxlan",
				"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`,
				"flannel.alpha.coreos.com/public-ip":           "192.168.100.12",
			},
			Finalizers: []string{"x"},
		},
		Spec: v1.NodeSpec{
			PodCIDR:    fmt.Sprintf("10.244.%d.0/24", i),
			PodCIDRs:   []string{fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("fd00:%x::/64", i)},
			ProviderID: "kind://x",
			Taints:     []v1.Taint{{Key: "k", Effect: v1.TaintEffectNoSchedule}},
		},
		Status: v1.NodeStatus{
			Capacity:   v1.ResourceList{v1.ResourceCPU: resource.MustParse("2")},
			Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, Message: "kubelet is posting ready status"}},
			Addresses:  []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.100.12"}},
			NodeInfo:   v1.NodeSystemInfo{KernelVersion: "6.1.0", OSImage: "Debian"},
		},
	}
	for j := range 30 {
		n.Status.Images = append(n.Status.Images, v1.ContainerImage{Names: []string{fmt.Sprintf("registry.example/image-%d:v1", j)}, SizeBytes: 1 << 20})
	}
	return n
}

func encodeProtobuf(t testing.TB, obj runtime.Object) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := protobuf.NewSerializer(clientScheme, clientScheme).Encode(obj, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeNodeList(t *testing.T) {
	remaining := int64(7)
	list := &v1.NodeList{
		TypeMeta: metav1.TypeMeta{Kind: "NodeList", APIVersion: "v1"},
		ListMeta: metav1.ListMeta{ResourceVersion: "4242", Continue: "token", RemainingItemCount: &remaining},
	}
	for i := range 3 {
		list.Items = append(list.Items, kubeletNode(i))
	}
	list.Items = append(list.Items, v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bare"}})
	list.Items[1].Annotations["flannel.alpha.coreos.com/backend-data"] = strings.Repeat("d", 255000)
	got, err := decodeNodeList(encodeProtobuf(t, list))
	if err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != "4242" || got.Continue != "token" || got.RemainingItemCount == nil || *got.RemainingItemCount != 7 {
		t.Errorf("list metadata = %+v", got.ListMeta)
	}
	if len(got.Items) != len(list.Items) {
		t.Fatalf("got %d items, want %d", len(got.Items), len(list.Items))
	}
	for i := range list.Items {
		want := list.Items[i]
		want = v1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: want.Name, UID: want.UID, ResourceVersion: want.ResourceVersion,
				CreationTimestamp: want.CreationTimestamp, Annotations: maps.Clone(want.Annotations)},
			Spec: v1.NodeSpec{PodCIDR: want.Spec.PodCIDR, PodCIDRs: want.Spec.PodCIDRs},
		}
		if i == 1 { // an oversized value is kept cut, just long enough to be refused
			want.Annotations["flannel.alpha.coreos.com/backend-data"] = strings.Repeat("d", subnet.MaxAnnotationBytes+1)
		}
		if !reflect.DeepEqual(got.Items[i], want) {
			t.Errorf("item %d:\n got %+v\nwant %+v", i, got.Items[i], want)
		}
	}
}

func TestDecodeNodeListErrors(t *testing.T) {
	good := encodeProtobuf(t, &v1.NodeList{Items: []v1.Node{kubeletNode(1)}})
	for name, body := range map[string][]byte{
		"json":      []byte(`{"kind":"NodeList"}`),
		"truncated": good[:len(good)-10],
		"bad tag":   append(append([]byte{}, protobufMagic...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
	} {
		if _, err := decodeNodeList(body); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if l, err := decodeNodeList(protobufMagic); err != nil || len(l.Items) != 0 {
		t.Errorf("empty envelope: %v, %v", l, err)
	}
}

// FuzzDecodeNodeList: whatever the bytes, no panic.
func FuzzDecodeNodeList(f *testing.F) {
	f.Add(encodeProtobuf(f, &v1.NodeList{Items: []v1.Node{kubeletNode(1)}}))
	f.Add([]byte("k8s\x00\x12\x03\x12\x01\x0a"))
	f.Fuzz(func(t *testing.T, body []byte) {
		_, _ = decodeNodeList(body)
	})
}

// BenchmarkDecodeNodeList compares the field-skipping decoder with a
// whole-object decode of a page of 500 kubelet-sized Nodes.
func BenchmarkDecodeNodeList(b *testing.B) {
	list := &v1.NodeList{TypeMeta: metav1.TypeMeta{Kind: "NodeList", APIVersion: "v1"}}
	for i := range 500 {
		list.Items = append(list.Items, kubeletNode(i))
	}
	body := encodeProtobuf(b, list)
	b.Run("fields", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeNodeList(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("whole", func(b *testing.B) {
		b.ReportAllocs()
		dec := clientCodecs.UniversalDeserializer()
		for b.Loop() {
			if err := runtime.DecodeInto(dec, body, &v1.NodeList{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
