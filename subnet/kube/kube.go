package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/subnet"
)

// Config configures the Kubernetes lease source.
type Config struct {
	Client   Client
	NodeName string
	// AnnotationPrefix defaults to DefaultAnnotationPrefix.
	AnnotationPrefix string
	// Network is the cluster network; the node's podCIDR must lie in it.
	Network *subnet.Config
	// ExplicitPublicIP is set when --public-ip/--public-ipv6 was given: the
	// node-public-ip annotations then do not apply.
	ExplicitPublicIP, ExplicitPublicIPv6 bool
	// SetNetworkUnavailable makes ReportReady set the Node's
	// NetworkUnavailable condition to False.
	SetNetworkUnavailable bool
	// Recorder, if set, receives the Events flanneld posts on its Node
	// (see NewRecorder).
	Recorder record.EventRecorder
	// OnWatchEvent, if set, is called for every Node event ("add",
	// "update", "delete"); OnSynced when the Node cache has synced.
	OnWatchEvent func(eventType string)
	OnSynced     func()
}

// NewRecorder returns an EventRecorder posting Events through client as
// component flanneld; it stops with ctx.
func NewRecorder(ctx context.Context, client Client, nodeName string) record.EventRecorder {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(eventSink{ctx: ctx, client: client})
	go func() {
		<-ctx.Done()
		b.Shutdown()
	}()
	return b.NewRecorder(clientScheme, v1.EventSource{Component: "flanneld", Host: nodeName})
}

// Event posts an Event on this node's Node object (a no-op without a
// Recorder). Warnings are for what an operator must act on.
func (s *Source) Event(warning bool, reason, message string) {
	if s.cfg.Recorder == nil {
		return
	}
	typ := v1.EventTypeNormal
	if warning {
		typ = v1.EventTypeWarning
	}
	s.cfg.Recorder.Event(s.nodeRef(), typ, reason, message)
}

func (s *Source) watchEvent(typ string) {
	if s.cfg.OnWatchEvent != nil {
		s.cfg.OnWatchEvent(typ)
	}
}

// Source is the Kubernetes lease source.
type Source struct {
	cfg Config
	ann Annotations

	informer cache.SharedIndexInformer
	// synced reports whether the event handler has seen the initial list
	// (the informer's own HasSynced turns true before that).
	synced func() bool

	mu      sync.Mutex
	own     *v1.Node      // this node, as last seen by the informer
	ownWake chan struct{} // signalled when own changes
}

var (
	_ subnet.Source      = (*Source)(nil)
	_ subnet.EventPoster = (*Source)(nil)
)

// New returns a Source; Start must be called before the other methods.
func New(cfg Config) *Source {
	if cfg.AnnotationPrefix == "" {
		cfg.AnnotationPrefix = DefaultAnnotationPrefix
	}
	return &Source{cfg: cfg, ann: NewAnnotations(cfg.AnnotationPrefix), ownWake: make(chan struct{}, 1)}
}

// NodeName returns the name of the node flanneld runs on: NODE_NAME, else
// the nodeName of the pod POD_NAME in POD_NAMESPACE.
func NodeName(ctx context.Context, client Client) (string, error) {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	pod, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return "", errors.New("cannot tell which node this is: set NODE_NAME (or POD_NAME and POD_NAMESPACE)")
	}
	var name string
	err := retry(ctx, "get own pod", func() error {
		p, err := client.GetPod(ctx, ns, pod)
		if err != nil {
			return err
		}
		if p.Spec.NodeName == "" {
			return fmt.Errorf("pod %s/%s is not scheduled to a node", ns, pod)
		}
		name = p.Spec.NodeName
		return nil
	})
	return name, err
}

// Start implements subnet.Source: it starts a Node informer whose cache
// keeps only what flanneld reads of each Node.
func (s *Source) Start(ctx context.Context, peers *subnet.Peers) error {
	// The list and watch calls retry by themselves, quickly, while the API
	// server is unreachable, so the informer's own backoff (which grows to
	// a minute) never builds up during an outage and flanneld catches up
	// within seconds of the server's return.
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			var list runtime.Object
			err := retryQuickly(ctx, "list nodes", func() (err error) {
				list, err = s.listStripped(ctx, o)
				return err
			})
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			var w watch.Interface
			err := retryQuickly(ctx, "watch nodes", func() (err error) {
				w, err = s.cfg.Client.WatchNodes(ctx, o)
				return err
			})
			if err != nil {
				return nil, err
			}
			return watch.Filter(w, func(e watch.Event) (watch.Event, bool) {
				if n, ok := e.Object.(*v1.Node); ok {
					stripped, _ := s.ann.stripNode(n)
					e.Object = stripped.(*v1.Node)
				}
				return e, true
			}), nil
		},
	}
	// Both the list and the watch hand the informer stripped Nodes, so its
	// cache never holds a whole Node and nothing is copied twice.
	s.informer = cache.NewSharedIndexInformer(lw, &v1.Node{}, 0, cache.Indexers{})
	reg, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			s.watchEvent("add")
			s.onNode(obj, peers)
		},
		UpdateFunc: func(_, obj any) {
			s.watchEvent("update")
			s.onNode(obj, peers)
		},
		DeleteFunc: func(obj any) {
			s.watchEvent("delete")
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if n, ok := obj.(*v1.Node); ok {
				peers.Delete(n.Name)
			}
		},
	})
	if err != nil {
		return err
	}
	s.synced = reg.HasSynced
	go s.informer.RunWithContext(ctx)
	go func() {
		if waitSynced(ctx.Done(), s.synced) {
			klog.InfoS("Node cache synced", "peers", peers.Len())
			peers.MarkSynced()
			if s.cfg.OnSynced != nil {
				s.cfg.OnSynced()
			}
		}
	}()
	return nil
}

