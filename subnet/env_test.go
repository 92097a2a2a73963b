package subnet

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// referenceEnv is the example of REFERENCE.md section 5.
var referenceEnv = Env{
	Network: netip.MustParsePrefix("10.244.0.0/16"),
	Subnet:  netip.MustParsePrefix("10.244.1.1/24"),
	MTU:     1450,
	IPMasq:  true,
}

const referenceEnvText = `FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
`

var dualStackEnv = Env{
	Network:     netip.MustParsePrefix("10.244.0.0/16"),
	Subnet:      netip.MustParsePrefix("10.244.1.1/24"),
	IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"),
	IPv6Subnet:  netip.MustParsePrefix("fd00:10:244:1::1/64"),
	MTU:         1430,
	IPMasq:      false,
}

const dualStackEnvText = `FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_IPV6_NETWORK=fd00:10:244::/56
FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64
FLANNEL_MTU=1430
FLANNEL_IPMASQ=false
`

var ipv6OnlyEnv = Env{
	IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"),
	IPv6Subnet:  netip.MustParsePrefix("fd00:10:244:1::1/64"),
	MTU:         1430,
}

const ipv6OnlyEnvText = `FLANNEL_IPV6_NETWORK=fd00:10:244::/56
FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64
FLANNEL_MTU=1430
FLANNEL_IPMASQ=false
`

func TestWriteEnvFileGolden(t *testing.T) {
	tests := []struct {
		name string
		env  Env
		want string
	}{
		{"reference example", referenceEnv, referenceEnvText},
		{"dual stack", dualStackEnv, dualStackEnvText},
		{"IPv6 only", ipv6OnlyEnv, ipv6OnlyEnvText},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The directory does not exist yet: WriteEnvFile creates it.
			path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
			if err := WriteEnvFile(path, tt.env); err != nil {
				t.Fatalf("WriteEnvFile: %v", err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("file text:\n%s\nwant:\n%s", got, tt.want)
			}
			back, err := ReadEnvFile(path)
			if err != nil {
				t.Fatalf("ReadEnvFile: %v", err)
			}
			if back != tt.env {
				t.Errorf("round trip: got %+v, want %+v", back, tt.env)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o644 {
				t.Errorf("file mode %v, want 0644", st.Mode().Perm())
			}
			dirSt, err := os.Stat(filepath.Dir(path))
			if err != nil {
				t.Fatal(err)
			}
			if !dirSt.IsDir() || dirSt.Mode().Perm()&^0o755 != 0 {
				t.Errorf("directory mode %v, want a directory with at most 0755", dirSt.Mode())
			}
			assertNoTempFiles(t, filepath.Dir(path))
		})
	}
}

