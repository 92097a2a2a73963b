package health

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func get(t *testing.T, h http.Handler, path string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code
}

func TestProbes(t *testing.T) {
	now := time.Unix(1000, 0)
	s := NewStatus(time.Minute)
	s.now = func() time.Time { return now }
	now = now.Add(time.Hour)
	if c := get(t, s.Handler(), "/healthz"); c != http.StatusOK {
		t.Fatalf("healthz before the sync loop started: %d", c)
	}
	s.Beat()
	h := s.Handler()
	if c := get(t, h, "/healthz"); c != http.StatusOK {
		t.Fatalf("healthz %d", c)
	}
	if c := get(t, h, "/readyz"); c != http.StatusServiceUnavailable {
		t.Fatalf("readyz before ready: %d", c)
	}
	s.SetReady(true, "")
	if c := get(t, h, "/readyz"); c != http.StatusOK {
		t.Fatalf("readyz when ready: %d", c)
	}
	now = now.Add(2 * time.Minute)
	if c := get(t, h, "/healthz"); c != http.StatusServiceUnavailable {
		t.Fatalf("healthz with a stuck loop: %d", c)
	}
	s.Beat()
	if c := get(t, h, "/healthz"); c != http.StatusOK {
		t.Fatalf("healthz after a beat: %d", c)
	}
}
