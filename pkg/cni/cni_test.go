package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net"
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

// pluginEnv is what the plugin reads from the subnet.env flanneld writes
// for e.
func pluginEnv(t *testing.T, e subnet.Env) SubnetEnv {
	t.Helper()
	text, err := subnet.FormatEnv(e)
	if err != nil {
		t.Fatal(err)
	}
	env, err := ParseSubnetEnv(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("%s: %v", text, err)
	}
	return env
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
			d, err := DelegateConfig(n, pluginEnv(t, env))
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name, d)
		})
	}
}

func TestParseNetConfErrors(t *testing.T) {
	for _, conf := range []string{`{`, `{"name":"x","delegate":"bridge"}`, `{"name":"x","ipam":[]}`} {
		if _, err := ParseNetConf([]byte(conf)); err == nil {
			t.Errorf("%s: no error", conf)
		}
	}
	// The delegate block is checked at ADD only: DEL and CHECK use the
	// configuration saved then.
	for _, conf := range []string{`{"name":"x","delegate":{"type":5}}`, `{"name":"x","delegate":{"type":""}}`,
		`{"name":"x","ipam":{"routes":{"dst":"10.0.0.0/8"}}}`, `{"name":"x","ipam":{"routes":[{"dst":"bogus"}]}}`} {
		n, err := ParseNetConf([]byte(conf))
		if err != nil {
			t.Fatalf("%s: %v", conf, err)
		}
		if _, err := DelegateConfig(n, pluginEnv(t, testEnv())); err == nil {
			t.Errorf("%s: DelegateConfig gave no error", conf)
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
	failDel bool
}

func (f *fakeDelegate) Add(_ context.Context, plugin string, conf []byte) (types.Result, error) {
	f.calls, f.confs = append(f.calls, "ADD "+plugin), append(f.confs, string(conf))
	if f.failAdd {
		return nil, errors.New("bridge failed")
	}
	return hostLocalResult(conf)
}

// hostLocalResult is what bridge with host-local IPAM would report for
// conf: the second address of each range (the first is the gateway's).
func hostLocalResult(conf []byte) (types.Result, error) {
	var c struct {
		IPAM struct {
			Ranges [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(conf, &c); err != nil {
		return nil, err
	}
	res := &current.Result{CNIVersion: "1.0.0"}
	for _, r := range c.IPAM.Ranges {
		p, err := netip.ParsePrefix(r[0].Subnet)
		if err != nil {
			return nil, err
		}
		addr := p.Addr().Next().Next()
		res.IPs = append(res.IPs, &current.IPConfig{Address: net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(p.Bits(), addr.BitLen())}})
	}
	return res, nil
}

func (f *fakeDelegate) Check(_ context.Context, plugin string, conf []byte) error {
	f.calls, f.confs = append(f.calls, "CHECK "+plugin), append(f.confs, string(conf))
	return nil
}

func (f *fakeDelegate) Del(_ context.Context, plugin string, conf []byte) error {
	f.calls, f.confs = append(f.calls, "DEL "+plugin), append(f.confs, string(conf))
	if f.failDel {
		return errors.New("bridge DEL failed")
	}
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
