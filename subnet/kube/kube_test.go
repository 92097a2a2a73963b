package kube

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/flanneld/flanneld/subnet"
)

// waitTimeout bounds every wait for the informer; nothing here should take
// more than a fraction of it.
const waitTimeout = 10 * time.Second

const ownName = "self"

// fakeCluster is a fake clientset whose first Node watch is observable: the
// fake's watch ignores resource versions, so a Node written between the
// informer's list and its watch would be lost. Tests write Nodes only once
// watching is closed.
type fakeCluster struct {
	t        *testing.T
	client   *fake.Clientset
	watching chan struct{}
}

func newFakeCluster(t *testing.T, objs ...runtime.Object) *fakeCluster {
	t.Helper()
	c := &fakeCluster{t: t, client: fake.NewClientset(objs...), watching: make(chan struct{})}
	var once sync.Once
	c.client.PrependWatchReactor("nodes", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := c.client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		once.Do(func() { close(c.watching) })
		return true, w, nil
	})
	return c
}

func (c *fakeCluster) nodes() interface {
	Create(context.Context, *v1.Node, metav1.CreateOptions) (*v1.Node, error)
	Update(context.Context, *v1.Node, metav1.UpdateOptions) (*v1.Node, error)
	Get(context.Context, string, metav1.GetOptions) (*v1.Node, error)
	Delete(context.Context, string, metav1.DeleteOptions) error
} {
	return c.client.CoreV1().Nodes()
}

func (c *fakeCluster) create(n *v1.Node) {
	c.t.Helper()
	if _, err := c.nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create node %s: %v", n.Name, err)
	}
}

func (c *fakeCluster) get(name string) *v1.Node {
	c.t.Helper()
	n, err := c.nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatalf("get node %s: %v", name, err)
	}
	return n
}

// update reads the node, lets change modify it and writes it back.
func (c *fakeCluster) update(name string, change func(n *v1.Node)) {
	c.t.Helper()
	n := c.get(name)
	change(n)
	if _, err := c.nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		c.t.Fatalf("update node %s: %v", name, err)
	}
}

func (c *fakeCluster) delete(name string) {
	c.t.Helper()
	if err := c.nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatalf("delete node %s: %v", name, err)
	}
}

// patches returns the node patches the source sent.
func (c *fakeCluster) patches() []k8stesting.PatchAction {
	var out []k8stesting.PatchAction
	for _, a := range c.client.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok && a.GetResource().Resource == "nodes" {
			out = append(out, p)
		}
	}
	return out
}

func testNetwork(t *testing.T, conf string) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(conf))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	return c
}

const netConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

// startSource starts a Source for ownName on c and waits until it watches.
func startSource(t *testing.T, c *fakeCluster, cfg Config) (*Source, *subnet.Peers) {
	t.Helper()
	if cfg.Client == nil {
		cfg.Client = clientset{c.client}
	}
	if cfg.NodeName == "" {
		cfg.NodeName = ownName
	}
	if cfg.Network == nil {
		cfg.Network = testNetwork(t, netConf)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := New(cfg)
	peers := subnet.NewPeers()
	if err := s.Start(ctx, peers); err != nil {
		t.Fatalf("Start: %v", err)
	}
	select {
	case <-c.watching:
	case <-time.After(waitTimeout):
		t.Fatal("the source never started watching Nodes")
	}
	return s, peers
}

// peerMirror is what a sync loop would know: the peers drained so far.
type peerMirror struct {
	peers  *subnet.Peers
	leases map[string]subnet.Lease
	synced bool
}

func newPeerMirror(p *subnet.Peers) *peerMirror {
	return &peerMirror{peers: p, leases: map[string]subnet.Lease{}}
}

func (m *peerMirror) drain() {
	changed, synced := m.peers.Drain()
	for name, l := range changed {
		if l == nil || l.Err != nil { // deleted, or known but unusable
			delete(m.leases, name)
		} else {
			m.leases[name] = *l
		}
	}
	m.synced = synced
}

// waitFor drains until cond holds.
func (m *peerMirror) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		m.drain()
		if cond() {
			return
		}
		select {
		case <-m.peers.Changed():
		case <-deadline:
			t.Fatalf("timed out waiting for %s; peers: %v (synced %v)", what, slices.Sorted(maps.Keys(m.leases)), m.synced)
		}
	}
}

