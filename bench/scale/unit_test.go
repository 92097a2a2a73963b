package scale

// Checks of the benchmark's own pieces; they need neither root nor
// FLANNELD_BENCH, so `make test` runs them.

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
)

func TestPeersAreUniqueAndInsideTheNetwork(t *testing.T) {
	network := netip.MustParsePrefix("10.0.0.0/8")
	own := netip.MustParsePrefix(ownPodCIDR)
	seen := map[string]int{}
	for i := 1; i <= maxPeers; i++ {
		p := peerAt(i)
		if !network.Contains(p.subnet.Addr()) || p.subnet.Overlaps(own) {
			t.Fatalf("peer %d: subnet %s outside %s or overlapping the node's %s", i, p.subnet, network, own)
		}
		if network.Contains(p.publicIP) {
			t.Fatalf("peer %d: public IP %s inside the pod network", i, p.publicIP)
		}
		for _, k := range []string{p.name, p.subnet.String(), p.publicIP.String(), p.mac} {
			if j, dup := seen[k]; dup {
				t.Fatalf("peers %d and %d share %s", j, i, k)
			}
			seen[k] = i
		}
	}
	if got := peerAt(258); got.subnet.String() != "10.1.2.0/24" || got.vtepIP.String() != "10.1.2.0" ||
		got.publicIP.String() != "172.16.1.2" || got.mac != "0a:fb:00:00:01:02" {
		t.Errorf("peerAt(258) = %+v", got)
	}
}

// TestNodeObjectIsKubeletSized checks the fields the benchmark promises and
// that one Node is several KiB in protobuf, like a real kubelet's.
func TestNodeObjectIsKubeletSized(t *testing.T) {
	n := peerAt(7).nodeObject()
	if len(n.Labels) < 10 || len(n.Status.Conditions) != 4 || len(n.Status.Images) != imagesPerNode ||
		len(n.Status.Addresses) != 2 || n.Status.NodeInfo.KubeletVersion == "" {
		t.Fatalf("Node lacks kubelet-sized fields: %d labels, %d conditions, %d images, %d addresses",
			len(n.Labels), len(n.Status.Conditions), len(n.Status.Images), len(n.Status.Addresses))
	}
	for _, img := range n.Status.Images {
		if len(img.Names) != 2 || !strings.Contains(img.Names[0], "@sha256:") || len(img.Names[0]) < 64 {
			t.Fatalf("image entry %v", img)
		}
	}
	if got := n.Annotations[annotationBase+"backend-data"]; got != `{"VNI":1,"VtepMAC":"0a:fb:00:00:00:07"}` {
		t.Errorf("backend-data = %s", got)
	}
	info, ok := runtime.SerializerInfoForMediaType(serializer.NewCodecFactory(scheme.Scheme).SupportedMediaTypes(), runtime.ContentTypeProtobuf)
	if !ok {
		t.Fatal("no protobuf serializer")
	}
	n.APIVersion, n.Kind = "v1", "Node"
	var b strings.Builder
	if err := info.Serializer.Encode(n, &b); err != nil {
		t.Fatal(err)
	}
	if b.Len() < 4096 {
		t.Errorf("a peer Node is %d bytes in protobuf; kubelet's are several KiB", b.Len())
	}
	t.Logf("a peer Node is %d bytes in protobuf", b.Len())
}

func TestBatchFiles(t *testing.T) {
	fdb, nr := batchFiles(2)
	wantFDB := "fdb replace 0a:fb:00:00:00:01 dev flannel.1 dst 172.16.0.1 self permanent\n" +
		"fdb replace 0a:fb:00:00:00:02 dev flannel.1 dst 172.16.0.2 self permanent\n"
	wantNR := "neigh replace 10.0.1.0 lladdr 0a:fb:00:00:00:01 dev flannel.1 nud permanent\n" +
		"neigh replace 10.0.2.0 lladdr 0a:fb:00:00:00:02 dev flannel.1 nud permanent\n" +
		"route replace 10.0.1.0/24 via 10.0.1.0 dev flannel.1 onlink proto 102\n" +
		"route replace 10.0.2.0/24 via 10.0.2.0 dev flannel.1 onlink proto 102\n"
	if fdb != wantFDB {
		t.Errorf("fdb batch:\n%s\nwant:\n%s", fdb, wantFDB)
	}
	if nr != wantNR {
		t.Errorf("ip batch:\n%s\nwant:\n%s", nr, wantNR)
	}
}

