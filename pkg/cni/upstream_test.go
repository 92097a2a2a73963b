package cni

// Replays of every case of upstream's suite (flannel-io/cni-plugin,
// flannel_linux_test.go), each subtest named after upstream's Context and
// It. Upstream runs the real bridge and host-local plugins in network
// namespaces; here a recording fake delegate stands in for them and reports
// one address per IPAM range, as host-local would.
//
// Where ours deliberately differs (see Documentation/kubernetes.md, "The CNI
// plugin"), these replays pass anyway and other tests pin our behaviour: a
// subnet.env line without "=" is an error where upstream panics
// (TestParseSubnetEnvErrors), and a DEL whose delegate fails keeps the saved
// configuration, so the runtime's retry reaches the delegate again, where
// upstream forgets it first (TestRetriedDelReachesDelegate).

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// Upstream's subnet.env fixtures.
const (
	upIPv4Env  = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	upIPv6Env  = "\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	upDualEnv  = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	upMultiEnv = "\nFLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)

// upInput is upstream's flannel entry (network cni-flannel) for fx, with
// the given ipam object when not nil.
func upInput(t *testing.T, fx *pluginFixture, ipam map[string]any) []byte {
	t.Helper()
	in := map[string]any{"name": "cni-flannel", "type": "flannel", "subnetFile": fx.envPath, "dataDir": fx.dataDir}
	if ipam != nil {
		in["ipam"] = ipam
	}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// upIPAM is upstream's input ipam: an unknown key and two routes, one with
// a gateway, and the given type unless empty.
func upIPAM(ipamType string) map[string]any {
	m := map[string]any{
		"unknown-param": "unknown-value",
		"routes": []any{
			map[string]any{"dst": "10.96.0.0/12"},
			map[string]any{"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
		},
	}
	if ipamType != "" {
		m["type"] = ipamType
	}
	return m
}

// assertJSON fails unless got and want are the same JSON value.
func assertJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want %s: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// savedBridge is the saved delegate configuration upstream expects for the
// given ipam.
func savedBridge(ipam string) string {
	return `{"ipMasq":false,"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge","ipam":` + ipam + `}`
}

// Describe "CNI lifecycle": ADD saves the delegate configuration in dataDir
// and returns the delegate's addresses; DEL removes it; a second DEL
// succeeds although nothing is saved any more.
func TestUpstreamCNILifecycle(t *testing.T) {
	tests := []struct {
		upstream, env, id, saved string
		ips                      int
	}{
		{"when using only ipv4 stack/uses dataDir for storing network configuration with ipv4 stack",
			upIPv4Env, "some-container-id-ipv4",
			savedBridge(`{"type":"host-local","ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}]}`), 1},
		{"when using ipv4 stack with two networks/uses dataDir for storing network configuration with two ranges in ipv4 stack",
			upMultiEnv, "some-container-id-ipv4-multiple",
			savedBridge(`{"type":"host-local","ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"}]}`), 1},
		{"when using only ipv6 stack/uses dataDir for storing network configuration with ipv6 stack",
			upIPv6Env, "some-container-id-ipv6",
			savedBridge(`{"type":"host-local","ranges":[[{"subnet":"fc00::/64"}]],"routes":[{"dst":"fc00::/48"}]}`), 1},
		{"when using dual stack/uses dataDir for storing network configuration with dual stack",
			upDualEnv, "some-container-id-dual-stack",
			savedBridge(`{"type":"host-local","ranges":[[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]],` +
				`"routes":[{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}]}`), 2},
	}
	for _, tt := range tests {
		t.Run(tt.upstream, func(t *testing.T) {
			fx := newFixture(t, tt.env)
			in, ctx := upInput(t, fx, nil), context.Background()
			res, _, err := fx.p.Add(ctx, tt.id, in)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			saved := mustRead(t, fx.statePath(tt.id))
			assertJSON(t, saved, tt.saved)
			if r, err := current.NewResultFromResult(res); err != nil || len(r.IPs) != tt.ips {
				t.Fatalf("result %v (err %v), want %d addresses", res, err, tt.ips)
			}
			if err := fx.p.Del(ctx, tt.id, in); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if _, err := os.Stat(fx.statePath(tt.id)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("saved configuration not removed: %v", err)
			}
			if err := fx.p.Del(ctx, tt.id, in); err != nil {
				t.Fatalf("second DEL: %v", err)
			}
			if got := strings.Join(fx.f.calls, ","); got != "ADD bridge,DEL bridge" || fx.f.confs[1] != string(saved) {
				t.Fatalf("delegate calls %s with %q, want ADD then DEL with the saved configuration", got, fx.f.confs)
			}
		})
	}
}

// Describe "loadFlannelNetConf": subnetFile and dataDir as given, or
// upstream's defaults.
func TestUpstreamLoadFlannelNetConf(t *testing.T) {
	for _, stack := range []struct{ name, env string }{{"ipv4 stack", upIPv4Env}, {"ipv6 stack", upIPv6Env}, {"dual stack", upDualEnv}} {
		t.Run("when subnetFile and dataDir are specified with "+stack.name+"/loads flannel network config with "+stack.name, func(t *testing.T) {
			fx := newFixture(t, stack.env)
			n, err := ParseNetConf(upInput(t, fx, nil))
			if err != nil || n.Name != "cni-flannel" || n.Type != "flannel" || n.SubnetFile != fx.envPath || n.DataDir != fx.dataDir {
				t.Fatalf("%+v, %v", n, err)
			}
		})
		t.Run("when defaulting subnetFile and dataDir with "+stack.name+"/loads flannel network config with defaults with "+stack.name, func(t *testing.T) {
			n, err := ParseNetConf([]byte(`{"name":"cni-flannel","type":"flannel"}`))
			if err != nil || n.Name != "cni-flannel" || n.Type != "flannel" ||
				n.SubnetFile != "/run/flannel/subnet.env" || n.DataDir != "/var/lib/cni/flannel" {
				t.Fatalf("%+v, %v", n, err)
			}
		})
	}
}

// Describe "loadFlannelSubnetEnv" (nested in "loadFlannelNetConf"
// upstream): valid files read back; one with no FLANNEL_ key names them all.
func TestUpstreamLoadFlannelSubnetEnv(t *testing.T) {
	stacks := []struct {
		name, env, nw, sn, nw6, sn6 string
	}{
		{"ipv4 stack", upIPv4Env, "10.1.0.0/16", "10.1.17.0/24", "", ""},
		{"ipv6 stack", upIPv6Env, "", "", "fc00::/48", "fc00::/64"},
		{"dual stack", upDualEnv, "10.1.0.0/16", "10.1.17.0/24", "fc00::/48", "fc00::/64"},
	}
	first := func(ps []netip.Prefix) string {
		if len(ps) == 0 {
			return ""
		}
		return ps[0].String()
	}
	for _, s := range stacks {
		t.Run("when flannel subnet env is valid with "+s.name+"/loads flannel subnet config with "+s.name, func(t *testing.T) {
			fx := newFixture(t, s.env)
			e, err := ReadSubnetEnv(fx.envPath)
			if err != nil {
				t.Fatal(err)
			}
			if first(e.Networks) != s.nw || prefixString(e.Subnet) != s.sn || first(e.IPv6Networks) != s.nw6 ||
				prefixString(e.IPv6Subnet) != s.sn6 || e.MTU != 1472 || !e.IPMasq {
				t.Fatalf("%+v", e)
			}
		})
		t.Run("when flannel subnet env is invalid with "+s.name+"/returns an error", func(t *testing.T) {
			fx := newFixture(t, "foo=bar")
			_, err := ReadSubnetEnv(fx.envPath)
			const want = "missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want one containing %q", err, want)
			}
		})
	}
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

// Describe "getDelegateIPAM": the input ipam completed with ranges and
// routes from subnet.env, its other keys kept, host-local by default.
func TestUpstreamGetDelegateIPAM(t *testing.T) {
	const given = `{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"}`
	v4, v6 := `[{"subnet":"10.1.17.0/24"}]`, `[{"subnet":"fc00::/64"}]`
	want := func(ipamType, ranges, routes string) string {
		return `{"type":"` + ipamType + `","unknown-param":"unknown-value","ranges":[` + ranges + `],"routes":[` + given + `,` + routes + `]}`
	}
	tests := []struct {
		upstream, env string
		ipam          map[string]any
		want          string
	}{
		{"when input IPAM is provided with ipv4 stack/configures Delegate IPAM accordingly with ipv4 stack",
			upIPv4Env, upIPAM("my-ipam"), want("my-ipam", v4, `{"dst":"10.1.0.0/16"}`)},
		// Upstream's BeforeEach builds an input with ipam here, but its It
		// reads the multi-network input without one; replayed as run.
		{"when input IPAM is provided with two networks ipv4 stack/configures Delegate IPAM accordingly with two routes in ipv4 stack",
			upMultiEnv, nil, `{"type":"host-local","ranges":[` + v4 + `],"routes":[{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"}]}`},
		// And with the ipam that BeforeEach built (type host-local, no routes).
		{"when input IPAM is provided with two networks ipv4 stack/as its BeforeEach meant",
			upMultiEnv, map[string]any{"type": "host-local", "unknown-param": "unknown-value", "routes": []any{}},
			`{"type":"host-local","unknown-param":"unknown-value","ranges":[` + v4 + `],"routes":[{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"}]}`},
		{"when input IPAM is provided with ipv6 stack/configures Delegate IPAM accordingly with ipv6 stack",
			upIPv6Env, upIPAM("my-ipam"), want("my-ipam", v6, `{"dst":"fc00::/48"}`)},
		{"when input IPAM is provided with dual stack/configures Delegate IPAM accordingly with dual stack",
			upDualEnv, upIPAM("my-ipam"), want("my-ipam", v4+","+v6, `{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}`)},
		{"when input IPAM is provided without 'type' with ipv4 stack/configures Delegate IPAM with 'host-local' ipam with ipv4 stack",
			upIPv4Env, upIPAM(""), want("host-local", v4, `{"dst":"10.1.0.0/16"}`)},
		{"when input IPAM is provided without 'type' with ipv6 stack/configures Delegate IPAM with 'host-local' ipam with ipv6 stack",
			upIPv6Env, upIPAM(""), want("host-local", v6, `{"dst":"fc00::/48"}`)},
		{"when input IPAM is provided without 'type' with dual stack/configures Delegate IPAM with 'host-local' ipam with dual stack",
			upDualEnv, upIPAM(""), want("host-local", v4+","+v6, `{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}`)},
	}
	for _, tt := range tests {
		t.Run(tt.upstream, func(t *testing.T) {
			fx := newFixture(t, tt.env)
			n, err := ParseNetConf(upInput(t, fx, tt.ipam))
			if err != nil {
				t.Fatal(err)
			}
			env, err := ReadSubnetEnv(fx.envPath)
			if err != nil {
				t.Fatal(err)
			}
			d, err := DelegateConfig(n, env)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(d["ipam"])
			if err != nil {
				t.Fatal(err)
			}
			assertJSON(t, got, tt.want)
		})
	}
}