// listStripped lists the Nodes page by page (see pageNodes), keeping only
// what flanneld reads of each, so that the initial list of a large cluster
// never holds every whole Node object in memory at once.
func (s *Source) listStripped(ctx context.Context, o metav1.ListOptions) (*v1.NodeList, error) {
	out := &v1.NodeList{}
	rv, err := pageNodes(ctx, s.cfg.Client, o, func(page *v1.NodeList) {
		if out.Items == nil {
			out.Items = make([]v1.Node, 0, len(page.Items)+int(ptrOr(page.RemainingItemCount, 0)))
		}
		for i := range page.Items {
			stripped, _ := s.ann.stripNode(&page.Items[i])
			out.Items = append(out.Items, *stripped.(*v1.Node))
		}
	})
	if err != nil {
		return nil, err
	}
	out.ResourceVersion = rv
	return out, nil
}

func ptrOr(p *int64, def int64) int64 {
	if p == nil {
		return def
	}
	return *p
}

func (s *Source) onNode(obj any, peers *subnet.Peers) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return
	}
	if n.Name == s.cfg.NodeName {
		s.mu.Lock()
		s.own = n
		s.mu.Unlock()
		select {
		case s.ownWake <- struct{}{}:
		default:
		}
		return
	}
	if !s.ann.isManaged(n) {
		peers.Delete(n.Name)
		return
	}
	l, err := s.ann.leaseFromNode(n)
	if err != nil {
		// Known but unusable: the sync loop reports it and programs none of it.
		l = subnet.Lease{Name: n.Name, Created: l.Created, Err: &subnet.PeerError{Reason: subnet.SkipMalformed, Err: err}}
	}
	peers.Set(l)
}

func (s *Source) ownNode() *v1.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.own
}

// syncedPoll is how often waitSynced looks. client-go's WaitForCacheSync
// looks every 100 ms, which is most of a restart's time without pod
// traffic where the datapath goes with flanneld (udp, userspace wireguard).
const syncedPoll = 5 * time.Millisecond

// waitSynced reports whether synced turned true before done closed.
func waitSynced(done <-chan struct{}, synced func() bool) bool {
	t := time.NewTicker(syncedPoll)
	defer t.Stop()
	for !synced() {
		select {
		case <-done:
			return false
		case <-t.C:
		}
	}
	return true
}

// waitSynced waits for the informer's initial list, logging while the API
// server does not answer.
func (s *Source) waitSynced(ctx context.Context) error {
	for !s.synced() {
		waitCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
		ok := waitSynced(waitCtx.Done(), s.synced)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !ok {
			klog.InfoS("Still waiting for the list of Nodes from the API server")
		}
	}
	return nil
}

// PreviousAttrs implements subnet.Source.
//
// In Kubernetes mode the lease is the node's podCIDR, known before any
// device exists: PreviousAttrs already waits for it and checks it, so a
// podCIDR outside the Network fails before anything on the node changes.
func (s *Source) PreviousAttrs(ctx context.Context) (*subnet.LeaseAttrs, error) {
	n, err := s.waitLease(ctx)
	if err != nil {
		return nil, err
	}
	if n.Annotations[s.ann.BackendType] == "" {
		return nil, nil
	}
	l, err := s.ann.leaseFromNode(n)
	if err != nil {
		l.Attrs.BackendType = n.Annotations[s.ann.BackendType]
		l.Attrs.BackendData = json.RawMessage(n.Annotations[s.ann.BackendData])
	}
	return &l.Attrs, nil
}

// AcquireLease implements subnet.Source: the lease is the node's podCIDR.
// While the node has none it waits, saying why; a podCIDR outside the
// Network is an error.
func (s *Source) AcquireLease(ctx context.Context, attrs subnet.LeaseAttrs) (subnet.Lease, error) {
	n, err := s.waitLease(ctx)
	if err != nil {
		return subnet.Lease{}, err
	}
	lease := subnet.Lease{Name: n.Name}
	if lease.Subnet, lease.IPv6Subnet, err = podCIDRs(n); err != nil {
		return lease, err
	}
	if lease.Attrs, err = s.advertisedAttrs(n, attrs); err != nil {
		return lease, err
	}
	if patch := s.ann.annotationPatch(n, lease.Attrs); patch != nil {
		body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": patch}})
		if err != nil {
			return lease, err
		}
		err = retry(ctx, "publish node annotations", func() error {
			return s.cfg.Client.PatchNodeStatus(ctx, n.Name, types.StrategicMergePatchType, body)
		})
		if err != nil {
			return lease, err
		}
		klog.InfoS("Published node annotations", "node", n.Name, "annotations", patch)
	}
	return lease, nil
}

