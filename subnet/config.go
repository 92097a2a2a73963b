package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
)

// DefaultBackendType is the backend used when net-conf.json names none.
// Upstream flannel defaults to "udp" although its documentation says vxlan;
// we follow the documentation.
const DefaultBackendType = "vxlan"

// Limits and defaults of the subnet lengths handed to nodes in etcd mode.
const (
	// MaxSubnetLen is the longest IPv4 node subnet: a node needs room for
	// at least a bridge address and one pod.
	MaxSubnetLen = 30
	// MaxIPv6SubnetLen is the longest IPv6 node subnet.
	MaxIPv6SubnetLen = 126
	// DefaultSubnetLen is the IPv4 node subnet length for networks of /22
	// or larger.
	DefaultSubnetLen = 24
	// DefaultIPv6SubnetLen is the IPv6 node subnet length for networks of
	// /62 or larger.
	DefaultIPv6SubnetLen = 64
)

// Config is the cluster network configuration: net-conf.json in Kubernetes
// mode, the value at <prefix>/config in etcd mode.
type Config struct {
	EnableIPv4     bool // default true
	EnableIPv6     bool // default false
	EnableNFTables bool // firewall rules through nftables instead of iptables

	Network     netip.Prefix // the IPv4 cluster network, a network address
	IPv6Network netip.Prefix // the IPv6 cluster network, a network address

	// SubnetLen, SubnetMin and SubnetMax bound the IPv4 node subnets that
	// etcd mode hands out; zero values mean "default" until
	// ApplyEtcdDefaults fills them. Kubernetes mode ignores them.
	SubnetLen int
	SubnetMin netip.Addr
	SubnetMax netip.Addr

	// IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax are the IPv6
	// counterparts of SubnetLen, SubnetMin and SubnetMax.
	IPv6SubnetLen int
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr

	// BackendType is the backend's Type, lower-cased; DefaultBackendType
	// when none is given.
	BackendType string
	// Backend is the whole Backend object as given, for the backend to read
	// its options from; {"Type":"vxlan"} when none is given.
	Backend json.RawMessage
}

// rawConfig receives net-conf.json; encoding/json matches the keys
// case-insensitively. Each value is decoded separately so that an error can
// name its key.
type rawConfig struct {
	Network        json.RawMessage
	IPv6Network    json.RawMessage
	EnableIPv4     json.RawMessage
	EnableIPv6     json.RawMessage
	EnableNFTables json.RawMessage
	SubnetLen      json.RawMessage
	SubnetMin      json.RawMessage
	SubnetMax      json.RawMessage
	IPv6SubnetLen  json.RawMessage
	IPv6SubnetMin  json.RawMessage
	IPv6SubnetMax  json.RawMessage
	Backend        json.RawMessage
}

