package diagnose

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/pkg/daemon"
)

// TestUnreachablePeers: the peers the running daemon's probes find
// unreachable are listed with how long they have been so, each a problem.
func TestUnreachablePeers(t *testing.T) {
	in, _ := cleanInputs(t)
	since := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	in.Now = since.Add(90 * time.Second)
	in.Probes = &daemon.ProbeState{Unreachable: []daemon.UnreachablePeer{{Name: "n3", Address: "10.244.3.0", Since: since}}}
	r, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Unreachable) != 1 || r.Unreachable[0].For != "1m30s" || r.OK {
		t.Fatalf("unreachable %+v, ok %v", r.Unreachable, r.OK)
	}
	want := "peer n3 does not answer probes through the overlay (10.244.3.0) for 1m30s"
	if len(r.Problems) != 1 || r.Problems[0] != want {
		t.Errorf("problems %q, want %q", r.Problems, want)
	}
	var text bytes.Buffer
	if err := WriteText(&text, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "UNREACHABLE PEER") || !strings.Contains(text.String(), "2026-12-02T10:00:00Z") {
		t.Errorf("text:\n%s", text.String())
	}

	// The daemon's state file, read as Collect reads it.
	path := filepath.Join(t.TempDir(), "peer-probes.json")
	if readProbeState(os.ReadFile(path)) != nil {
		t.Error("no file is no state")
	}
	if err := os.WriteFile(path, []byte(`{"unreachable":[{"name":"n3","address":"10.244.3.0","since":"2026-12-02T10:00:00Z"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if s := readProbeState(os.ReadFile(path)); s == nil || len(s.Unreachable) != 1 || !s.Unreachable[0].Since.Equal(since) {
		t.Errorf("state %+v", s)
	}
}
