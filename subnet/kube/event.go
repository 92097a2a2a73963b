package kube

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// fatalEventTimeout bounds the posting of an Event before flanneld exits.
const fatalEventTimeout = 5 * time.Second

// nodeRef is the reference of this node's Node object in its Events.
func (s *Source) nodeRef() *v1.ObjectReference {
	return &v1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: s.cfg.NodeName, UID: types.UID(s.cfg.NodeName)}
}

// fatalEvent posts a warning Event on this node's Node and waits until the
// API server has it (or fatalEventTimeout passes), for errors after which
// flanneld exits: the Recorder sends Events in the background and would
// lose one posted just before the process ends. A no-op without a
// Recorder, like Event.
func (s *Source) fatalEvent(ctx context.Context, reason, message string) {
	if s.cfg.Recorder == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fatalEventTimeout)
	defer cancel()
	now := metav1.Now()
	ev := &v1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x", s.cfg.NodeName, now.UnixNano()),
			Namespace: metav1.NamespaceDefault,
		},
		InvolvedObject: *s.nodeRef(),
		Reason:         reason,
		Message:        message,
		Type:           v1.EventTypeWarning,
		Source:         v1.EventSource{Component: "flanneld", Host: s.cfg.NodeName},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	if _, err := s.cfg.Client.CreateEvent(ctx, ev); err != nil {
		klog.ErrorS(err, "Could not post an Event on the Node", "reason", reason)
	}
}