// ParseConfig parses and checks a network configuration as Kubernetes mode
// needs it: valid JSON, Network an IPv4 network address (required when IPv4
// is enabled), IPv6Network an IPv6 network address (required when IPv6 is
// enabled), at least one family enabled, Backend an object whose Type (if
// any) is a string. Every problem found is reported, each naming its key.
// The backend's own options and its type name are left to the backends.
func ParseConfig(data []byte) (*Config, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // tolerate a UTF-8 BOM
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("invalid network configuration: it is empty")
	}
	if trimmed[0] != '{' {
		if !json.Valid(trimmed) {
			return nil, fmt.Errorf("invalid network configuration: %w", describeJSONError(data, json.Unmarshal(data, new(any))))
		}
		return nil, errors.New("invalid network configuration: it must be a JSON object")
	}
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("invalid network configuration: %w", describeJSONError(data, err))
	}

	c := &Config{}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	c.EnableIPv4, err = decodeBool("EnableIPv4", raw.EnableIPv4, true)
	check(err)
	c.EnableIPv6, err = decodeBool("EnableIPv6", raw.EnableIPv6, false)
	check(err)
	c.EnableNFTables, err = decodeBool("EnableNFTables", raw.EnableNFTables, false)
	check(err)
	c.Network, err = decodeNetwork("Network", raw.Network, true, c.EnableIPv4)
	check(err)
	c.IPv6Network, err = decodeNetwork("IPv6Network", raw.IPv6Network, false, c.EnableIPv6)
	check(err)
	c.SubnetLen, err = decodeLen("SubnetLen", raw.SubnetLen, 32)
	check(err)
	c.SubnetMin, err = decodeAddr("SubnetMin", raw.SubnetMin, true)
	check(err)
	c.SubnetMax, err = decodeAddr("SubnetMax", raw.SubnetMax, true)
	check(err)
	c.IPv6SubnetLen, err = decodeLen("IPv6SubnetLen", raw.IPv6SubnetLen, 128)
	check(err)
	c.IPv6SubnetMin, err = decodeAddr("IPv6SubnetMin", raw.IPv6SubnetMin, false)
	check(err)
	c.IPv6SubnetMax, err = decodeAddr("IPv6SubnetMax", raw.IPv6SubnetMax, false)
	check(err)
	c.BackendType, c.Backend, err = decodeBackend(raw.Backend)
	check(err)
	if !c.EnableIPv4 && !c.EnableIPv6 {
		errs = append(errs, errors.New("EnableIPv4 and EnableIPv6 are both false: enable at least one"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid network configuration: %w", errors.Join(errs...))
	}
	return c, nil
}

// ReadConfigFile reads and parses the network configuration file at path.
func ReadConfigFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading network configuration: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// MarshalJSON encodes c in the net-conf.json format that ParseConfig reads,
// leaving out the keys whose values are unset.
func (c Config) MarshalJSON() ([]byte, error) {
	type out struct {
		Network        string `json:",omitempty"`
		IPv6Network    string `json:",omitempty"`
		EnableIPv4     bool
		EnableIPv6     bool
		EnableNFTables bool
		SubnetLen      int             `json:",omitempty"`
		SubnetMin      string          `json:",omitempty"`
		SubnetMax      string          `json:",omitempty"`
		IPv6SubnetLen  int             `json:",omitempty"`
		IPv6SubnetMin  string          `json:",omitempty"`
		IPv6SubnetMax  string          `json:",omitempty"`
		Backend        json.RawMessage `json:",omitempty"`
	}
	o := out{
		Network: ip.Text(c.Network), IPv6Network: ip.Text(c.IPv6Network),
		EnableIPv4: c.EnableIPv4, EnableIPv6: c.EnableIPv6, EnableNFTables: c.EnableNFTables,
		SubnetLen: c.SubnetLen, SubnetMin: ip.Text(c.SubnetMin), SubnetMax: ip.Text(c.SubnetMax),
		IPv6SubnetLen: c.IPv6SubnetLen, IPv6SubnetMin: ip.Text(c.IPv6SubnetMin), IPv6SubnetMax: ip.Text(c.IPv6SubnetMax),
		Backend: c.Backend,
	}
	if len(o.Backend) == 0 && c.BackendType != "" {
		b, err := json.Marshal(struct{ Type string }{c.BackendType})
		if err != nil {
			return nil, err
		}
		o.Backend = b
	}
	return json.Marshal(o)
}

// ApplyEtcdDefaults checks the subnet range settings that etcd mode needs
// and fills in the defaults, for each enabled family. SubnetLen defaults to
// 24 when Network is /22 or larger, else to Network's length + 2; it must be
// at most 30 and at least Network's length + 2 (the first subnet is never
// handed out, so this leaves at least three). SubnetMin defaults to the
// second subnet and SubnetMax to the last one; both must lie inside Network,
// be aligned to SubnetLen, and SubnetMin must not exceed SubnetMax. IPv6 is
// alike, with a default length of 64 (for /62 or larger) and a maximum of
// 126. On error c is left unchanged.
func (c *Config) ApplyEtcdDefaults() error {
	v4 := subnetRange{family: "IPv4", networkKey: "Network", keyPrefix: "",
		network: c.Network, subnetLen: c.SubnetLen, min: c.SubnetMin, max: c.SubnetMax}
	v6 := subnetRange{family: "IPv6", networkKey: "IPv6Network", keyPrefix: "IPv6",
		network: c.IPv6Network, subnetLen: c.IPv6SubnetLen, min: c.IPv6SubnetMin, max: c.IPv6SubnetMax}
	var errs []error
	if c.EnableIPv4 {
		errs = append(errs, v4.applyDefaults(DefaultSubnetLen, MaxSubnetLen))
	}
	if c.EnableIPv6 {
		errs = append(errs, v6.applyDefaults(DefaultIPv6SubnetLen, MaxIPv6SubnetLen))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid network configuration for etcd mode: %w", err)
	}
	if c.EnableIPv4 {
		c.SubnetLen, c.SubnetMin, c.SubnetMax = v4.subnetLen, v4.min, v4.max
	}
	if c.EnableIPv6 {
		c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax = v6.subnetLen, v6.min, v6.max
	}
	return nil
}

// subnetRange is one family's range settings while they are checked.
type subnetRange struct {
	family     string // "IPv4" or "IPv6"
	networkKey string // "Network" or "IPv6Network"
	keyPrefix  string // "" or "IPv6", prepended to SubnetLen etc.
	network    netip.Prefix
	subnetLen  int
	min, max   netip.Addr
}

// applyDefaults checks the range settings and fills the unset ones.
func (r *subnetRange) applyDefaults(defaultLen, maxLen int) error {
	lenKey, minKey, maxKey := r.keyPrefix+"SubnetLen", r.keyPrefix+"SubnetMin", r.keyPrefix+"SubnetMax"
	if !r.network.IsValid() || (r.family == "IPv4") != r.network.Addr().Is4() {
		return fmt.Errorf("%s is missing: give the %s cluster network", r.networkKey, r.family)
	}
	bits := r.network.Bits()
	switch {
	case bits+2 > maxLen:
		return fmt.Errorf("%s %s is too small: it must hold at least four subnets of at most /%d, so be /%d or larger",
			r.networkKey, r.network, maxLen, maxLen-2)
	case r.subnetLen == 0:
		r.subnetLen = max(defaultLen, bits+2)
	case r.subnetLen > maxLen:
		return fmt.Errorf("%s %d is too long: node subnets must be /%d or larger", lenKey, r.subnetLen, maxLen)
	case r.subnetLen < bits+2:
		return fmt.Errorf("%s %d is too short for %s %s: it must be at least %d so that the network holds at least four subnets",
			lenKey, r.subnetLen, r.networkKey, r.network, bits+2)
	}
	if !r.min.IsValid() {
		first := netip.PrefixFrom(r.network.Addr(), r.subnetLen)
		second, _ := ip.NextPrefix(first) // cannot overflow: subnetLen > bits
		r.min = second.Addr()
	}
	if !r.max.IsValid() {
		r.max = netip.PrefixFrom(ip.LastAddr(r.network), r.subnetLen).Masked().Addr()
	}
	var errs []error
	for _, b := range []struct {
		key  string
		addr netip.Addr
	}{{minKey, r.min}, {maxKey, r.max}} {
		switch {
		case !r.network.Contains(b.addr):
			errs = append(errs, fmt.Errorf("%s %s is outside %s %s", b.key, b.addr, r.networkKey, r.network))
		case !ip.IsAligned(b.addr, r.subnetLen):
			want := netip.PrefixFrom(b.addr, r.subnetLen).Masked().Addr()
			errs = append(errs, fmt.Errorf("%s %s is not the start of a /%d subnet; did you mean %s?", b.key, b.addr, r.subnetLen, want))
		}
	}
	if len(errs) == 0 && r.max.Less(r.min) {
		errs = append(errs, fmt.Errorf("%s %s is greater than %s %s", minKey, r.min, maxKey, r.max))
	}
	return errors.Join(errs...)
}

// CheckSubnet reports an error unless sn (a node's pod subnet, e.g. its
// podCIDR) lies inside Network or IPv6Network, whichever is of its family,
// and that family is enabled. The message reads well after "podCIDR of node
// n1: ".
func (c *Config) CheckSubnet(sn netip.Prefix) error {
	if !sn.IsValid() {
		return errors.New("the subnet is not a valid CIDR")
	}
	network, key, enabled, family := c.Network, "Network", c.EnableIPv4, "IPv4"
	if !sn.Addr().Is4() {
		network, key, enabled, family = c.IPv6Network, "IPv6Network", c.EnableIPv6, "IPv6"
	}
	if !enabled {
		return fmt.Errorf("%s is an %s subnet but %s is disabled (Enable%s is false)", sn, family, family, family)
	}
	if !ip.ContainsPrefix(network, sn) {
		return fmt.Errorf("%s is outside %s %s", sn, key, network)
	}
	return nil
}

// isAbsent reports whether a raw JSON value was left out or null.
func isAbsent(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// quoteRaw shortens a raw JSON value for an error message.
func quoteRaw(raw json.RawMessage) string {
	const maxLen = 40
	s := string(raw)
	if len(s) > maxLen {
		s = s[:maxLen] + "..."
	}
	return s
}

func decodeBool(key string, raw json.RawMessage, def bool) (bool, error) {
	if isAbsent(raw) {
		return def, nil
	}
	var v bool
	if err := json.Unmarshal(raw, &v); err != nil {
		return def, fmt.Errorf("%s must be true or false, not %s", key, quoteRaw(raw))
	}
	return v, nil
}

func decodeString(key string, raw json.RawMessage, example string) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%s must be a string like %q, not %s", key, example, quoteRaw(raw))
	}
	return s, nil
}

