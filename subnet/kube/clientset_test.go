package kube

import (
	"context"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// clientset adapts a client-go clientset (the fake one, in these tests) to
// Client.
type clientset struct{ kubernetes.Interface }

var _ Client = clientset{}

func (c clientset) ListNodes(ctx context.Context, opts metav1.ListOptions) (*v1.NodeList, int, error) {
	list, err := c.CoreV1().Nodes().List(ctx, opts)
	if err != nil {
		return nil, 0, err
	}
	return list, list.Size(), nil
}

func (c clientset) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return c.CoreV1().Nodes().Watch(ctx, opts)
}

func (c clientset) PatchNodeStatus(ctx context.Context, name string, pt types.PatchType, data []byte) error {
	_, err := c.CoreV1().Nodes().Patch(ctx, name, pt, data, metav1.PatchOptions{}, "status")
	return err
}

func (c clientset) GetPod(ctx context.Context, namespace, name string) (*v1.Pod, error) {
	return c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (c clientset) CreateEvent(ctx context.Context, ev *v1.Event) (*v1.Event, error) {
	return c.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
}

func (c clientset) UpdateEvent(ctx context.Context, ev *v1.Event) (*v1.Event, error) {
	return c.CoreV1().Events(ev.Namespace).Update(ctx, ev, metav1.UpdateOptions{})
}

func (c clientset) PatchEvent(ctx context.Context, ev *v1.Event, data []byte) (*v1.Event, error) {
	return c.CoreV1().Events(ev.Namespace).Patch(ctx, ev.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
}
