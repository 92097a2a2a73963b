package scale

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Addressing. The pod Network is 10.0.0.0/8: the measured node has
// 10.0.0.0/24 and peer i (1, 2, ...) has 10.<i/256>.<i%256>.0/24, which
// leaves room for 65,535 peers. Peers' public IPs come from 172.16.0.0/12,
// outside the pod Network; nothing is ever sent to them, they only go into
// the measured node's FDB.
const (
	netConf        = `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`
	ownPodCIDR     = "10.0.0.0/24"
	annotationBase = "flannel.alpha.coreos.com/"
	vxlanDevice    = "flannel.1"
	maxPeers       = 1<<16 - 1
	imagesPerNode  = 30
)

var publicIPBase = netip.MustParseAddr("172.16.0.0")

// peer is what one fake Node advertises.
type peer struct {
	index    int
	name     string
	subnet   netip.Prefix // podCIDR
	vtepIP   netip.Addr   // the subnet's first address: neighbour and gateway
	publicIP netip.Addr
	mac      string // VtepMAC
}

// peerAt returns peer i (1 <= i <= maxPeers).
func peerAt(i int) peer {
	if i < 1 || i > maxPeers {
		panic(fmt.Sprintf("peer index %d out of range 1..%d", i, maxPeers))
	}
	vtep := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0})
	pub := publicIPBase.As4()
	pub[2], pub[3] = byte(i>>8), byte(i)
	return peer{
		index:    i,
		name:     fmt.Sprintf("peer-%05d", i),
		subnet:   netip.PrefixFrom(vtep, 24),
		vtepIP:   vtep,
		publicIP: netip.AddrFrom4(pub),
		// 0x0a: unicast, locally administered.
		mac: fmt.Sprintf("0a:fb:00:00:%02x:%02x", byte(i>>8), byte(i)),
	}
}

// digest is a stable fake sha256 digest (64 hex digits) for s.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// nodeImages is the image list a kubelet reports: thirty entries of two
// names each (tag and digest). Real clusters run mostly the same images on
// every node, so the list is the same for every peer.
var nodeImages = func() []corev1.ContainerImage {
	images := make([]corev1.ContainerImage, imagesPerNode)
	for j := range images {
		repo := fmt.Sprintf("registry.example/team/image-%d", j)
		images[j] = corev1.ContainerImage{
			Names: []string{
				repo + "@sha256:" + digest(repo),
				fmt.Sprintf("%s:v1.%d.%d", repo, j%7, j),
			},
			SizeBytes: int64(20_000_000 + 3_500_000*j),
		}
	}
	return images
}()

// nodeObject is a kubelet-sized Node for p, with the annotations a peer's
// flanneld publishes.
func (p peer) nodeObject() *corev1.Node {
	zone := fmt.Sprintf("zone-%c", 'a'+byte(p.index%3))
	hb := metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	condition := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, LastHeartbeatTime: hb, LastTransitionTime: hb, Reason: reason, Message: msg}
	}
	resources := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("8"),
		corev1.ResourceMemory:           resource.MustParse("32863796Ki"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("101203600Ki"),
		"hugepages-1Gi":                 resource.MustParse("0"),
		"hugepages-2Mi":                 resource.MustParse("0"),
	}
	allocatable := resources.DeepCopy()
	allocatable[corev1.ResourceMemory] = resource.MustParse("32761396Ki")
	allocatable[corev1.ResourceEphemeralStorage] = resource.MustParse("93268242932")
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.name,
			Labels: map[string]string{
				"kubernetes.io/hostname":           p.name,
				"kubernetes.io/os":                 "linux",
				"kubernetes.io/arch":               "amd64",
				"beta.kubernetes.io/os":            "linux",
				"beta.kubernetes.io/arch":          "amd64",
				"topology.kubernetes.io/region":    "region-1",
				"topology.kubernetes.io/zone":      zone,
				"node.kubernetes.io/instance-type": "m5.2xlarge",
				"node-role.kubernetes.io/worker":   "",
				"example.com/node-pool":            "pool-general",
			},
			Annotations: map[string]string{
				"node.alpha.kubernetes.io/ttl":                           "0",
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
				annotationBase + "kube-subnet-manager":                   "true",
				annotationBase + "backend-type":                          "vxlan",
				annotationBase + "backend-data":                          fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, p.mac),
				annotationBase + "public-ip":                             p.publicIP.String(),
			},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:    p.subnet.String(),
			PodCIDRs:   []string{p.subnet.String()},
			ProviderID: "example://region-1/" + zone + "/" + p.name,
		},
		Status: corev1.NodeStatus{
			Capacity:    resources,
			Allocatable: allocatable,
			Phase:       corev1.NodeRunning,
			Conditions: []corev1.NodeCondition{
				condition(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
				condition(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
				condition(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
				condition(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kubelet is posting ready status"),
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: p.publicIP.String()},
				{Type: corev1.NodeHostName, Address: p.name},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
			NodeInfo: corev1.NodeSystemInfo{
				MachineID:               digest("machine-" + p.name)[:32],
				SystemUUID:              fmt.Sprintf("ec2%05x-0000-4000-8000-%012x", p.index, p.index),
				BootID:                  fmt.Sprintf("%08x-1111-4222-8333-%012x", p.index, p.index),
				KernelVersion:           "6.1.0-31-cloud-amd64",
				OSImage:                 "Debian GNU/Linux 12 (bookworm)",
				ContainerRuntimeVersion: "containerd://1.7.24",
				KubeletVersion:          "v1.34.4",
				KubeProxyVersion:        "v1.34.4",
				OperatingSystem:         "linux",
				Architecture:            "amd64",
			},
			Images: nodeImages,
		},
	}
}

// maxPad keeps a padded Node under the API server's 256 KiB limit on the
// total size of its annotations.
const maxPad = 250000

// padAnnotations adds about pad bytes of annotations that flanneld never
// reads (a "fat" Node, as tools that store state in annotations make
// them): one under flannel's own prefix, the rest under another.
func padAnnotations(n *corev1.Node, pad int) {
	pad = min(pad, maxPad)
	if pad <= 0 {
		return
	}
	half := pad / 2
	n.Annotations[annotationBase+"unread"] = strings.Repeat("f", half)
	n.Annotations["example.com/state"] = strings.Repeat("s", pad-half)
}
