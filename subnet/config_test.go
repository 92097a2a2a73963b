package subnet

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Config
	}{
		{
			name: "upstream default manifest",
			in:   `{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}`,
			want: Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16"),
				BackendType: "vxlan", Backend: json.RawMessage(`{"Type": "vxlan"}`)},
		},
		{
			name: "missing backend defaults to vxlan",
			in:   `{"Network": "10.244.0.0/16"}`,
			want: Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16"),
				BackendType: "vxlan", Backend: json.RawMessage(`{"Type":"vxlan"}`)},
		},
		{
			name: "null backend defaults to vxlan",
			in:   `{"Network": "10.244.0.0/16", "Backend": null}`,
			want: Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16"),
				BackendType: "vxlan", Backend: json.RawMessage(`{"Type":"vxlan"}`)},
		},
		{
			name: "backend without type keeps its options",
			in:   `{"Network": "10.244.0.0/16", "Backend": {"VNI": 4096}}`,
			want: Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16"),
				BackendType: "vxlan", Backend: json.RawMessage(`{"VNI": 4096}`)},
		},
		{
			name: "keys are case-insensitive and type is lower-cased",
			in:   `{"network": "10.244.0.0/16", "ENABLENFTABLES": true, "backend": {"type": "Host-GW"}}`,
			want: Config{EnableIPv4: true, EnableNFTables: true, Network: netip.MustParsePrefix("10.244.0.0/16"),
				BackendType: "host-gw", Backend: json.RawMessage(`{"type": "Host-GW"}`)},
		},
		{
			name: "dual stack with etcd range settings",
			in: `{
				"Network": "10.244.0.0/16", "SubnetLen": 25, "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.20.128",
				"EnableIPv6": true, "IPv6Network": "fd00:10:244::/56", "IPv6SubnetLen": 64,
				"IPv6SubnetMin": "fd00:10:244:1::", "IPv6SubnetMax": "fd00:10:244:ff::",
				"Backend": {"Type": "udp", "Port": 8285}
			}`,
			want: Config{
				EnableIPv4: true, EnableIPv6: true,
				Network: netip.MustParsePrefix("10.244.0.0/16"), IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"),
				SubnetLen: 25, SubnetMin: netip.MustParseAddr("10.244.10.0"), SubnetMax: netip.MustParseAddr("10.244.20.128"),
				IPv6SubnetLen: 64, IPv6SubnetMin: netip.MustParseAddr("fd00:10:244:1::"), IPv6SubnetMax: netip.MustParseAddr("fd00:10:244:ff::"),
				BackendType: "udp", Backend: json.RawMessage(`{"Type": "udp", "Port": 8285}`),
			},
		},
		{
			name: "IPv6 only needs no Network",
			in:   "\xef\xbb\xbf" + `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48", "Backend": {"Type": ""}}`,
			want: Config{EnableIPv6: true, IPv6Network: netip.MustParsePrefix("fd00::/48"),
				BackendType: "vxlan", Backend: json.RawMessage(`{"Type": ""}`)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			assertConfigEqual(t, got, &tt.want)
		})
	}
}