func TestProcParsers(t *testing.T) {
	status := "Name:\tflanneld\nVmPeak:\t 1250000 kB\nVmHWM:\t   41234 kB\nVmRSS:\t   39000 kB\n"
	if v, err := statusKiB(status, "VmHWM"); err != nil || v != 41234 {
		t.Errorf("VmHWM = %d, %v", v, err)
	}
	if _, err := statusKiB(status, "VmSwap"); err == nil {
		t.Error("a missing field parsed")
	}
	stat := "4242 (flan neld) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 75 0 0 20 0 9 0 100 0 0"
	if d, err := statCPU(stat); err != nil || d != 3250*time.Millisecond {
		t.Errorf("statCPU = %v, %v", d, err)
	}
}

// TestWalkMessages feeds a dump datagram of two routes and NLMSG_DONE.
func TestWalkMessages(t *testing.T) {
	msg := func(typ uint16, seq uint32, payload []byte) []byte {
		b := make([]byte, nlmsgHdrLen, align4(nlmsgHdrLen+len(payload)))
		binary.NativeEndian.PutUint32(b[0:], uint32(nlmsgHdrLen+len(payload)))
		binary.NativeEndian.PutUint16(b[4:], typ)
		binary.NativeEndian.PutUint32(b[8:], seq)
		b = append(b, payload...)
		return b[:cap(b)]
	}
	route := func(proto byte, oif uint32) []byte {
		r := make([]byte, rtmsgLen)
		r[0], r[4], r[5] = unix.AF_INET, unix.RT_TABLE_MAIN, proto
		return appendAttrU32(r, rtaOif, oif)
	}
	var dgram []byte
	dgram = append(dgram, msg(unix.RTM_NEWROUTE, 9, route(routeProtocol, 5))...)
	dgram = append(dgram, msg(unix.RTM_NEWROUTE, 9, route(2, 5))...)
	dgram = append(dgram, msg(unix.RTM_NEWROUTE, 8, route(routeProtocol, 5))...) // another request
	dgram = append(dgram, msg(unix.NLMSG_DONE, 9, make([]byte, 4))...)
	var n int
	done, err := walkMessages(dgram, 9, func(typ uint16, p []byte) {
		if oif, ok := attrU32(p[rtmsgLen:], rtaOif); ok && p[5] == routeProtocol && oif == 5 {
			n++
		}
	})
	if err != nil || !done || n != 1 {
		t.Errorf("walkMessages: done %v, err %v, counted %d; want done, nil, 1", done, err, n)
	}
}

func TestGrowths(t *testing.T) {
	rs := []result{
		{n: 1000, end: usage{peakRSSKiB: 20000}},
		{n: 5000, end: usage{peakRSSKiB: 30000}},
		{n: 10000, end: usage{peakRSSKiB: 50000}},
	}
	g := growths(rs)
	if len(g) != 2 || g[1] != (growth{5000, 10000, 4}) || g[0] != (growth{1000, 5000, 2.5}) {
		t.Errorf("growths = %+v", g)
	}
}

func TestParseDaemonMetrics(t *testing.T) {
	text := `# HELP go_memstats_heap_inuse_bytes x
go_memstats_heap_inuse_bytes 2.097152e+07
go_goroutines 42
flanneld_sync_passes_total{kind="full"} 3
flanneld_sync_passes_total{kind="incremental"} 7
flanneld_sync_duration_seconds_sum{kind="full"} 1.5
flanneld_watch_events_total{type="add"} 10
flanneld_watch_events_total{type="delete"} 5
`
	d, err := parseDaemonMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := daemonMetrics{heapInuse: 20 << 20, goroutines: 42, fullPasses: 3, incrPasses: 7, fullSeconds: 1.5, watchEvents: 15}
	if d != want {
		t.Errorf("got %+v, want %+v", d, want)
	}
}