func TestNewEnv(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}`))
	if err != nil {
		t.Fatal(err)
	}
	lease := &Lease{
		Subnet:     netip.MustParsePrefix("10.244.1.0/24"),
		IPv6Subnet: netip.MustParsePrefix("fd00:10:244:1::/64"),
	}
	if got := NewEnv(c, lease, 1430, false); got != dualStackEnv {
		t.Errorf("NewEnv = %+v, want %+v", got, dualStackEnv)
	}
	c.EnableIPv6 = false
	want := dualStackEnv
	want.IPv6Network, want.IPv6Subnet = netip.Prefix{}, netip.Prefix{}
	if got := NewEnv(c, lease, 1430, false); got != want {
		t.Errorf("NewEnv with IPv6 disabled = %+v, want %+v", got, want)
	}
}

func TestWriteEnvFileReplaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := WriteEnvFile(path, dualStackEnv); err != nil {
		t.Fatal(err)
	}
	if err := WriteEnvFile(path, referenceEnv); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != referenceEnvText {
		t.Errorf("file text after replacing:\n%s", got)
	}
	assertNoTempFiles(t, filepath.Dir(path))
}

func TestWriteEnvFileFailureKeepsOldFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := WriteEnvFile(path, referenceEnv); err != nil {
		t.Fatal(err)
	}

	t.Run("sync fails", func(t *testing.T) {
		errDisk := errors.New("simulated disk failure")
		err := writeEnvFile(path, dualStackEnv, func(*os.File) error { return errDisk })
		if !errors.Is(err, errDisk) || !strings.Contains(err.Error(), path) {
			t.Errorf("WriteEnvFile error = %v, want the disk error naming %s", err, path)
		}
	})
	t.Run("invalid content", func(t *testing.T) {
		bad := referenceEnv
		bad.MTU = 0
		if err := WriteEnvFile(path, bad); err == nil || !strings.Contains(err.Error(), "FLANNEL_MTU 0 is not between 1 and 65535") {
			t.Errorf("WriteEnvFile error = %v", err)
		}
	})

	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != referenceEnvText {
		t.Errorf("old file changed:\n%s", got)
	}
	assertNoTempFiles(t, filepath.Dir(path))
}

func TestWriteEnvFileUnwritableDirectory(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "run")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(blocker, "flannel", "subnet.env") // "run" is a file
	if err := WriteEnvFile(path, referenceEnv); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("WriteEnvFile under a file: error = %v", err)
	}
}

// assertNoTempFiles fails if dir holds anything but subnet.env.
func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "subnet.env" {
			t.Errorf("left behind in %s: %s", dir, e.Name())
		}
	}
}

func TestEnvValidate(t *testing.T) {
	v4 := netip.MustParsePrefix("10.244.0.0/16")
	sn := netip.MustParsePrefix("10.244.1.1/24")
	v6 := netip.MustParsePrefix("fd00::/56")
	sn6 := netip.MustParsePrefix("fd00:0:0:1::1/64")
	tests := []struct {
		name string
		env  Env
		want string
	}{
		{"nothing", Env{MTU: 1450}, "neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set"},
		{"subnet without network", Env{Subnet: sn, MTU: 1450}, "FLANNEL_SUBNET is set but FLANNEL_NETWORK is not"},
		{"network without subnet", Env{Network: v4, MTU: 1450}, "FLANNEL_NETWORK is set but FLANNEL_SUBNET is not"},
		{"v6 in v4 keys", Env{Network: v6, Subnet: sn6, MTU: 1450}, "FLANNEL_NETWORK fd00::/56 is not an IPv4 network"},
		{"v4 subnet in v6 key", Env{IPv6Network: v6, IPv6Subnet: sn, MTU: 1450}, "FLANNEL_IPV6_SUBNET 10.244.1.1/24 is not an IPv6 subnet"},
		{"outside", Env{Network: v4, Subnet: netip.MustParsePrefix("10.10.1.1/24"), MTU: 1450},
			"FLANNEL_SUBNET 10.10.1.1/24 is outside FLANNEL_NETWORK 10.244.0.0/16"},
		{"mtu too big", Env{Network: v4, Subnet: sn, MTU: 65536}, "FLANNEL_MTU 65536 is not between 1 and 65535"},
	}
	for _, tt := range tests {
		if err := tt.env.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate() = %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestParseEnv(t *testing.T) {
	in := `
# written by hand
FLANNEL_NETWORK=10.244.0.0/16
  FLANNEL_SUBNET = "10.244.1.1/24"
SOMETHING_ELSE=whatever=really
FLANNEL_MTU=1500
FLANNEL_MTU=1450
FLANNEL_IPMASQ='true'` + "\r\n"
	got, err := ParseEnv(strings.NewReader(in))
	if err != nil {
		t.Fatalf("ParseEnv: %v", err)
	}
	if got != referenceEnv {
		t.Errorf("ParseEnv = %+v, want %+v", got, referenceEnv)
	}
}

func TestParseEnvErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"no equals sign", "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET\n", `line 2: expected KEY=VALUE, got "FLANNEL_SUBNET"`},
		{"bad CIDR", "FLANNEL_NETWORK=10.244.0.0\n", `line 1: FLANNEL_NETWORK "10.244.0.0" is not a CIDR`},
		{"bad MTU", "\n\nFLANNEL_MTU=big\n", `line 3: FLANNEL_MTU "big" is not a number`},
		{"bad ipmasq", "FLANNEL_IPMASQ=yes\n", `line 1: FLANNEL_IPMASQ "yes" is not true or false`},
		{"missing MTU", "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPMASQ=true\n", "FLANNEL_MTU is missing"},
		{"missing ipmasq", "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n", "FLANNEL_IPMASQ is missing"},
		{"missing subnet", "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", "FLANNEL_NETWORK is set but FLANNEL_SUBNET is not"},
		{"empty", "", "neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set"},
		{"line too long", "X=" + strings.Repeat("a", 70000) + "\n", "token too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := ParseEnv(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseEnv = %+v, %v; want an error containing %q", e, err, tt.want)
			}
		})
	}
}

func TestReadEnvFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "subnet.env")
	_, err := ReadEnvFile(missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: error = %v, want fs.ErrNotExist naming %s", err, missing)
	}

	bad := filepath.Join(dir, "bad.env")
	if err := os.WriteFile(bad, []byte("FLANNEL_MTU=x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ReadEnvFile(bad)
	if err == nil || !strings.Contains(err.Error(), bad+": line 1: FLANNEL_MTU") {
		t.Errorf("bad file: error = %v, want it to name the path and line", err)
	}
}