// waitLease waits for the Node cache and this node's podCIDR, and checks
// that the podCIDR lies in the Network.
func (s *Source) waitLease(ctx context.Context) (*v1.Node, error) {
	if err := s.waitSynced(ctx); err != nil {
		return nil, err
	}
	n, err := s.waitPodCIDR(ctx)
	if err != nil {
		return nil, err
	}
	lease := subnet.Lease{Name: n.Name}
	if lease.Subnet, lease.IPv6Subnet, err = podCIDRs(n); err != nil {
		return nil, err
	}
	if err := s.checkSubnets(lease); err != nil {
		s.fatalEvent(ctx, "PodCIDROutsideNetwork", err.Error())
		return nil, err
	}
	return n, nil
}

// waitPodCIDR waits until this node exists and has a podCIDR.
func (s *Source) waitPodCIDR(ctx context.Context) (*v1.Node, error) {
	delay := time.Second
	reported := false
	for {
		n := s.ownNode()
		var reason string
		switch {
		case n == nil:
			reason = "the Node object does not exist"
		case n.Spec.PodCIDR == "" && len(n.Spec.PodCIDRs) == 0:
			reason = "the Node has no podCIDR yet (is the controller-manager allocating node CIDRs?)"
		default:
			return n, nil
		}
		klog.InfoS("Waiting for this node's podCIDR", "node", s.cfg.NodeName, "reason", reason, "retryIn", delay)
		if n != nil && !reported {
			s.Event(true, "PodCIDRMissing", "flanneld is waiting: "+reason)
			reported = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.ownWake:
		case <-time.After(delay):
			delay = min(2*delay, 30*time.Second)
		}
	}
}

func (s *Source) checkSubnets(l subnet.Lease) error {
	c := s.cfg.Network
	if c.EnableIPv4 {
		if !l.Subnet.IsValid() {
			return fmt.Errorf("node %s has no IPv4 podCIDR, but the network config enables IPv4", l.Name)
		}
		if err := c.CheckSubnet(l.Subnet); err != nil {
			return fmt.Errorf("podCIDR of node %s: %w", l.Name, err)
		}
	}
	if c.EnableIPv6 {
		if !l.IPv6Subnet.IsValid() {
			return fmt.Errorf("node %s has no IPv6 podCIDR, but the network config enables IPv6", l.Name)
		}
		if err := c.CheckSubnet(l.IPv6Subnet); err != nil {
			return fmt.Errorf("podCIDR of node %s: %w", l.Name, err)
		}
	}
	return nil
}

// advertisedAttrs applies the operator's annotations to attrs:
// public-ip-overwrite always wins; node-public-ip applies unless
// --public-ip was given.
func (s *Source) advertisedAttrs(n *v1.Node, attrs subnet.LeaseAttrs) (subnet.LeaseAttrs, error) {
	pick := func(cur netip.Addr, explicit bool, overwrite, nodeIP string, is4 bool) (netip.Addr, error) {
		if a, err := parseAddrAnnotation(n, overwrite, is4); err != nil || a.IsValid() {
			if a.IsValid() {
				klog.InfoS("Advertising the public IP set by annotation", "annotation", overwrite, "ip", a)
			}
			return a, err
		}
		if !explicit {
			if a, err := parseAddrAnnotation(n, nodeIP, is4); err != nil || a.IsValid() {
				return a, err
			}
		}
		return cur, nil
	}
	var err error
	if attrs.PublicIP, err = pick(attrs.PublicIP, s.cfg.ExplicitPublicIP, s.ann.PublicIPOverwrite, s.ann.NodePublicIP, true); err != nil {
		return attrs, err
	}
	if attrs.PublicIPv6, err = pick(attrs.PublicIPv6, s.cfg.ExplicitPublicIPv6, s.ann.PublicIPv6Overwrite, s.ann.NodePublicIPv6, false); err != nil {
		return attrs, err
	}
	return attrs, nil
}

// ReportReady implements subnet.Source: NetworkUnavailable=False, reason
// FlannelIsUp.
func (s *Source) ReportReady(ctx context.Context) error {
	if !s.cfg.SetNetworkUnavailable {
		return nil
	}
	now := metav1.Now()
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []v1.NodeCondition{{
		Type:               v1.NodeNetworkUnavailable,
		Status:             v1.ConditionFalse,
		Reason:             "FlannelIsUp",
		Message:            "Flannel is running on this node",
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}}}})
	if err != nil {
		return err
	}
	return retry(ctx, "set NetworkUnavailable=False", func() error {
		return s.cfg.Client.PatchNodeStatus(ctx, s.cfg.NodeName, types.StrategicMergePatchType, body)
	})
}