// decodeNetwork decodes a CIDR of the family, masked to its network address.
func decodeNetwork(key string, raw json.RawMessage, wantV4, required bool) (netip.Prefix, error) {
	example, family := "fd00:10:244::/56", "IPv6"
	if wantV4 {
		example, family = "10.244.0.0/16", "IPv4"
	}
	if isAbsent(raw) {
		if required {
			return netip.Prefix{}, fmt.Errorf("%s is missing: give the %s cluster network, e.g. %q", key, family, example)
		}
		return netip.Prefix{}, nil
	}
	s, err := decodeString(key, raw, example)
	if err != nil {
		return netip.Prefix{}, err
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s %q is not a CIDR like %q: %w", key, s, example, err)
	}
	if p.Addr().Is4() != wantV4 {
		return netip.Prefix{}, fmt.Errorf("%s %s is not an %s network", key, p, family)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%s %q must not have a zone", key, s)
	}
	maxBits := MaxIPv6SubnetLen
	if wantV4 {
		maxBits = MaxSubnetLen
	}
	switch {
	case p.Bits() == 0:
		return netip.Prefix{}, fmt.Errorf("%s %s covers every %s address: pod routes and the forward and masquerade rules would capture all traffic; give the cluster's pod network, e.g. %q",
			key, p, family, example)
	case p.Bits() > maxBits:
		return netip.Prefix{}, fmt.Errorf("%s %s is too small to hold a node subnet: it must be /%d or larger", key, p, maxBits)
	}
	if m := p.Masked(); m != p {
		// Upstream accepts host bits and uses the network; so do we.
		klog.InfoS("Network has host bits set; using its network address", "key", key, "given", p, "using", m)
		p = m
	}
	return p, nil
}

