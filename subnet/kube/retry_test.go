package kube

import (
	"context"
	"errors"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestRetryQuicklyRetriesUnreachableServer(t *testing.T) {
	calls := 0
	start := time.Now()
	err := retryQuickly(context.Background(), "test", func() error {
		calls++
		if calls < 4 {
			return errors.New("dial tcp 192.168.100.2:6443: connect: connection refused")
		}
		return nil
	})
	if err != nil || calls != 4 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
	// Three retries at 250 ms, 500 ms, 1 s (±50%) stay well under the
	// informer's own backoff; this only guards against a runaway delay.
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("retries took %s", d)
	}
}

func TestRetryQuicklyPassesExpiredToInformer(t *testing.T) {
	gone := apierrors.NewResourceExpired("too old resource version")
	calls := 0
	err := retryQuickly(context.Background(), "test", func() error { calls++; return gone })
	if !apierrors.IsResourceExpired(err) || calls != 1 {
		t.Fatalf("err %v after %d calls; want the expired error at once", err, calls)
	}
	notFound := apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, "n1")
	if retriable(notFound) {
		t.Fatal("NotFound must not be retried")
	}
}

func TestRetryQuicklyStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := retryQuickly(ctx, "test", func() error {
		calls++
		if calls == 2 {
			cancel()
		}
		return errors.New("connection refused")
	})
	if err == nil || calls != 2 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
}
