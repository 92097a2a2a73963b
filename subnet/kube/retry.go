package kube

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
)

// Quick retries while the API server is unreachable: short and jittered,
// so that thousands of nodes do not reconnect in lockstep.
const (
	quickRetryMin = 250 * time.Millisecond
	quickRetryMax = 2 * time.Second
	// quickRetryLogEvery bounds the log lines of a long outage.
	quickRetryLogEvery = 30 * time.Second
)

// retryQuickly calls f until it succeeds, ctx ends, or f fails with an
// error that retrying cannot fix (the informer handles those itself: an
// expired resource version makes it list again).
func retryQuickly(ctx context.Context, what string, f func() error) error {
	delay := quickRetryMin
	var lastLog time.Time
	for {
		err := f()
		if err == nil || ctx.Err() != nil || !retriable(err) {
			return err
		}
		if time.Since(lastLog) >= quickRetryLogEvery {
			klog.ErrorS(err, "API server request failed; retrying", "request", what)
			lastLog = time.Now()
		}
		jittered := delay/2 + time.Duration(rand.Int64N(int64(delay)))
		select {
		case <-ctx.Done():
			return err
		case <-time.After(jittered):
		}
		delay = min(2*delay, quickRetryMax)
	}
}

// retriable tells errors of an unreachable or overloaded server from
// answers the informer must see (expired resource versions, bad requests).
func retriable(err error) bool {
	switch {
	case apierrors.IsResourceExpired(err), apierrors.IsGone(err), apierrors.IsBadRequest(err),
		apierrors.IsInvalid(err), apierrors.IsNotFound(err), apierrors.IsMethodNotSupported(err):
		return false
	}
	return true
}

// retry calls f with capped exponential backoff until it succeeds or ctx
// ends, logging each failure.
func retry(ctx context.Context, what string, f func() error) error {
	delay := 500 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		klog.ErrorS(err, "API request failed; retrying", "request", what, "retryIn", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(delay):
			delay = min(2*delay, 15*time.Second)
		}
	}
}