func (m *peerMirror) has(name string) func() bool {
	return func() bool { _, ok := m.leases[name]; return ok }
}

func (m *peerMirror) assertNames(t *testing.T, want ...string) {
	t.Helper()
	got := slices.Sorted(maps.Keys(m.leases))
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("peers = %v, want %v", got, want)
	}
}

func peerLease(name, sn, pub string) subnet.Lease {
	return subnet.Lease{Name: name, Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{
		PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan", BackendData: json.RawMessage(vxlanData),
	}}
}

func TestSourcePeers(t *testing.T) {
	// Some nodes come with the initial list, the others through the watch.
	c := newFakeCluster(t,
		makeNode(ownName, nil),
		makeNode("listed", managedAnn("192.168.100.10"), "10.244.10.0/24"),
		makeNode("listed-unmanaged", nil, "10.244.11.0/24"),
	)
	_, peers := startSource(t, c, Config{})
	m := newPeerMirror(peers)
	m.waitFor(t, "the initial sync", func() bool { return m.synced })
	m.assertNames(t, "listed")

	c.create(makeNode("good", managedAnn("192.168.100.12"), "10.244.2.0/24"))
	c.create(makeNode("unmanaged", map[string]string{annPublicIP: "192.168.100.13"}, "10.244.3.0/24"))
	c.create(makeNode("malformed", managedAnn("not-an-ip"), "10.244.4.0/24"))
	c.create(makeNode("no-cidr", managedAnn("192.168.100.15")))
	c.create(makeNode("bare", nil, "10.244.6.0/24"))
	c.create(makeNode("bare-no-cidr", nil))
	// Events are handled in order: once the sentinel is in, so is the rest.
	c.create(makeNode("sentinel-1", managedAnn("192.168.100.99"), "10.244.99.0/24"))
	m.waitFor(t, "sentinel-1", m.has("sentinel-1"))
	m.assertNames(t, "listed", "good", "sentinel-1")
	if got, want := m.leases["good"], peerLease("good", "10.244.2.0/24", "192.168.100.12"); !got.Equal(want) {
		t.Errorf("lease of good = %+v, want %+v", got, want)
	}
	if got, want := m.leases["listed"], peerLease("listed", "10.244.10.0/24", "192.168.100.10"); !got.Equal(want) {
		t.Errorf("lease of listed = %+v, want %+v", got, want)
	}

	// Transitions: a node stops being managed, one starts, a broken one is
	// fixed, one is deleted, one breaks, one moves, and this node itself
	// becomes managed (it is never its own peer).
	c.update("good", func(n *v1.Node) { n.Annotations[annManaged] = "false" })
	c.update("unmanaged", func(n *v1.Node) { maps.Copy(n.Annotations, managedAnn("192.168.100.13")) })
	c.update("malformed", func(n *v1.Node) { n.Annotations[annPublicIP] = "192.168.100.14" })
	c.update("no-cidr", func(n *v1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.5.0/24", []string{"10.244.5.0/24"} })
	c.delete("listed")
	c.update("sentinel-1", func(n *v1.Node) { n.Annotations[annPublicIP] = "fd00::99" })
	c.update(ownName, func(n *v1.Node) {
		n.Annotations = managedAnn("192.168.100.11")
		n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.1.0/24", []string{"10.244.1.0/24"}
	})
	c.create(makeNode("sentinel-2", managedAnn("192.168.100.98"), "10.244.98.0/24"))
	m.waitFor(t, "sentinel-2", m.has("sentinel-2"))
	m.assertNames(t, "unmanaged", "malformed", "no-cidr", "sentinel-2")
	if got, want := m.leases["malformed"], peerLease("malformed", "10.244.4.0/24", "192.168.100.14"); !got.Equal(want) {
		t.Errorf("lease of the repaired node = %+v, want %+v", got, want)
	}

	// A peer's new MAC reaches the set as a change.
	newData := `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`
	c.update("sentinel-2", func(n *v1.Node) { n.Annotations[annBackendData] = newData })
	m.waitFor(t, "the new MAC", func() bool { return string(m.leases["sentinel-2"].Attrs.BackendData) == newData })
}

func TestSourceMarksPeersSynced(t *testing.T) {
	c := newFakeCluster(t, makeNode("peer", managedAnn("192.168.100.12"), "10.244.2.0/24"))
	_, peers := startSource(t, c, Config{})
	m := newPeerMirror(peers)
	m.waitFor(t, "the initial sync", func() bool { return m.synced })
	// Once synced, the listed peer must already be there: a sync loop that
	// pruned now would otherwise remove a live peer's routes.
	m.assertNames(t, "peer")
}

// TestSourceSyncedOnlyAfterHandlers checks that the source reports its
// initial view only once its event handler has seen every listed Node. The
// informer's own HasSynced turns true as soon as the list is in its store,
// tens of milliseconds before the handler has run for thousands of Nodes
// (client-go documents this: "this doesn't tell you if an individual handler
// is synced"). PreviousAttrs must not answer nil for a Node that exists, and
// the peers must not be marked synced while listed peers are missing (a sync
// loop would prune their routes). The race is provoked by calling
// PreviousAttrs the moment the informer says it has synced.
func TestSourceSyncedOnlyAfterHandlers(t *testing.T) {
	if testing.Short() {
		t.Skip("lists thousands of nodes")
	}
	const malformed, good = 2000, 1000
	var objs []runtime.Object
	for i := range malformed + good {
		ann := managedAnn("192.168.100.12")
		if i%3 != 0 {
			ann = managedAnn("bad") // costs the handler a log line
		}
		objs = append(objs, makeNode("peer-"+strconv.Itoa(i), ann, "10.244.2.0/24"))
	}
	// Listed last: the fake lists in name order.
	const own = "zz-self"
	objs = append(objs, makeNode(own, map[string]string{annBackendType: "vxlan", annBackendData: vxlanData}, "10.244.1.0/24"))
	for round := range 5 {
		c := newFakeCluster(t, objs...)
		s, peers := startSource(t, c, Config{NodeName: own})
		deadline := time.Now().Add(waitTimeout)
		for !s.informer.HasSynced() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Microsecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		prev, err := s.PreviousAttrs(ctx)
		cancel()
		if err != nil {
			t.Fatalf("PreviousAttrs: %v", err)
		}
		if prev == nil {
			t.Fatalf("round %d: PreviousAttrs returned nil although this node, with its annotations, was in the initial list", round)
		}
		m := newPeerMirror(peers)
		m.waitFor(t, "the initial sync", func() bool { return m.synced })
		if len(m.leases) != good {
			t.Fatalf("round %d: peers marked synced with %d of the %d listed peers", round, len(m.leases), good)
		}
	}
}

func TestSourcePreviousAttrs(t *testing.T) {
	tests := []struct {
		name string
		own  *v1.Node // nil: the node does not exist
		want *subnet.LeaseAttrs
		// waits: the lease (podCIDR) is not known yet, so PreviousAttrs
		// waits for it (the device must not be created before).
		waits bool
	}{
		{name: "no node", own: nil, waits: true},
		{name: "node without annotations", own: makeNode(ownName, nil, "10.244.1.0/24"), want: nil},
		{name: "node without backend-type", own: makeNode(ownName, map[string]string{annBackendData: vxlanData}, "10.244.1.0/24"), want: nil},
		{
			name: "previous run",
			own:  makeNode(ownName, managedAnn("192.168.100.11"), "10.244.1.0/24"),
			want: &subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.100.11"), BackendType: "vxlan", BackendData: json.RawMessage(vxlanData)},
		},
		{
			// Only the backend's identity matters; a bad annotation
			// elsewhere must not lose it.
			name:  "previous run, podCIDR gone",
			own:   makeNode(ownName, managedAnn("192.168.100.11")),
			waits: true,
		},
		{
			name: "previous run, malformed public-ip",
			own:  makeNode(ownName, managedAnn("bogus"), "10.244.1.0/24"),
			want: &subnet.LeaseAttrs{BackendType: "vxlan", BackendData: json.RawMessage(vxlanData)},
		},
		{
			name: "previous host-gw run",
			own:  makeNode(ownName, map[string]string{annManaged: "true", annBackendType: "host-gw", annBackendData: "null", annPublicIP: "192.168.100.11"}, "10.244.1.0/24"),
			want: &subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.100.11"), BackendType: "host-gw", BackendData: json.RawMessage("null")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var objs []runtime.Object
			objs = append(objs, makeNode("other", managedAnn("192.168.100.12"), "10.244.2.0/24"))
			if tt.own != nil {
				objs = append(objs, tt.own)
			}
			c := newFakeCluster(t, objs...)
			s, _ := startSource(t, c, Config{})
			timeout := waitTimeout
			if tt.waits {
				timeout = 500 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			got, err := s.PreviousAttrs(ctx)
			if tt.waits {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("PreviousAttrs = %v, %v; want it to wait for the podCIDR", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("PreviousAttrs: %v", err)
			}
			switch {
			case tt.want == nil && got != nil:
				t.Errorf("PreviousAttrs = %+v, want nil", *got)
			case tt.want != nil && got == nil:
				t.Errorf("PreviousAttrs = nil, want %+v", *tt.want)
			case tt.want != nil && !got.Equal(*tt.want):
				t.Errorf("PreviousAttrs = %+v, want %+v", *got, *tt.want)
			}
		})
	}
}

func TestSourcePreviousAttrsCanceled(t *testing.T) {
	// A client whose list never answers: PreviousAttrs waits for the
	// informer until ctx ends.
	c := newFakeCluster(t)
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	c.client.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-block
		return true, nil, errors.New("stopped")
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := New(Config{Client: clientset{c.client}, NodeName: ownName, Network: testNetwork(t, netConf)})
	if err := s.Start(ctx, subnet.NewPeers()); err != nil {
		t.Fatal(err)
	}
	waitCtx, waitCancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer waitCancel()
	if _, err := s.PreviousAttrs(waitCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("PreviousAttrs error = %v, want context.DeadlineExceeded", err)
	}
	if _, err := s.AcquireLease(waitCtx, subnet.LeaseAttrs{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("AcquireLease error = %v, want context.DeadlineExceeded", err)
	}
}

var ownAttrs = subnet.LeaseAttrs{
	PublicIP:    netip.MustParseAddr("192.168.100.11"),
	BackendType: "vxlan",
	BackendData: json.RawMessage(vxlanData),
}

type acquireResult struct {
	lease subnet.Lease
	err   error
}

func acquireAsync(ctx context.Context, s *Source, attrs subnet.LeaseAttrs) <-chan acquireResult {
	ch := make(chan acquireResult, 1)
	go func() {
		l, err := s.AcquireLease(ctx, attrs)
		ch <- acquireResult{l, err}
	}()
	return ch
}

func assertWaiting(t *testing.T, ch <-chan acquireResult, d time.Duration) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("AcquireLease returned %+v, %v; want it to wait", r.lease, r.err)
	case <-time.After(d):
	}
}

func awaitAcquire(t *testing.T, ch <-chan acquireResult) acquireResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitTimeout):
		t.Fatal("AcquireLease did not return")
	}
	panic("unreachable")
}