// assertConfigEqual compares configs, Backend by its exact bytes.
func assertConfigEqual(t *testing.T, got, want *Config) {
	t.Helper()
	g, w := *got, *want
	if string(g.Backend) != string(w.Backend) {
		t.Errorf("Backend = %s, want %s", g.Backend, w.Backend)
	}
	g.Backend, w.Backend = nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Errorf("got  %+v\nwant %+v", g, w)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // substrings of the error
	}{
		{"empty", "  \n", []string{"it is empty"}},
		{"not an object", `["10.244.0.0/16"]`, []string{"must be a JSON object"}},
		{"null", `null`, []string{"must be a JSON object"}},
		{"bad JSON with position", "{\n  \"Network\": \"10.244.0.0/16\",\n  \"Backend\": {\"Type\": \"vxlan\"},\n}",
			[]string{"invalid JSON at line 4, column 1"}},
		{"truncated", `{"Network": "10.244.0.0/16"`, []string{"invalid JSON", "unexpected end"}},
		{"trailing garbage", `{"Network": "10.244.0.0/16"} x`, []string{"invalid JSON at line 1, column 30"}},
		{"network missing", `{}`, []string{`Network is missing: give the IPv4 cluster network, e.g. "10.244.0.0/16"`}},
		{"network not a string", `{"Network": 10}`, []string{`Network must be a string like "10.244.0.0/16", not 10`}},
		{"network not a CIDR", `{"Network": "10.244.0.0"}`, []string{`Network "10.244.0.0" is not a CIDR`}},
		{"network IPv6", `{"Network": "fd00::/48"}`, []string{"Network fd00::/48 is not an IPv4 network"}},
		{"network /0", `{"Network": "0.0.0.0/0"}`, []string{"Network 0.0.0.0/0 covers every IPv4 address"}},
		{"network /0 with host bits", `{"Network": "10.0.0.0/0"}`, []string{"Network 10.0.0.0/0 covers every IPv4 address"}},
		{"network too small", `{"Network": "10.244.0.0/31"}`, []string{"Network 10.244.0.0/31 is too small to hold a node subnet: it must be /30 or larger"}},
		{"IPv6Network /0", `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "::/0"}`, []string{"IPv6Network ::/0 covers every IPv6 address"}},
		{"IPv6Network too small", `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/127"}`, []string{"IPv6Network fd00::/127 is too small"}},
		{"IPv6Network IPv4", `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "10.245.0.0/16"}`,
			[]string{"IPv6Network 10.245.0.0/16 is not an IPv6 network"}},
		{"IPv6Network missing", `{"Network": "10.244.0.0/16", "EnableIPv6": true}`, []string{"IPv6Network is missing"}},
		{"both disabled", `{"EnableIPv4": false}`, []string{"EnableIPv4 and EnableIPv6 are both false"}},
		{"enable not bool", `{"Network": "10.244.0.0/16", "EnableIPv4": "yes"}`, []string{`EnableIPv4 must be true or false, not "yes"`}},
		{"backend not object", `{"Network": "10.244.0.0/16", "Backend": "vxlan"}`,
			[]string{`Backend must be an object like {"Type": "vxlan"}, not "vxlan"`}},
		{"backend type not string", `{"Network": "10.244.0.0/16", "Backend": {"Type": 1}}`,
			[]string{`Backend.Type must be a string like "vxlan", not 1`}},
		{"subnet len not a number", `{"Network": "10.244.0.0/16", "SubnetLen": "24"}`, []string{`SubnetLen must be a whole number, not "24"`}},
		{"subnet len out of range", `{"Network": "10.244.0.0/16", "SubnetLen": 33}`, []string{"SubnetLen 33 is not a prefix length between 1 and 32"}},
		{"subnet min wrong family", `{"Network": "10.244.0.0/16", "SubnetMin": "fd00::"}`, []string{"SubnetMin fd00:: is not an IPv4 address"}},
		{"subnet max not an IP", `{"Network": "10.244.0.0/16", "SubnetMax": "x"}`, []string{`SubnetMax "x" is not an IP address`}},
		{"several problems at once", `{"Network": "10.244.0.0", "Backend": []}`,
			[]string{`Network "10.244.0.0" is not a CIDR`, "Backend must be an object"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.in))
			if err == nil {
				t.Fatalf("ParseConfig = %+v, want an error", c)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestReadConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(path, []byte(`{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ReadConfigFile(path)
	if err != nil || c.BackendType != "host-gw" {
		t.Fatalf("ReadConfigFile = %+v, %v", c, err)
	}

	if err := os.WriteFile(path, []byte(`{"Network": "nope"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadConfigFile(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("invalid file: error %v does not name %s", err, path)
	}

	missing := filepath.Join(dir, "missing.json")
	_, err = ReadConfigFile(missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: error = %v", err)
	}
}

func TestConfigMarshalJSONRoundTrip(t *testing.T) {
	for _, in := range []string{
		`{"Network": "10.244.0.0/16"}`,
		`{"Network": "10.244.0.0/16", "EnableNFTables": true, "SubnetLen": 26, "SubnetMin": "10.244.0.64", "Backend": {"Type": "VXLAN", "VNI": 2}}`,
		`{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 80}`,
	} {
		c, err := ParseConfig([]byte(in))
		if err != nil {
			t.Fatalf("ParseConfig(%s): %v", in, err)
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		back, err := ParseConfig(out)
		if err != nil {
			t.Fatalf("ParseConfig(%s): %v", out, err)
		}
		assertConfigEqual(t, back, withCompactBackend(t, c))
	}

	// A Config built in code without a Backend object gets one from its type.
	out, err := json.Marshal(Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.244.0.0/16"), BackendType: "host-gw"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"Network":"10.244.0.0/16","EnableIPv4":true,"EnableIPv6":false,"EnableNFTables":false,"Backend":{"Type":"host-gw"}}`
	if string(out) != want {
		t.Errorf("Marshal = %s\nwant      %s", out, want)
	}
}

// withCompactBackend returns a copy of c with its Backend compacted, as
// encoding/json re-encodes it.
func withCompactBackend(t *testing.T, c *Config) *Config {
	t.Helper()
	cp := *c
	if len(cp.Backend) > 0 {
		compact, err := json.Marshal(cp.Backend) // encoding/json compacts a RawMessage
		if err != nil {
			t.Fatalf("compacting Backend %s: %v", cp.Backend, err)
		}
		cp.Backend = compact
	}
	return &cp
}

func TestApplyEtcdDefaults(t *testing.T) {
	tests := []struct {
		name         string
		in           string
		subnetLen    int
		min, max     string
		v6Len        int
		v6Min, v6Max string
	}{
		{"/16 gets /24", `{"Network": "10.244.0.0/16"}`, 24, "10.244.1.0", "10.244.255.0", 0, "", ""},
		{"/22 gets /24", `{"Network": "10.244.0.0/22"}`, 24, "10.244.1.0", "10.244.3.0", 0, "", ""},
		{"/23 gets /25", `{"Network": "10.244.0.0/23"}`, 25, "10.244.0.128", "10.244.1.128", 0, "", ""},
		{"/28 gets /30", `{"Network": "10.244.0.0/28"}`, 30, "10.244.0.4", "10.244.0.12", 0, "", ""},
		{"/8 gets /24", `{"Network": "10.0.0.0/8"}`, 24, "10.0.1.0", "10.255.255.0", 0, "", ""},
		{"explicit length", `{"Network": "10.244.0.0/16", "SubnetLen": 20}`, 20, "10.244.16.0", "10.244.240.0", 0, "", ""},
		{"explicit range", `{"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.20.0"}`,
			24, "10.244.10.0", "10.244.20.0", 0, "", ""},
		{"dual stack", `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}`,
			24, "10.244.1.0", "10.244.255.0", 64, "fd00:10:244:1::", "fd00:10:244:ff::"},
		{"IPv6 /64 network gets /66", `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/64"}`,
			0, "", "", 66, "fd00::4000:0:0:0", "fd00::c000:0:0:0"},
		{"IPv6 /124 gets /126", `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/124"}`,
			0, "", "", 126, "fd00::4", "fd00::c"},
	}
	addr := func(s string) netip.Addr {
		if s == "" {
			return netip.Addr{}
		}
		return netip.MustParseAddr(s)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.ApplyEtcdDefaults(); err != nil {
				t.Fatalf("ApplyEtcdDefaults: %v", err)
			}
			if c.SubnetLen != tt.subnetLen || c.SubnetMin != addr(tt.min) || c.SubnetMax != addr(tt.max) {
				t.Errorf("IPv4: got /%d %v-%v, want /%d %s-%s", c.SubnetLen, c.SubnetMin, c.SubnetMax, tt.subnetLen, tt.min, tt.max)
			}
			if c.IPv6SubnetLen != tt.v6Len || c.IPv6SubnetMin != addr(tt.v6Min) || c.IPv6SubnetMax != addr(tt.v6Max) {
				t.Errorf("IPv6: got /%d %v-%v, want /%d %s-%s", c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax, tt.v6Len, tt.v6Min, tt.v6Max)
			}
			// Applying again changes nothing.
			again := *c
			if err := again.ApplyEtcdDefaults(); err != nil || again.SubnetMin != c.SubnetMin || again.IPv6SubnetMax != c.IPv6SubnetMax {
				t.Errorf("second ApplyEtcdDefaults: %+v, %v", again, err)
			}
		})
	}
}

func TestApplyEtcdDefaultsErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"network too small", `{"Network": "10.244.0.0/29"}`,
			[]string{"Network 10.244.0.0/29 is too small: it must hold at least four subnets of at most /30, so be /28 or larger"}},
		{"subnet len too long", `{"Network": "10.244.0.0/16", "SubnetLen": 31}`,
			[]string{"SubnetLen 31 is too long: node subnets must be /30 or larger"}},
		{"subnet len too short", `{"Network": "10.244.0.0/16", "SubnetLen": 17}`,
			[]string{"SubnetLen 17 is too short for Network 10.244.0.0/16: it must be at least 18"}},
		{"min outside", `{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}`,
			[]string{"SubnetMin 10.245.0.0 is outside Network 10.244.0.0/16"}},
		{"max unaligned", `{"Network": "10.244.0.0/16", "SubnetMax": "10.244.20.5"}`,
			[]string{"SubnetMax 10.244.20.5 is not the start of a /24 subnet; did you mean 10.244.20.0?"}},
		{"min above max", `{"Network": "10.244.0.0/16", "SubnetMin": "10.244.30.0", "SubnetMax": "10.244.20.0"}`,
			[]string{"SubnetMin 10.244.30.0 is greater than SubnetMax 10.244.20.0"}},
		{"IPv6 len too long", `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/64", "IPv6SubnetLen": 127}`,
			[]string{"IPv6SubnetLen 127 is too long: node subnets must be /126 or larger"}},
		{"IPv6 min unaligned", `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetMin": "fd00:0:0:1::1"}`,
			[]string{"IPv6SubnetMin fd00:0:0:1::1 is not the start of a /64 subnet; did you mean fd00:0:0:1::?"}},
		{"both families reported", `{"Network": "10.244.0.0/16", "SubnetLen": 31, "EnableIPv6": true, "IPv6Network": "fd00::/125"}`,
			[]string{"SubnetLen 31", "IPv6Network fd00::/125 is too small"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			before := *c
			err = c.ApplyEtcdDefaults()
			if err == nil {
				t.Fatalf("ApplyEtcdDefaults succeeded: %+v", c)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			assertConfigEqual(t, c, &before) // unchanged on error
		})
	}

	if err := (&Config{EnableIPv4: true}).ApplyEtcdDefaults(); err == nil || !strings.Contains(err.Error(), "Network is missing") {
		t.Errorf("Config without Network: error = %v", err)
	}
}

func TestCheckSubnet(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}`))
	if err != nil {
		t.Fatal(err)
	}
	v4only, err := ParseConfig([]byte(`{"Network": "10.244.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		c      *Config
		subnet string
		want   string // "" for no error
	}{
		{c, "10.244.1.0/24", ""},
		{c, "10.244.0.0/16", ""},
		{c, "fd00:10:244:1::/64", ""},
		{c, "10.10.1.0/24", "10.10.1.0/24 is outside Network 10.244.0.0/16"},
		{c, "10.244.0.0/15", "10.244.0.0/15 is outside Network 10.244.0.0/16"},
		{c, "fd00:10:245:1::/64", "fd00:10:245:1::/64 is outside IPv6Network fd00:10:244::/56"},
		{v4only, "fd00:10:244:1::/64", "fd00:10:244:1::/64 is an IPv6 subnet but IPv6 is disabled (EnableIPv6 is false)"},
		{c, "", "not a valid CIDR"},
	}
	for _, tt := range tests {
		var sn netip.Prefix
		if tt.subnet != "" {
			sn = netip.MustParsePrefix(tt.subnet)
		}
		err := tt.c.CheckSubnet(sn)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("CheckSubnet(%s): %v", tt.subnet, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("CheckSubnet(%s) = %v, want %q", tt.subnet, err, tt.want)
		}
	}
}

// Upstream uses the network of a CIDR with host bits; so must a drop-in.
func TestParseConfigMasksHostBits(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network": "10.244.1.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Network.String() != "10.244.0.0/16" {
		t.Fatalf("Network %s, want 10.244.0.0/16", c.Network)
	}
}
