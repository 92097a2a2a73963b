// Package etcd is the etcd lease source for bare hosts, compatible with
// upstream flannel's keys (REFERENCE.md section 7): the network config at
// <prefix>/config and one key per lease at <prefix>/subnets/<subnet>, bound
// to an etcd lease of 24 h that the holder renews.
package etcd

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// value is a lease key's JSON value, as upstream writes it.
type value struct {
	PublicIP      *string         `json:"PublicIP"`
	PublicIPv6    *string         `json:"PublicIPv6"`
	BackendType   string          `json:"BackendType,omitempty"`
	BackendData   json.RawMessage `json:"BackendData,omitempty"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
}

// keyName is the last element of a lease key: "10.244.1.0-24", or
// "10.244.1.0-24&fd00:0:0:1::-64" for dual stack.
func keyName(v4, v6 netip.Prefix) string {
	var parts []string
	if v4.IsValid() {
		parts = append(parts, prefixToKey(v4))
	}
	if v6.IsValid() {
		parts = append(parts, prefixToKey(v6))
	}
	return strings.Join(parts, "&")
}

func prefixToKey(p netip.Prefix) string {
	return fmt.Sprintf("%s-%d", p.Masked().Addr(), p.Bits())
}

func keyToPrefix(s string) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("lease key %s is not <address>-<length>", subnet.Quote(s))
	}
	p, err := netip.ParsePrefix(s[:i] + "/" + s[i+1:])
	if err != nil || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("lease key %s is not <address>-<length>", subnet.Quote(s))
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("lease key %s is not a network address", subnet.Quote(s))
	}
	return p, nil
}

// parseKeyName reads the subnets of a lease key's last element.
func parseKeyName(name string) (v4, v6 netip.Prefix, err error) {
	if len(name) > subnet.MaxNameBytes {
		return v4, v6, fmt.Errorf("lease key %s is longer than %d bytes", subnet.Quote(name), subnet.MaxNameBytes)
	}
	for _, part := range strings.Split(name, "&") {
		p, err := keyToPrefix(part)
		if err != nil {
			return v4, v6, err
		}
		family := &v6
		if p.Addr().Is4() {
			family = &v4
		}
		if family.IsValid() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %s names two subnets of one family", subnet.Quote(name))
		}
		*family = p
	}
	if !v4.IsValid() && !v6.IsValid() {
		return v4, v6, fmt.Errorf("lease key %s names no subnet", subnet.Quote(name))
	}
	return v4, v6, nil
}

// leaseFromKV reads one lease key and its value; created is the key's
// create revision. A value longer than subnet.MaxLeaseValueBytes is refused
// unread.
func leaseFromKV(name string, data []byte, created int64) (subnet.Lease, error) {
	l := subnet.Lease{Name: name, Created: created}
	var err error
	if l.Subnet, l.IPv6Subnet, err = parseKeyName(name); err != nil {
		return l, err
	}
	if len(data) > subnet.MaxLeaseValueBytes {
		return l, fmt.Errorf("lease %s has a value of %d bytes, more than the %d a lease can need", name, len(data), subnet.MaxLeaseValueBytes)
	}
	var v value
	if err := json.Unmarshal(data, &v); err != nil {
		return l, fmt.Errorf("lease %s has a malformed value %s: %w", name, subnet.Quote(string(data)), err)
	}
	parse := func(s *string, want4 bool) (netip.Addr, error) {
		if s == nil || *s == "" {
			return netip.Addr{}, nil
		}
		a, err := ip.ParseAddrOf(*s, want4)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("lease %s has a malformed public IP %s: %w", name, subnet.Quote(*s), err)
		}
		return a, nil
	}
	if l.Attrs.PublicIP, err = parse(v.PublicIP, true); err != nil {
		return l, err
	}
	if l.Attrs.PublicIPv6, err = parse(v.PublicIPv6, false); err != nil {
		return l, err
	}
	l.Attrs.BackendType = v.BackendType
	l.Attrs.BackendData = v.BackendData
	l.Attrs.BackendV6Data = v.BackendV6Data
	return l, nil
}

// marshalValue writes attrs the way upstream does.
func marshalValue(a subnet.LeaseAttrs) ([]byte, error) {
	v := value{BackendType: a.BackendType, BackendData: a.BackendData, BackendV6Data: a.BackendV6Data}
	if a.PublicIP.IsValid() {
		s := a.PublicIP.String()
		v.PublicIP = &s
	}
	if a.PublicIPv6.IsValid() {
		s := a.PublicIPv6.String()
		v.PublicIPv6 = &s
	}
	if len(v.BackendData) == 0 {
		v.BackendData = json.RawMessage("null")
	}
	return json.Marshal(v)
}
