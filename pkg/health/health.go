// Package health serves /healthz (the daemon's loops are alive) and /readyz
// (the node's network is set up) for liveness and readiness probes.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Status is the daemon's health as the probes see it. It is safe for
// concurrent use.
type Status struct {
	mu       sync.Mutex
	ready    bool
	notReady string
	lastBeat time.Time
	// Stale is how long the sync loop may go without a successful pass
	// before /healthz fails.
	Stale time.Duration
	now   func() time.Time
}

// NewStatus returns a Status that is alive and not ready. The staleness
// bound applies from the first Beat: before the sync loop runs (while
// flanneld waits for its podCIDR, say) it is healthy.
func NewStatus(stale time.Duration) *Status {
	return &Status{Stale: stale, now: time.Now, notReady: "starting"}
}

// Beat records a successful pass of the sync loop.
func (s *Status) Beat() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastBeat = s.now()
}

// SetReady marks the node ready, or not ready with a reason.
func (s *Status) SetReady(ready bool, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready, s.notReady = ready, reason
}

// Healthy returns nil while the sync loop makes progress.
func (s *Status) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastBeat.IsZero() {
		return nil
	}
	if age := s.now().Sub(s.lastBeat); s.Stale > 0 && age > s.Stale {
		return fmt.Errorf("no successful sync for %s", age.Round(time.Second))
	}
	return nil
}

// Ready returns nil once the node's network is set up.
func (s *Status) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready {
		return errors.New("not ready: " + s.notReady)
	}
	return nil
}

// Handler returns the HTTP handler serving /healthz and /readyz.
func (s *Status) Handler() http.Handler {
	mux := http.NewServeMux()
	probe := func(check func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if err := check(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		}
	}
	mux.Handle("/healthz", probe(s.Healthy))
	mux.Handle("/readyz", probe(s.Ready))
	return mux
}

// Serve listens on addr and serves h until ctx ends. The listener is opened
// before Serve returns, so a port in use is reported at once.
func Serve(ctx context.Context, addr string, h http.Handler) (<-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health listener: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			klog.ErrorS(err, "Health server shutdown")
		}
	}()
	klog.InfoS("Serving health probes", "address", ln.Addr().String())
	return done, nil
}