func TestSourceAcquireLeaseWaitsForPodCIDR(t *testing.T) {
	c := newFakeCluster(t, makeNode(ownName, nil), makeNode("peer", managedAnn("192.168.100.12"), "10.244.2.0/24"))
	s, _ := startSource(t, c, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()

	ch := acquireAsync(ctx, s, ownAttrs)
	assertWaiting(t, ch, 500*time.Millisecond)
	if p := c.patches(); len(p) != 0 {
		t.Fatalf("patched the node before it had a podCIDR: %v", p)
	}

	// The controller-manager assigns the podCIDR: AcquireLease returns at
	// once (woken by the informer, not by its backoff).
	assigned := time.Now()
	c.update(ownName, func(n *v1.Node) {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.1.0/24", []string{"10.244.1.0/24"}
	})
	r := awaitAcquire(t, ch)
	if r.err != nil {
		t.Fatalf("AcquireLease: %v", r.err)
	}
	if d := time.Since(assigned); d > 5*time.Second {
		t.Errorf("AcquireLease took %v after the podCIDR was set", d)
	}
	want := subnet.Lease{Name: ownName, Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: ownAttrs}
	if !r.lease.Equal(want) {
		t.Errorf("lease = %+v, want %+v", r.lease, want)
	}

	// The annotations went through one strategic merge patch of the
	// status subresource (upstream does the same; RBAC grants only
	// nodes/status patch). The fake applies a status patch to the whole
	// object, so the annotations are visible on the Node; a real API
	// server applies metadata changes sent to /status as well.
	patches := c.patches()
	if len(patches) != 1 {
		t.Fatalf("%d node patches, want 1: %v", len(patches), patches)
	}
	p := patches[0]
	if p.GetName() != ownName || p.GetSubresource() != "status" || p.GetPatchType() != types.StrategicMergePatchType {
		t.Errorf("patch of %s/%s type %s, want %s/status strategic merge", p.GetName(), p.GetSubresource(), p.GetPatchType(), ownName)
	}
	wantAnn := managedAnn("192.168.100.11")
	if got := patchedAnnotations(t, p); !maps.Equal(got, wantAnn) {
		t.Errorf("patched annotations = %v, want %v", got, wantAnn)
	}
	if got := c.get(ownName).Annotations; !maps.Equal(got, wantAnn) {
		t.Errorf("node annotations = %v, want %v", got, wantAnn)
	}

	// Once the informer has seen the annotations, acquiring again (a
	// restart with the same device) patches nothing.
	waitOwn(t, s, func(n *v1.Node) bool { return n.Annotations[annManaged] == "true" })
	r2, err := s.AcquireLease(ctx, ownAttrs)
	if err != nil || !r2.Equal(want) {
		t.Fatalf("second AcquireLease = %+v, %v; want %+v", r2, err, want)
	}
	if n := len(c.patches()); n != 1 {
		t.Errorf("second AcquireLease with unchanged attributes patched the node (%d patches)", n)
	}

	// A new MAC is patched alone.
	newAttrs := ownAttrs
	newAttrs.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`)
	if _, err := s.AcquireLease(ctx, newAttrs); err != nil {
		t.Fatal(err)
	}
	patches = c.patches()
	if len(patches) != 2 {
		t.Fatalf("%d patches, want 2", len(patches))
	}
	if got := patchedAnnotations(t, patches[1]); !maps.Equal(got, map[string]string{annBackendData: string(newAttrs.BackendData)}) {
		t.Errorf("second patch = %v, want only the new backend-data", got)
	}
}

// patchedAnnotations decodes the annotations of a node patch, which must
// touch nothing else.
func patchedAnnotations(t *testing.T, p k8stesting.PatchAction) map[string]string {
	t.Helper()
	var body map[string]map[string]map[string]string
	if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
		t.Fatalf("patch body %s: %v", p.GetPatch(), err)
	}
	if len(body) != 1 || len(body["metadata"]) != 1 {
		t.Errorf("patch %s touches more than metadata.annotations", p.GetPatch())
	}
	return body["metadata"]["annotations"]
}

func waitOwn(t *testing.T, s *Source, cond func(n *v1.Node) bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		if n := s.ownNode(); n != nil && cond(n) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("timed out waiting for the informer's view of this node")
}

func TestSourceAcquireLeaseWaitsForNode(t *testing.T) {
	c := newFakeCluster(t)
	s, _ := startSource(t, c, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	ch := acquireAsync(ctx, s, ownAttrs)
	assertWaiting(t, ch, 300*time.Millisecond)
	c.create(makeNode(ownName, nil, "10.244.1.0/24"))
	r := awaitAcquire(t, ch)
	if r.err != nil || r.lease.Subnet != netip.MustParsePrefix("10.244.1.0/24") {
		t.Fatalf("AcquireLease = %+v, %v", r.lease, r.err)
	}
}

func TestSourceAcquireLeaseCanceledWhileWaiting(t *testing.T) {
	c := newFakeCluster(t, makeNode(ownName, nil))
	s, _ := startSource(t, c, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	ch := acquireAsync(ctx, s, ownAttrs)
	assertWaiting(t, ch, 200*time.Millisecond)
	cancel()
	r := awaitAcquire(t, ch)
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("AcquireLease error = %v, want context.Canceled", r.err)
	}
}

func TestSourceAcquireLeaseErrors(t *testing.T) {
	tests := []struct {
		name    string
		conf    string
		own     *v1.Node
		wantErr []string // substrings
	}{
		{
			name:    "podCIDR outside Network",
			own:     makeNode(ownName, nil, "10.99.1.0/24"),
			wantErr: []string{ownName, "podCIDR", "10.99.1.0/24", "outside", "10.244.0.0/16"},
		},
		{
			name:    "podCIDR larger than Network",
			own:     makeNode(ownName, nil, "10.0.0.0/8"),
			wantErr: []string{ownName, "10.0.0.0/8", "outside"},
		},
		{
			name:    "IPv6 podCIDR outside IPv6Network",
			conf:    `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}`,
			own:     makeNode(ownName, nil, "10.244.1.0/24", "fd00:99::/64"),
			wantErr: []string{ownName, "fd00:99::/64", "outside"},
		},
		{
			name:    "no IPv4 podCIDR",
			own:     makeNode(ownName, nil, "fd00:10:244:1::/64"),
			wantErr: []string{ownName, "no IPv4 podCIDR"},
		},
		{
			name:    "no IPv6 podCIDR with IPv6 enabled",
			conf:    `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}`,
			own:     makeNode(ownName, nil, "10.244.1.0/24"),
			wantErr: []string{ownName, "no IPv6 podCIDR"},
		},
		{
			name:    "malformed podCIDR",
			own:     makeNode(ownName, nil, "10.244.1.0/33"),
			wantErr: []string{ownName, "malformed podCIDR", "10.244.1.0/33"},
		},
		{
			name:    "malformed public-ip-overwrite",
			own:     makeNode(ownName, map[string]string{annOverwrite: "nope"}, "10.244.1.0/24"),
			wantErr: []string{ownName, "public-ip-overwrite", "nope"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf := tt.conf
			if conf == "" {
				conf = netConf
			}
			c := newFakeCluster(t, tt.own)
			s, _ := startSource(t, c, Config{Network: testNetwork(t, conf)})
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			_, err := s.AcquireLease(ctx, ownAttrs)
			if err == nil {
				t.Fatal("AcquireLease succeeded, want an error")
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("AcquireLease timed out instead of failing: %v", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if p := c.patches(); len(p) != 0 {
				t.Errorf("a failed AcquireLease patched the node: %v", p)
			}
		})
	}
}

func TestSourceAcquireLeaseOverwrite(t *testing.T) {
	tests := []struct {
		name     string
		ann      map[string]string
		explicit bool
		want     string
	}{
		{"public-ip-overwrite", map[string]string{annOverwrite: "203.0.113.1", annNodePublic: "203.0.113.2"}, false, "203.0.113.1"},
		{"node-public-ip", map[string]string{annNodePublic: "203.0.113.2"}, false, "203.0.113.2"},
		{"explicit --public-ip", map[string]string{annNodePublic: "203.0.113.2"}, true, "192.168.100.11"},
		{"interface", nil, false, "192.168.100.11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newFakeCluster(t, makeNode(ownName, tt.ann, "10.244.1.0/24"))
			s, _ := startSource(t, c, Config{ExplicitPublicIP: tt.explicit})
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			l, err := s.AcquireLease(ctx, ownAttrs)
			if err != nil {
				t.Fatal(err)
			}
			if got := l.Attrs.PublicIP.String(); got != tt.want {
				t.Errorf("advertised public IP = %s, want %s", got, tt.want)
			}
			if got := c.get(ownName).Annotations[annPublicIP]; got != tt.want {
				t.Errorf("public-ip annotation = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSourceCustomPrefix(t *testing.T) {
	const prefix = "example.com/flannel"
	ann := map[string]string{
		prefix + "/kube-subnet-manager": "true",
		prefix + "/backend-type":        "vxlan",
		prefix + "/backend-data":        vxlanData,
		prefix + "/public-ip":           "192.168.100.12",
	}
	c := newFakeCluster(t,
		makeNode(ownName, nil, "10.244.1.0/24"),
		makeNode("custom", ann, "10.244.2.0/24"),
		makeNode("default", managedAnn("192.168.100.13"), "10.244.3.0/24"),
	)
	s, peers := startSource(t, c, Config{AnnotationPrefix: prefix})
	m := newPeerMirror(peers)
	m.waitFor(t, "the initial sync", func() bool { return m.synced })
	m.assertNames(t, "custom")

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := s.AcquireLease(ctx, ownAttrs); err != nil {
		t.Fatal(err)
	}
	got := c.get(ownName).Annotations
	if got[prefix+"/kube-subnet-manager"] != "true" || got[prefix+"/public-ip"] != "192.168.100.11" {
		t.Errorf("annotations = %v, want them under %s/", got, prefix)
	}
	if _, ok := got[annManaged]; ok {
		t.Errorf("annotations = %v, want none under the default prefix", got)
	}
}

func TestReportReady(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		t.Run(map[bool]string{true: "enabled", false: "disabled"}[enabled], func(t *testing.T) {
			own := makeNode(ownName, nil, "10.244.1.0/24")
			own.Status.Conditions = []v1.NodeCondition{
				{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady"},
				{Type: v1.NodeNetworkUnavailable, Status: v1.ConditionTrue, Reason: "NoRouteCreated"},
			}
			c := newFakeCluster(t, own)
			s := New(Config{Client: clientset{c.client}, NodeName: ownName, SetNetworkUnavailable: enabled})
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			if err := s.ReportReady(ctx); err != nil {
				t.Fatalf("ReportReady: %v", err)
			}
			patches := c.patches()
			conds := c.get(ownName).Status.Conditions
			byType := map[v1.NodeConditionType]v1.NodeCondition{}
			for _, cond := range conds {
				byType[cond.Type] = cond
			}
			if !enabled {
				if len(c.client.Actions()) != 1 { // the Get above
					t.Errorf("ReportReady with the option off made API calls: %v", c.client.Actions())
				}
				if byType[v1.NodeNetworkUnavailable].Status != v1.ConditionTrue {
					t.Errorf("NetworkUnavailable changed with the option off: %+v", byType[v1.NodeNetworkUnavailable])
				}
				return
			}
			if len(patches) != 1 {
				t.Fatalf("%d patches, want 1", len(patches))
			}
			p := patches[0]
			if p.GetName() != ownName || p.GetSubresource() != "status" || p.GetPatchType() != types.StrategicMergePatchType {
				t.Errorf("patch of %s/%s type %s, want %s/status strategic merge", p.GetName(), p.GetSubresource(), p.GetPatchType(), ownName)
			}
			nu := byType[v1.NodeNetworkUnavailable]
			if nu.Status != v1.ConditionFalse || nu.Reason != "FlannelIsUp" || nu.Message == "" ||
				nu.LastTransitionTime.IsZero() || nu.LastHeartbeatTime.IsZero() {
				t.Errorf("NetworkUnavailable = %+v, want False/FlannelIsUp with times and a message", nu)
			}
			// The strategic merge keys conditions by type: the others stay.
			if r := byType[v1.NodeReady]; r.Status != v1.ConditionTrue || r.Reason != "KubeletReady" || len(conds) != 2 {
				t.Errorf("conditions = %+v, want Ready kept and two conditions", conds)
			}
		})
	}
}

func TestReportReadyNoNode(t *testing.T) {
	// The Node vanished: ReportReady retries until ctx ends, then says what
	// it was doing.
	c := newFakeCluster(t)
	s := New(Config{Client: clientset{c.client}, NodeName: ownName, SetNetworkUnavailable: true})
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	err := s.ReportReady(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "NetworkUnavailable") || !strings.Contains(err.Error(), "not found") {
		t.Errorf("ReportReady error = %v, want a deadline error naming the request and the last error", err)
	}
	if n := len(c.patches()); n < 2 {
		t.Errorf("%d attempts, want retries", n)
	}
}

func TestNodeName(t *testing.T) {
	scheduled := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel-ds-abcde", Namespace: "kube-system"},
		Spec:       v1.PodSpec{NodeName: "node-from-pod"},
	}
	pending := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pending", Namespace: "kube-system"}}
	tests := []struct {
		name                 string
		nodeName, pod, podNS string
		want                 string
		wantErr              string
		wantCalls            bool // the pod is looked up
	}{
		{name: "NODE_NAME", nodeName: "n1", want: "n1"},
		{name: "NODE_NAME wins over POD_NAME", nodeName: "n1", pod: scheduled.Name, podNS: "kube-system", want: "n1"},
		{name: "POD_NAME and POD_NAMESPACE", pod: scheduled.Name, podNS: "kube-system", want: "node-from-pod", wantCalls: true},
		{name: "nothing set", wantErr: "NODE_NAME"},
		{name: "POD_NAME without POD_NAMESPACE", pod: scheduled.Name, wantErr: "POD_NAMESPACE"},
		{name: "POD_NAMESPACE without POD_NAME", podNS: "kube-system", wantErr: "POD_NAME"},
		{name: "pod does not exist", pod: "gone", podNS: "kube-system", wantErr: "not found", wantCalls: true},
		{name: "pod not scheduled", pod: pending.Name, podNS: "kube-system", wantErr: "not scheduled", wantCalls: true},
		{name: "pod in another namespace", pod: scheduled.Name, podNS: "default", wantErr: "not found", wantCalls: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", tt.nodeName)
			t.Setenv("POD_NAME", tt.pod)
			t.Setenv("POD_NAMESPACE", tt.podNS)
			client := fake.NewClientset(scheduled, pending)
			ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
			defer cancel()
			got, err := NodeName(ctx, clientset{client})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("NodeName = %q, %v; want an error mentioning %q", got, err, tt.wantErr)
				}
			} else if err != nil || got != tt.want {
				t.Errorf("NodeName = %q, %v; want %q", got, err, tt.want)
			}
			calls := len(client.Actions()) > 0
			if calls != tt.wantCalls {
				t.Errorf("API calls made = %v, want %v (%v)", calls, tt.wantCalls, client.Actions())
			}
			for _, a := range client.Actions() {
				if a.GetVerb() != "get" || a.GetResource().Resource != "pods" || a.GetNamespace() != tt.podNS {
					t.Errorf("unexpected API call %v", a)
				}
			}
		})
	}
}

func TestNodeNamePodScheduledLater(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	t.Setenv("POD_NAME", "p")
	t.Setenv("POD_NAMESPACE", "kube-system")
	client := fake.NewClientset(&v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "kube-system"}})
	var calls int
	var mu sync.Mutex
	// The first lookup sees the pod unscheduled; the retry sees its node.
	client.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "kube-system"}}
		if calls > 1 {
			pod.Spec.NodeName = "late-node"
		}
		return true, pod, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	got, err := NodeName(ctx, clientset{client})
	if err != nil || got != "late-node" {
		t.Errorf("NodeName = %q, %v; want late-node", got, err)
	}
}
