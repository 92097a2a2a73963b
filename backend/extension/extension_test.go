package extension

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

var testExt = &ip.ExternalInterface{Name: "eth0", Index: 2, MTU: 1500,
	IfaceAddr: netip.MustParseAddr("192.168.100.11"), ExtAddr: netip.MustParseAddr("192.168.100.11")}

func newTest(t *testing.T, backendJSON string) *Backend {
	t.Helper()
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"10.244.0.0/16","Backend":` + backendJSON + `}`))
	if err != nil {
		t.Fatal(err)
	}
	be, err := New(backend.Params{Config: cfg, ExtIface: testExt})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	b.backoffFn = func(time.Duration) time.Duration { return 20 * time.Millisecond }
	return b
}

// js quotes s as a JSON string.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// waitFile waits until path's content is want.
func waitFile(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := readFile(t, path)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:\n%s\nwant:\n%s", filepath.Base(path), got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOptions(t *testing.T) {
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"extension","PreStartupCommand":5}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(backend.Params{Config: cfg, ExtIface: testExt}); err == nil || !strings.Contains(err.Error(), "extension") {
		t.Errorf("New with a number for PreStartupCommand: %v, want an error naming the backend", err)
	}
	b := newTest(t, `{"Type":"extension","PreStartupCommand":"a","PostStartupCommand":"b","SubnetAddCommand":"c","SubnetRemoveCommand":"d","Other":1}`)
	if want := (Options{"a", "b", "c", "d"}); b.opts != want {
		t.Errorf("options = %+v, want %+v", b.opts, want)
	}
	if b.timeout != DefaultTimeout || b.MTU() != 1500 {
		t.Errorf("timeout %s, MTU %d", b.timeout, b.MTU())
	}
}

func TestSetupConfigure(t *testing.T) {
	dir := t.TempDir()
	count, env := filepath.Join(dir, "count"), filepath.Join(dir, "env")
	b := newTest(t, `{"Type":"extension",
		"PreStartupCommand":`+js(`echo x >>`+count+`; printf '  key "1"\n\n'; echo noise >&2`)+`,
		"PostStartupCommand":`+js(`echo "$NETWORK|$SUBNET|$IPV6SUBNET|$PUBLIC_IP|$PUBLIC_IPV6" >`+env)+`}`)
	for range 2 { // the command runs once; a second Setup reuses its output
		attrs, err := b.Setup(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if attrs.BackendType != Type || attrs.PublicIP != testExt.ExtAddr || attrs.PublicIPv6.IsValid() {
			t.Errorf("attrs = %+v", attrs)
		}
		if got, want := string(attrs.BackendData), `"key \"1\""`; got != want {
			t.Errorf("backend-data = %s, want %s", got, want)
		}
	}
	if got := readFile(t, count); got != "x\n" {
		t.Errorf("PreStartupCommand ran %d times, want 1", strings.Count(got, "x"))
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: testExt.ExtAddr}}
	if err := b.Configure(context.Background(), own); err != nil {
		t.Fatal(err)
	}
	if got, want := readFile(t, env), "10.244.0.0/16|10.244.1.0/24||192.168.100.11|\n"; got != want {
		t.Errorf("PostStartupCommand's environment: %q, want %q", got, want)
	}

	// Without commands: no backend data, nothing run.
	b = newTest(t, `{"Type":"extension"}`)
	attrs, err := b.Setup(context.Background(), nil)
	if err != nil || attrs.BackendData != nil {
		t.Errorf("Setup without commands = %+v, %v", attrs, err)
	}
	if err := b.Configure(context.Background(), own); err != nil {
		t.Error(err)
	}
}

func TestCommandFailure(t *testing.T) {
	b := newTest(t, `{"Type":"extension","PreStartupCommand":"echo out; echo oops >&2; exit 3"}`)
	if _, err := b.Setup(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Setup with a failing PreStartupCommand: %v", err)
	}
	b = newTest(t, `{"Type":"extension","PostStartupCommand":"false"}`)
	if err := b.Configure(context.Background(), subnet.Lease{}); err == nil || !strings.Contains(err.Error(), "PostStartupCommand") {
		t.Errorf("Configure with a failing PostStartupCommand: %v", err)
	}
	b = newTest(t, `{"Type":"extension","PreStartupCommand":"head -c 70000 /dev/zero | tr '\\0' a"}`)
	if _, err := b.Setup(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "longer") {
		t.Errorf("Setup with an oversized output: %v", err)
	}
}

func TestTimeout(t *testing.T) {
	// The command's children are killed with it: sleep holds stdout.
	b := newTest(t, `{"Type":"extension","PreStartupCommand":"sleep 30 & sleep 30"}`)
	b.timeout = 200 * time.Millisecond
	start := time.Now()
	_, err := b.Setup(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("Setup: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Setup took %s", d)
	}
}

func TestPeerState(t *testing.T) {
	b := newTest(t, `{"Type":"extension"}`)
	peer := func(typ, data string) subnet.Lease {
		return subnet.Lease{Name: "n2", Subnet: netip.MustParsePrefix("10.244.2.0/24"),
			Attrs: subnet.LeaseAttrs{BackendType: typ, BackendData: json.RawMessage(data)}}
	}
	for _, p := range []subnet.Lease{peer("extension", `"abc"`), peer("extension", ""), peer("extension", "null")} {
		if st, err := b.PeerState(p); err != nil || len(st.Routes)+len(st.Neighs)+len(st.FDBs) != 0 {
			t.Errorf("PeerState(%s) = %+v, %v", p.Attrs.BackendData, st, err)
		}
	}
	for _, p := range []subnet.Lease{peer("vxlan", `"abc"`), peer("extension", `{"a":1}`), peer("extension", `not json`)} {
		if _, err := b.PeerState(p); !errors.Is(err, backend.ErrPeerData) {
			t.Errorf("PeerState(%s, %s) = %v, want ErrPeerData", p.Attrs.BackendType, p.Attrs.BackendData, err)
		}
	}
	if len(b.Base().OwnedLinks) != 0 || b.Attach() != nil || len(b.Dropped()) != 0 {
		t.Error("the backend owns something")
	}
}

func TestPeerCommands(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	rec := `echo "$1 $SUBNET|$IPV6SUBNET|$PUBLIC_IP|$PUBLIC_IPV6|$(cat)" >>` + log
	b := newTest(t, `{"Type":"extension",
		"SubnetAddCommand":`+js(`set -- add; `+rec)+`,
		"SubnetRemoveCommand":`+js(`set -- remove; `+rec)+`}`)

	n2 := subnet.Lease{Name: "n2", Subnet: netip.MustParsePrefix("10.244.2.0/24"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:2::/64"),
		Attrs: subnet.LeaseAttrs{BackendType: Type, PublicIP: netip.MustParseAddr("192.168.100.12"),
			PublicIPv6: netip.MustParseAddr("fd00:100::12"), BackendData: json.RawMessage(`"data of n2"`)}}
	n3 := subnet.Lease{Name: "n3", Subnet: netip.MustParsePrefix("10.244.3.0/24"),
		Attrs: subnet.LeaseAttrs{BackendType: Type, PublicIP: netip.MustParseAddr("192.168.100.13")}}

	// Before Forward runs, SetPeer only records (as in flanneld diagnose).
	b.SetPeer("n2", &n2)
	time.Sleep(50 * time.Millisecond)
	if got := readFile(t, log); got != "" {
		t.Fatalf("a command ran without Forward: %q", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.Forward(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Forward: %v", err)
		}
	}()
	want := "add 10.244.2.0/24|fd00:10:244:2::/64|192.168.100.12|fd00:100::12|data of n2\n"
	waitFile(t, log, want)

	b.SetPeer("n3", &n3)
	want += "add 10.244.3.0/24||192.168.100.13||\n"
	waitFile(t, log, want)

	// The same lease again changes nothing; a changed one runs the add again.
	b.SetPeer("n2", &n2)
	n2b := n2
	n2b.Attrs.PublicIP = netip.MustParseAddr("192.168.100.22")
	b.SetPeer("n2", &n2b)
	want += "add 10.244.2.0/24|fd00:10:244:2::/64|192.168.100.22|fd00:100::12|data of n2\n"
	waitFile(t, log, want)

	b.SetPeer("n3", nil)
	want += "remove 10.244.3.0/24||192.168.100.13||\n"
	waitFile(t, log, want)
	b.SetPeer("n3", nil) // gone already: nothing
	time.Sleep(50 * time.Millisecond)
	waitFile(t, log, want)
	b.mu.Lock()
	if _, ok := b.peers["n3"]; ok || len(b.peers) != 1 {
		t.Errorf("peers after n3's removal: %d", len(b.peers))
	}
	b.mu.Unlock()
}

func TestPeerCommandRetry(t *testing.T) {
	dir := t.TempDir()
	log, fail := filepath.Join(dir, "log"), filepath.Join(dir, "fail")
	if err := os.WriteFile(fail, []byte("2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Fails while the count in fail is above 0, decrementing it.
	add := `n=$(cat ` + fail + `); echo "try $SUBNET" >>` + log + `; if [ "$n" -gt 0 ]; then echo $((n-1)) >` + fail + `; echo failing >&2; exit 1; fi`
	b := newTest(t, `{"Type":"extension","SubnetAddCommand":`+js(add)+`,"SubnetRemoveCommand":`+js(`echo "remove $SUBNET" >>`+log)+`}`)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.Forward(ctx) }()
	n2 := subnet.Lease{Name: "n2", Subnet: netip.MustParsePrefix("10.244.2.0/24"), Attrs: subnet.LeaseAttrs{BackendType: Type}}
	b.SetPeer("n2", &n2)
	want := "try 10.244.2.0/24\ntry 10.244.2.0/24\ntry 10.244.2.0/24\n"
	waitFile(t, log, want)
	time.Sleep(100 * time.Millisecond) // synced: no more tries
	waitFile(t, log, want)

	// A command running when the daemon stops is killed.
	b.opts.SubnetRemoveCommand = "sleep 30"
	b.SetPeer("n2", nil)
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Forward: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Forward did not stop with its context")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Forward took %s to stop", d)
	}
}

func TestCapped(t *testing.T) {
	c := &capped{max: 4}
	c.Write([]byte("ab"))
	c.Write([]byte("cdef"))
	c.Write([]byte("gh"))
	if c.buf.String() != "abcd" || c.over != 4 {
		t.Errorf("capped = %q, %d over", c.buf.String(), c.over)
	}
	if got := logged(c); got != "abcd... (4 bytes more)" {
		t.Errorf("logged = %q", got)
	}
}
