package cni

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/flanneld/flanneld/subnet"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The conflist's flannel entry, as in Documentation/kube-flannel.yml.
const conflistEntry = `{
  "cniVersion": "0.3.1",
  "name": "cbr0",
  "type": "flannel",
  "delegate": {"hairpinMode": true, "isDefaultGateway": true}
}`

func testEnv() subnet.Env {
	return subnet.Env{
		Network: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet:  netip.MustParsePrefix("10.244.1.1/24"),
		MTU:     1450,
		IPMasq:  true,
	}
}

func golden(t *testing.T, name string, v any) {
	t.Helper()
	got, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s differs:\n%s\nwant:\n%s", name, got, want)
	}
}

func TestDelegateConfigGolden(t *testing.T) {
	tests := []struct {
		name, conf string
		env        func(*subnet.Env)
	}{
		{name: "default.json", conf: conflistEntry},
		{name: "no-ipmasq.json", conf: conflistEntry, env: func(e *subnet.Env) { e.IPMasq = false }},
		{name: "explicit-delegate.json", conf: `{"cniVersion":"1.0.0","name":"cbr0","type":"flannel",
			"delegate":{"type":"bridge","mtu":1400,"ipMasq":true,"isGateway":false,"bridge":"mybr"},
			"ipam":{"type":"host-local","dataDir":"/tmp/ipam","routes":[{"dst":"192.0.2.0/24"}]},
			"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}`},
		{name: "other-delegate.json", conf: `{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"type":"ipvlan","master":"eth0"}}`},
		{name: "dual-stack.json", conf: conflistEntry, env: func(e *subnet.Env) {
			e.IPv6Network = netip.MustParsePrefix("fd00:10:244::/56")
			e.IPv6Subnet = netip.MustParsePrefix("fd00:10:244:1::1/64")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ParseNetConf([]byte(tt.conf))
			if err != nil {
				t.Fatal(err)
			}
			env := testEnv()
			if tt.env != nil {
				tt.env(&env)
			}
			d, err := DelegateConfig(n, env)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name, d)
		})
	}
}

func TestParseNetConfErrors(t *testing.T) {
	for _, conf := range []string{`{`, `{"name":"x","delegate":{"type":5}}`, `{"name":"x","delegate":{"type":""}}`} {
		if _, err := ParseNetConf([]byte(conf)); err == nil {
			t.Errorf("%s: no error", conf)
		}
	}
	n, err := ParseNetConf([]byte(`{"name":"x"}`))
	if err != nil || n.SubnetFile != DefaultSubnetFile || n.DataDir != DefaultDataDir {
		t.Fatalf("defaults: %+v, %v", n, err)
	}
}

func TestMissingSubnetEnvSaysFlanneldIsNotRunning(t *testing.T) {
	_, err := ReadSubnetEnv(filepath.Join(t.TempDir(), "subnet.env"))
	if err == nil || !strings.Contains(err.Error(), "flanneld is not running on this node") {
		t.Fatalf("error %v", err)
	}
}

// fakeDelegate records calls.
type fakeDelegate struct {
	calls   []string
	confs   []string
	failAdd bool
}

func (f *fakeDelegate) Add(_ context.Context, plugin string, conf []byte) (types.Result, error) {
	f.calls, f.confs = append(f.calls, "ADD "+plugin), append(f.confs, string(conf))
	if f.failAdd {
		return nil, errors.New("bridge failed")
	}
	return &current.Result{CNIVersion: "1.0.0"}, nil
}

func (f *fakeDelegate) Check(_ context.Context, plugin string, conf []byte) error {
	f.calls, f.confs = append(f.calls, "CHECK "+plugin), append(f.confs, string(conf))
	return nil
}

func (f *fakeDelegate) Del(_ context.Context, plugin string, conf []byte) error {
	f.calls, f.confs = append(f.calls, "DEL "+plugin), append(f.confs, string(conf))
	return nil
}

func TestAddCheckDel(t *testing.T) {
	dir := t.TempDir()
	envPath := filepath.Join(dir, "subnet.env")
	if err := subnet.WriteEnvFile(envPath, testEnv()); err != nil {
		t.Fatal(err)
	}
	conf := `{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","subnetFile":"` + envPath +
		`","dataDir":"` + filepath.Join(dir, "state") + `","delegate":{"hairpinMode":true}}`
	f := &fakeDelegate{}
	p := Plugin{Delegator: f}
	ctx := context.Background()

	if _, _, err := p.Add(ctx, "c1", []byte(conf)); err != nil {
		t.Fatal(err)
	}
	saved, err := os.ReadFile(filepath.Join(dir, "state", "c1"))
	if err != nil || string(saved) != f.confs[0] {
		t.Fatalf("saved delegate config %q (err %v), want what was passed to the delegate", saved, err)
	}
	// DEL uses the saved configuration even when subnet.env has changed.
	if err := os.Remove(envPath); err != nil {
		t.Fatal(err)
	}
	withPrev := strings.TrimSuffix(conf, "}") + `,"prevResult":{"cniVersion":"1.0.0"}}`
	if err := p.Check(ctx, "c1", []byte(withPrev)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.confs[1], `"prevResult"`) {
		t.Fatalf("CHECK config lacks prevResult: %s", f.confs[1])
	}
	if err := p.Del(ctx, "c1", []byte(conf)); err != nil {
		t.Fatal(err)
	}
	if f.confs[2] != string(saved) {
		t.Fatalf("DEL config %s, want the saved %s", f.confs[2], saved)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state not removed: %v", err)
	}
	// A second DEL succeeds without calling the delegate.
	if err := p.Del(ctx, "c1", []byte(conf)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, ","); got != "ADD bridge,CHECK bridge,DEL bridge" {
		t.Fatalf("calls %s", got)
	}
}

func TestAddFailureCleansUp(t *testing.T) {
	dir := t.TempDir()
	envPath := filepath.Join(dir, "subnet.env")
	if err := subnet.WriteEnvFile(envPath, testEnv()); err != nil {
		t.Fatal(err)
	}
	conf := `{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","subnetFile":"` + envPath +
		`","dataDir":"` + filepath.Join(dir, "state") + `"}`
	f := &fakeDelegate{failAdd: true}
	if _, _, err := (Plugin{Delegator: f}).Add(context.Background(), "c1", []byte(conf)); err == nil {
		t.Fatal("no error")
	}
	if got := strings.Join(f.calls, ","); got != "ADD bridge,DEL bridge" {
		t.Fatalf("calls %s", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state left behind: %v", err)
	}
}
