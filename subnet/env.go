package subnet

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/flanneld/flanneld/ip"
)

// The keys of subnet.env.
const (
	envNetwork     = "FLANNEL_NETWORK"
	envSubnet      = "FLANNEL_SUBNET"
	envIPv6Network = "FLANNEL_IPV6_NETWORK"
	envIPv6Subnet  = "FLANNEL_IPV6_SUBNET"
	envMTU         = "FLANNEL_MTU"
	envIPMasq      = "FLANNEL_IPMASQ"
)

// maxMTU is the largest MTU an interface can have.
const maxMTU = 65535

// Env is the content of subnet.env, the file through which flanneld tells
// the CNI plugin (and anyone else on the node) about the node's pod network.
type Env struct {
	// Network is the IPv4 cluster network (FLANNEL_NETWORK).
	Network netip.Prefix
	// Subnet is FLANNEL_SUBNET: the first address of the node's IPv4 subnet
	// with the subnet's prefix length, e.g. 10.244.1.1/24.
	Subnet netip.Prefix
	// IPv6Network and IPv6Subnet are the IPv6 counterparts; they are written
	// only when valid.
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix
	// MTU is the MTU pods should use (FLANNEL_MTU).
	MTU int
	// IPMasq tells whether flanneld masquerades traffic leaving the cluster
	// network (FLANNEL_IPMASQ), so the CNI plugin need not.
	IPMasq bool
}

// NewEnv returns the Env for a node that holds lease under configuration c:
// the networks and subnets of the enabled families, the subnets turned into
// their first address.
func NewEnv(c *Config, lease *Lease, mtu int, ipMasq bool) Env {
	e := Env{MTU: mtu, IPMasq: ipMasq}
	if c.EnableIPv4 && lease.Subnet.IsValid() {
		e.Network, e.Subnet = c.Network, ip.FirstAddr(lease.Subnet)
	}
	if c.EnableIPv6 && lease.IPv6Subnet.IsValid() {
		e.IPv6Network, e.IPv6Subnet = c.IPv6Network, ip.FirstAddr(lease.IPv6Subnet)
	}
	return e
}

// Validate checks that e can be written and read back: each family has both
// its network and its subnet or neither, at least one family is present,
// each subnet lies inside its network, and the MTU is between 1 and 65535.
func (e Env) Validate() error {
	var errs []error
	check := func(family, netKey, subKey string, network, subnet netip.Prefix, wantV4 bool) bool {
		switch {
		case !network.IsValid() && !subnet.IsValid():
			return false
		case !network.IsValid():
			errs = append(errs, fmt.Errorf("%s is set but %s is not", subKey, netKey))
		case !subnet.IsValid():
			errs = append(errs, fmt.Errorf("%s is set but %s is not", netKey, subKey))
		case network.Addr().Is4() != wantV4 || network.Addr().Zone() != "":
			errs = append(errs, fmt.Errorf("%s %s is not an %s network", netKey, network, family))
		case subnet.Addr().Is4() != wantV4 || subnet.Addr().Zone() != "":
			errs = append(errs, fmt.Errorf("%s %s is not an %s subnet", subKey, subnet, family))
		case !ip.ContainsPrefix(network, subnet):
			errs = append(errs, fmt.Errorf("%s %s is outside %s %s", subKey, subnet, netKey, network))
		}
		return true
	}
	has4 := check("IPv4", envNetwork, envSubnet, e.Network, e.Subnet, true)
	has6 := check("IPv6", envIPv6Network, envIPv6Subnet, e.IPv6Network, e.IPv6Subnet, false)
	if !has4 && !has6 {
		errs = append(errs, fmt.Errorf("neither %s nor %s is set", envSubnet, envIPv6Subnet))
	}
	if e.MTU <= 0 || e.MTU > maxMTU {
		errs = append(errs, fmt.Errorf("%s %d is not between 1 and %d", envMTU, e.MTU, maxMTU))
	}
	return errors.Join(errs...)
}

// FormatEnv returns the text of subnet.env for e, lines in upstream's
// order: FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_NETWORK,
// FLANNEL_IPV6_SUBNET (each only when set), FLANNEL_MTU, FLANNEL_IPMASQ.
func FormatEnv(e Env) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("invalid subnet.env content: %w", err)
	}
	var b bytes.Buffer
	if e.Subnet.IsValid() {
		fmt.Fprintf(&b, "%s=%s\n%s=%s\n", envNetwork, e.Network, envSubnet, e.Subnet)
	}
	if e.IPv6Subnet.IsValid() {
		fmt.Fprintf(&b, "%s=%s\n%s=%s\n", envIPv6Network, e.IPv6Network, envIPv6Subnet, e.IPv6Subnet)
	}
	fmt.Fprintf(&b, "%s=%d\n%s=%t\n", envMTU, e.MTU, envIPMasq, e.IPMasq)
	return b.Bytes(), nil
}

