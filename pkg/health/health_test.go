package health

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
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

// TestServeLimits: kept-alive connections are closed once idle, slow ones
// once their headers are late, and no more than MaxConns are served at
// once, so idle clients cannot exhaust flanneld's file descriptors. (On
// 4308a5a a kept-alive connection stayed open forever.)
func TestServeLimits(t *testing.T) {
	limits := Limits{MaxConns: 4, HeaderTimeout: 300 * time.Millisecond, ReadTimeout: time.Second,
		WriteTimeout: time.Second, IdleTimeout: 300 * time.Millisecond}
	ln, err := Listen("127.0.0.1:0", limits)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		active int
		peak   int
	)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		active++
		peak = max(peak, active)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		active--
		mu.Unlock()
		fmt.Fprintln(w, "ok")
	})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, h, limits) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	addr := ln.Addr().String()

	// A kept-alive connection is closed by the server once idle.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("an idle kept-alive connection was not closed by the server: %v", err)
	}

	// Many clients that connect and send nothing: each is closed once its
	// headers are late, and a real request still gets through.
	var idle []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	client := &http.Client{Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			resp, err := client.Get("http://" + addr + "/y")
			if err != nil {
				t.Errorf("a request behind idle clients: %v", err)
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	if peak > limits.MaxConns {
		t.Errorf("%d requests were served at once, more than MaxConns %d", peak, limits.MaxConns)
	}
}