// decodeLen decodes a prefix length between 0 (unset) and maxLen.
func decodeLen(key string, raw json.RawMessage, maxLen int) (int, error) {
	if isAbsent(raw) {
		return 0, nil
	}
	var n int
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, fmt.Errorf("%s must be a whole number, not %s", key, quoteRaw(raw))
	}
	if n < 0 || n > maxLen {
		return 0, fmt.Errorf("%s %d is not a prefix length between 1 and %d", key, n, maxLen)
	}
	return n, nil
}

// decodeAddr decodes an address of the family.
func decodeAddr(key string, raw json.RawMessage, wantV4 bool) (netip.Addr, error) {
	example := "fd00:10:244:100::"
	if wantV4 {
		example = "10.244.100.0"
	}
	if isAbsent(raw) {
		return netip.Addr{}, nil
	}
	s, err := decodeString(key, raw, example)
	if err != nil {
		return netip.Addr{}, err
	}
	if _, err := netip.ParseAddr(strings.TrimSpace(s)); err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IP address like %q: %w", key, s, example, err)
	}
	a, err := ip.ParseAddrOf(strings.TrimSpace(s), wantV4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %s is %w", key, strings.TrimSpace(s), err)
	}
	return a, nil
}

// decodeBackend returns the lower-cased backend type and the Backend object.
func decodeBackend(raw json.RawMessage) (string, json.RawMessage, error) {
	if isAbsent(raw) {
		return DefaultBackendType, json.RawMessage(`{"Type":"` + DefaultBackendType + `"}`), nil
	}
	var b struct{ Type json.RawMessage }
	if raw[0] != '{' || json.Unmarshal(raw, &b) != nil {
		return "", nil, fmt.Errorf(`Backend must be an object like {"Type": "vxlan"}, not %s`, quoteRaw(raw))
	}
	typ := DefaultBackendType
	if !isAbsent(b.Type) {
		s, err := decodeString("Backend.Type", b.Type, "vxlan")
		if err != nil {
			return "", nil, err
		}
		if s = strings.ToLower(strings.TrimSpace(s)); s != "" {
			typ = s
		}
	}
	return typ, bytes.Clone(raw), nil
}

// describeJSONError adds the line and column to a JSON syntax error.
func describeJSONError(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		line, col := lineAndColumn(data, syn.Offset)
		return fmt.Errorf("invalid JSON at line %d, column %d: %w", line, col, err)
	case errors.As(err, &typ):
		line, col := lineAndColumn(data, typ.Offset)
		return fmt.Errorf("unexpected JSON %s at line %d, column %d: %w", typ.Value, line, col, err)
	case err != nil:
		return fmt.Errorf("invalid JSON: %w", err)
	}
	return nil
}

// lineAndColumn converts a byte offset into 1-based line and column numbers.
func lineAndColumn(data []byte, offset int64) (line, col int) {
	offset = min(max(offset, 0), int64(len(data)))
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - (bytes.LastIndexByte(before, '\n') + 1)
	return line, max(col, 1)
}