// WriteEnvFile writes e to path atomically: it creates the directory (mode
// 0755) if needed, writes a temporary file next to path, syncs it and renames
// it over path, so a reader sees the old or the new file, never a part.
func WriteEnvFile(path string, e Env) error { return writeEnvFile(path, e, (*os.File).Sync) }

// writeEnvFile is WriteEnvFile with the sync of a test's disk.
func writeEnvFile(path string, e Env, sync func(*os.File) error) error {
	data, err := FormatEnv(e)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := WriteFileAtomic(path, data, 0o644, sync); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// WriteFileAtomic replaces path with data so that a crash leaves the old
// file or the new one, never a part: it writes a temporary file in the same
// directory (created exclusively, so nothing planted there is followed),
// gives it perm, syncs it, renames it over path (which replaces a symlink
// at path instead of writing through it) and syncs the directory. sync is
// (*os.File).Sync, or a test's stand-in for a failing disk. On failure path
// is left as it was.
func WriteFileAtomic(path string, data []byte, perm os.FileMode, sync func(*os.File) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := sync(f); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return sync(d)
}

// ReadEnvFile reads and parses the subnet.env at path. When the file does
// not exist the error wraps fs.ErrNotExist.
func ReadEnvFile(path string) (Env, error) {
	f, err := os.Open(path)
	if err != nil {
		return Env{}, fmt.Errorf("reading subnet.env: %w", err)
	}
	defer f.Close()
	e, err := ParseEnv(f)
	if err != nil {
		return Env{}, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

// ParseEnv parses subnet.env text: KEY=VALUE lines; blank lines, # comments
// and unknown keys are ignored, and a value may be enclosed in double or
// single quotes. A later line overrides an earlier one with the same key.
// The result must pass Env.Validate, and FLANNEL_MTU and FLANNEL_IPMASQ must
// be present.
func ParseEnv(r io.Reader) (Env, error) {
	var e Env
	var haveMTU, haveIPMasq bool
	err := ScanEnv(r, func(key, value string) (err error) {
		switch key {
		case envNetwork:
			e.Network, err = parseEnvPrefix(key, value)
		case envSubnet:
			e.Subnet, err = parseEnvPrefix(key, value)
		case envIPv6Network:
			e.IPv6Network, err = parseEnvPrefix(key, value)
		case envIPv6Subnet:
			e.IPv6Subnet, err = parseEnvPrefix(key, value)
		case envMTU:
			e.MTU, err = strconv.Atoi(value)
			if err != nil {
				err = fmt.Errorf("%s %q is not a number", key, truncate(value))
			}
			haveMTU = true
		case envIPMasq:
			e.IPMasq, err = strconv.ParseBool(value)
			if err != nil {
				err = fmt.Errorf("%s %q is not true or false", key, truncate(value))
			}
			haveIPMasq = true
		}
		return err
	})
	if err != nil {
		return Env{}, err
	}
	var errs []error
	if !haveMTU {
		errs = append(errs, fmt.Errorf("%s is missing", envMTU))
	}
	if !haveIPMasq {
		errs = append(errs, fmt.Errorf("%s is missing", envIPMasq))
	}
	if err := errors.Join(append(errs, e.Validate())...); err != nil {
		return Env{}, fmt.Errorf("invalid subnet.env: %w", err)
	}
	return e, nil
}

// ScanEnv reads subnet.env text and calls set for each KEY=VALUE line, the
// key and value trimmed and the value's quotes (double or single) removed;
// blank lines and # comments are skipped. A non-blank line without "=" is
// an error, and so is an error of set; both name the line.
func ScanEnv(r io.Reader, set func(key, value string) error) error {
	sc := bufio.NewScanner(r)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("line %d: expected KEY=VALUE, got %q", lineNo, truncate(line))
		}
		if err := set(strings.TrimSpace(key), unquote(strings.TrimSpace(value))); err != nil {
			return fmt.Errorf("line %d: %w", lineNo, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading subnet.env: %w", err)
	}
	return nil
}

// parseEnvPrefix parses a CIDR value of subnet.env; an empty value means
// unset.
func parseEnvPrefix(key, value string) (netip.Prefix, error) {
	if value == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(value)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s %q is not a CIDR: %w", key, truncate(value), err)
	}
	return p, nil
}

// unquote strips one pair of matching surrounding quotes.
func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// truncate shortens s for an error message.
func truncate(s string) string {
	const maxLen = 60
	if len(s) > maxLen {
		return s[:maxLen] + "..."
	}
	return s
}
