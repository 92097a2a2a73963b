package cni

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pluginFixture is a subnet.env, a dataDir and a recording delegate.
type pluginFixture struct {
	dir, envPath, dataDir string
	f                     *fakeDelegate
	p                     Plugin
}

func newFixture(t *testing.T, subnetEnv string) *pluginFixture {
	t.Helper()
	dir := t.TempDir()
	fx := &pluginFixture{dir: dir, envPath: filepath.Join(dir, "subnet.env"), dataDir: filepath.Join(dir, "state"), f: &fakeDelegate{}}
	fx.p = Plugin{Delegator: fx.f}
	if err := os.WriteFile(fx.envPath, []byte(subnetEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	return fx
}

// conf returns the flannel entry with this fixture's files and the given
// extra top-level keys (",\"delegate\":{...}" and the like).
func (fx *pluginFixture) conf(extra string) []byte {
	return []byte(`{"name":"cbr0","type":"flannel","subnetFile":"` + fx.envPath +
		`","dataDir":"` + fx.dataDir + `"` + extra + `}`)
}

func (fx *pluginFixture) statePath(id string) string { return filepath.Join(fx.dataDir, id) }

// savedConf reads and decodes the saved delegate configuration of id.
func (fx *pluginFixture) savedConf(t *testing.T, id string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(fx.statePath(id))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("saved configuration %q: %v", data, err)
	}
	return m
}

const v4Env = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"

// Item 9: a saved delegate configuration that cannot be used (a crash
// during ADD, a planted symlink) must not make DEL fail forever: the plugin
// says so on stderr, drops the file and succeeds without calling the delegate.
func TestDelSucceedsWhenSavedConfigIsUnusable(t *testing.T) {
	cases := map[string]func(path string) error{
		"empty":     func(p string) error { return os.WriteFile(p, nil, 0o600) },
		"truncated": func(p string) error { return os.WriteFile(p, []byte(`{"type":"bri`), 0o600) },
		"no type":   func(p string) error { return os.WriteFile(p, []byte(`{"name":"cbr0"}`), 0o600) },
		"not JSON":  func(p string) error { return os.WriteFile(p, []byte("\x00\x00\x00"), 0o600) },
		"symlink": func(p string) error {
			target := filepath.Join(filepath.Dir(filepath.Dir(p)), "elsewhere")
			if err := os.WriteFile(target, []byte(`{"type":"bridge"}`), 0o600); err != nil {
				return err
			}
			return os.Symlink(target, p)
		},
	}
	for name, plant := range cases {
		t.Run(name, func(t *testing.T) {
			fx := newFixture(t, v4Env)
			if err := os.MkdirAll(fx.dataDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := plant(fx.statePath("c1")); err != nil {
				t.Fatal(err)
			}
			var log strings.Builder
			fx.p.Log = &log
			if err := fx.p.Del(context.Background(), "c1", fx.conf("")); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if !strings.Contains(log.String(), "unusable saved delegate configuration "+fx.statePath("c1")) {
				t.Fatalf("DEL logged %q", log.String())
			}
			if len(fx.f.calls) != 0 {
				t.Fatalf("delegate called: %v", fx.f.calls)
			}
			if _, err := os.Lstat(fx.statePath("c1")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("unusable state left behind: %v", err)
			}
			if err := fx.p.Check(context.Background(), "c1", fx.conf("")); err == nil {
				t.Fatal("CHECK without a saved configuration succeeded")
			}
		})
	}
}

// Item 9: ADD replaces whatever is at the state path (here a symlink planted
// there) with a regular file, never writing through the link.
func TestAddDoesNotFollowSymlinkAtStatePath(t *testing.T) {
	fx := newFixture(t, v4Env)
	if err := os.MkdirAll(fx.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(fx.dir, "victim")
	if err := os.WriteFile(target, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, fx.statePath("c1")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := fx.p.Add(context.Background(), "c1", fx.conf("")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(target); string(got) != "precious\n" {
		t.Fatalf("symlink target overwritten: %q", got)
	}
	fi, err := os.Lstat(fx.statePath("c1"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file %v (err %v), want a regular 0600 file", fi.Mode(), err)
	}
	if string(mustRead(t, fx.statePath("c1"))) != fx.f.confs[0] {
		t.Fatal("saved configuration differs from what the delegate got")
	}
	assertOnlyState(t, fx.dataDir, "c1")
}

// Item 9: the saved configuration is synced before it is renamed into place;
// when that fails ADD fails before calling the delegate and leaves nothing.
func TestAddFailsWhenStateCannotBeSynced(t *testing.T) {
	fx := newFixture(t, v4Env)
	fx.p.Sync = func(*os.File) error { return errors.New("disk on fire") }
	_, _, err := fx.p.Add(context.Background(), "c1", fx.conf(""))
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("ADD error %v", err)
	}
	if len(fx.f.calls) != 0 {
		t.Fatalf("delegate called: %v", fx.f.calls)
	}
	assertOnlyState(t, fx.dataDir)
}

// A DEL whose delegate fails keeps the saved configuration, so the runtime's
// retry reaches the delegate again (upstream removes it before knowing).
func TestRetriedDelReachesDelegate(t *testing.T) {
	fx := newFixture(t, v4Env)
	ctx := context.Background()
	if _, _, err := fx.p.Add(ctx, "c1", fx.conf("")); err != nil {
		t.Fatal(err)
	}
	fx.f.failDel = true
	if err := fx.p.Del(ctx, "c1", fx.conf("")); err == nil {
		t.Fatal("DEL succeeded although the delegate failed")
	}
	fx.f.failDel = false
	if err := fx.p.Del(ctx, "c1", fx.conf("")); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(fx.f.calls, ","); got != "ADD bridge,DEL bridge,DEL bridge" {
		t.Fatalf("calls %s", got)
	}
	assertOnlyState(t, fx.dataDir)
}

// Item 10: several comma-separated networks give one route each, duplicates
// collapsed, in both families.
func TestAddWithSeveralNetworks(t *testing.T) {
	fx := newFixture(t, "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"+
		"FLANNEL_IPV6_NETWORK=fc00::/48,fd00::/48,fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n")
	if _, _, err := fx.p.Add(context.Background(), "c1", fx.conf("")); err != nil {
		t.Fatal(err)
	}
	routes, _ := json.Marshal(fx.savedConf(t, "c1")["ipam"].(map[string]any)["routes"])
	const want = `[{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"},{"dst":"fc00::/48"},{"dst":"fd00::/48"}]`
	if string(routes) != want {
		t.Fatalf("routes %s, want %s", routes, want)
	}
}

// Item 11: the delegate block may not set name or ipam; ADD says so and
// neither calls the delegate nor saves anything.
func TestAddRejectsDelegateNameAndIPAM(t *testing.T) {
	for key, delegate := range map[string]string{
		"name": `{"name":"other"}`,
		"ipam": `{"ipam":{"type":"dhcp"}}`,
	} {
		t.Run(key, func(t *testing.T) {
			fx := newFixture(t, v4Env)
			_, _, err := fx.p.Add(context.Background(), "c1", fx.conf(`,"delegate":`+delegate))
			if err == nil || !strings.Contains(err.Error(), `"`+key+`"`) || !strings.Contains(err.Error(), "delegate") {
				t.Fatalf("ADD error %v, want one naming delegate %q", err, key)
			}
			if len(fx.f.calls) != 0 {
				t.Fatalf("delegate called: %v", fx.f.calls)
			}
			assertOnlyState(t, fx.dataDir)
		})
	}
}

// Item 12: a subnet.env with no FLANNEL_* key gives one line naming every
// missing key, as upstream's does.
func TestAddNamesEveryMissingSubnetEnvKey(t *testing.T) {
	fx := newFixture(t, "foo=bar\n")
	_, _, err := fx.p.Add(context.Background(), "c1", fx.conf(""))
	const want = "missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
	if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") ||
		strings.Count(err.Error(), "FLANNEL_MTU") != 1 {
		t.Fatalf("ADD error %q, want one line containing %q", err, want)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// assertOnlyState fails unless dataDir holds exactly the named files (no
// temporary files left over); a missing dataDir holds nothing.
func assertOnlyState(t *testing.T, dataDir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dataDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("%s holds %v, want %v", dataDir, got, names)
	}
}
