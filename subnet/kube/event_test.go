package kube

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

// TestFatalEvent checks that an Event posted right before flanneld exits
// reaches the API server before fatalEvent returns, even when the daemon's
// context is already cancelled.
func TestFatalEvent(t *testing.T) {
	client := fake.NewClientset()
	s := New(Config{Client: clientset{client}, NodeName: "n9", Recorder: record.NewFakeRecorder(1)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.fatalEvent(ctx, "PodCIDROutsideNetwork", "podCIDR of node n9: 10.99.1.0/24 is outside Network 10.244.0.0/16")

	list, err := client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 {
		t.Fatalf("%d events, want 1", len(list.Items))
	}
	e := list.Items[0]
	if e.InvolvedObject.Kind != "Node" || e.InvolvedObject.Name != "n9" || e.Reason != "PodCIDROutsideNetwork" ||
		e.Type != v1.EventTypeWarning || e.Source.Component != "flanneld" || e.Count != 1 {
		t.Errorf("event %+v", e)
	}

	// Without a Recorder (Events off), nothing is posted.
	client = fake.NewClientset()
	New(Config{Client: clientset{client}, NodeName: "n9"}).fatalEvent(context.Background(), "PodCIDROutsideNetwork", "x")
	if len(client.Actions()) != 0 {
		t.Errorf("posted without a Recorder: %v", client.Actions())
	}
}
