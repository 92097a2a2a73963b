package kube

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
)

// Client is all flanneld asks of the Kubernetes API: Nodes, one Pod (to
// find its node) and Events. It is this narrow so that the daemon needs no
// more than the core/v1 types: client-go's generated clientset registers
// every API group at start-up, which costs a small agent about 10 MiB.
type Client interface {
	// ListNodes lists Nodes, and says how many bytes the answer took (0 if
	// it cannot tell). The Nodes returned may hold only what flanneld
	// reads (name, UID, resourceVersion, creationTimestamp, annotations,
	// podCIDRs).
	ListNodes(ctx context.Context, opts metav1.ListOptions) (*v1.NodeList, int, error)
	WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	// PatchNodeStatus patches a Node through its status subresource
	// (which also takes metadata such as annotations).
	PatchNodeStatus(ctx context.Context, name string, pt types.PatchType, data []byte) error
	GetPod(ctx context.Context, namespace, name string) (*v1.Pod, error)
	CreateEvent(ctx context.Context, ev *v1.Event) (*v1.Event, error)
	UpdateEvent(ctx context.Context, ev *v1.Event) (*v1.Event, error)
	PatchEvent(ctx context.Context, ev *v1.Event, data []byte) (*v1.Event, error)
}

// clientScheme knows the core/v1 types and the meta/v1 options only.
var (
	clientScheme = func() *runtime.Scheme {
		s := runtime.NewScheme()
		utilruntime.Must(v1.AddToScheme(s))
		return s
	}()
	clientCodecs = serializer.NewCodecFactory(clientScheme)
	paramCodec   = runtime.NewParameterCodec(clientScheme)
)

// restClient is Client over client-go's REST client, speaking protobuf.
type restClient struct {
	rc *rest.RESTClient
}

// NewClient builds a client from a kubeconfig file and/or API URL, or from
// the in-cluster configuration when both are empty. It speaks protobuf.
func NewClient(kubeconfig, apiURL, userAgent string) (Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags(apiURL, kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = userAgent
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cfg.APIPath = "/api"
	cfg.GroupVersion = &v1.SchemeGroupVersion
	cfg.NegotiatedSerializer = clientCodecs.WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &restClient{rc: rc}, nil
}

func (c *restClient) ListNodes(ctx context.Context, opts metav1.ListOptions) (*v1.NodeList, int, error) {
	body, err := c.rc.Get().Resource("nodes").VersionedParams(&opts, paramCodec).Do(ctx).Raw()
	if err != nil {
		return nil, 0, err
	}
	if isProtobuf(body) {
		list, err := decodeNodeList(body)
		return list, len(body), err
	}
	list := &v1.NodeList{}
	if err := runtime.DecodeInto(clientCodecs.UniversalDeserializer(), body, list); err != nil {
		return nil, 0, fmt.Errorf("decode node list: %w", err)
	}
	return list, len(body), nil
}

func (c *restClient) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.rc.Get().Resource("nodes").VersionedParams(&opts, paramCodec).Watch(ctx)
}

func (c *restClient) PatchNodeStatus(ctx context.Context, name string, pt types.PatchType, data []byte) error {
	return c.rc.Patch(pt).Resource("nodes").Name(name).SubResource("status").Body(data).Do(ctx).Error()
}

func (c *restClient) GetPod(ctx context.Context, namespace, name string) (*v1.Pod, error) {
	pod := &v1.Pod{}
	err := c.rc.Get().Namespace(namespace).Resource("pods").Name(name).Do(ctx).Into(pod)
	return pod, err
}

func (c *restClient) CreateEvent(ctx context.Context, ev *v1.Event) (*v1.Event, error) {
	out := &v1.Event{}
	err := c.rc.Post().Namespace(ev.Namespace).Resource("events").Body(ev).Do(ctx).Into(out)
	return out, err
}

func (c *restClient) UpdateEvent(ctx context.Context, ev *v1.Event) (*v1.Event, error) {
	out := &v1.Event{}
	err := c.rc.Put().Namespace(ev.Namespace).Resource("events").Name(ev.Name).Body(ev).Do(ctx).Into(out)
	return out, err
}

func (c *restClient) PatchEvent(ctx context.Context, ev *v1.Event, data []byte) (*v1.Event, error) {
	out := &v1.Event{}
	err := c.rc.Patch(types.StrategicMergePatchType).Namespace(ev.Namespace).Resource("events").Name(ev.Name).Body(data).Do(ctx).Into(out)
	return out, err
}

// eventSink adapts a Client to the Event recorder's sink, which takes no
// context.
type eventSink struct {
	ctx    context.Context
	client Client
}

var _ record.EventSink = eventSink{}

func (s eventSink) Create(ev *v1.Event) (*v1.Event, error) { return s.client.CreateEvent(s.ctx, ev) }
func (s eventSink) Update(ev *v1.Event) (*v1.Event, error) { return s.client.UpdateEvent(s.ctx, ev) }
func (s eventSink) Patch(ev *v1.Event, data []byte) (*v1.Event, error) {
	return s.client.PatchEvent(s.ctx, ev, data)
}
