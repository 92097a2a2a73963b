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

	"golang.org/x/net/netutil"
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

// Limits bound what the listener's clients can hold: a probe endpoint on
// every node must not let idle or slow connections exhaust flanneld's file
// descriptors (which its rule syncs need too).
type Limits struct {
	// MaxConns is the most connections served at once; more wait in the
	// kernel's accept queue.
	MaxConns int
	// HeaderTimeout bounds reading a request's headers, ReadTimeout the
	// whole request, WriteTimeout the response (a /metrics scrape of a
	// large node included), IdleTimeout a kept-alive connection between
	// requests.
	HeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
}

// DefaultLimits are the limits of flanneld's health listener.
var DefaultLimits = Limits{MaxConns: 64, HeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
	WriteTimeout: 30 * time.Second, IdleTimeout: 30 * time.Second}

// Listen opens the health listener on addr, serving at most
// limits.MaxConns connections at once.
func Listen(addr string, limits Limits) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health listener: %w", err)
	}
	return netutil.LimitListener(ln, limits.MaxConns), nil
}

// Serve serves h on ln until ctx ends, then shuts the server down and
// returns once it has; an error means the listener failed.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, limits Limits) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: limits.HeaderTimeout,
		ReadTimeout:       limits.ReadTimeout,
		WriteTimeout:      limits.WriteTimeout,
		IdleTimeout:       limits.IdleTimeout,
		MaxHeaderBytes:    16 << 10,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	klog.InfoS("Serving health probes", "address", ln.Addr().String())
	select {
	case err := <-done:
		return err // the listener failed: ErrServerClosed cannot happen before Shutdown
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		klog.ErrorS(err, "Health server shutdown")
		srv.Close()
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
