package kernel

import (
	"cmp"
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// WGKey is a WireGuard key (public, private or pre-shared): 32 bytes,
// written in base64 as wg(8) does. It is comparable, for map keys.
type WGKey [32]byte

// ParseWGKey parses a base64 WireGuard key.
func ParseWGKey(s string) (WGKey, error) {
	var k WGKey
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("not base64: %w", err)
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("%d bytes long, want %d", len(b), len(k))
	}
	copy(k[:], b)
	return k, nil
}

// String is the key in base64.
func (k WGKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zeros (no key).
func (k WGKey) IsZero() bool { return k == WGKey{} }

// PrefixSet is a set of prefixes in a comparable form (sorted, masked,
// comma-separated): a WireGuard peer's allowed IPs.
type PrefixSet string

// NewPrefixSet returns the set of the valid prefixes among ps.
func NewPrefixSet(ps ...netip.Prefix) PrefixSet {
	var valid []netip.Prefix
	for _, p := range ps {
		if p.IsValid() {
			valid = append(valid, p.Masked())
		}
	}
	slices.SortFunc(valid, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	valid = slices.Compact(valid)
	parts := make([]string, len(valid))
	for i, p := range valid {
		parts[i] = p.String()
	}
	return PrefixSet(strings.Join(parts, ","))
}

// Prefixes returns the prefixes of the set.
func (s PrefixSet) Prefixes() []netip.Prefix {
	if s == "" {
		return nil
	}
	var out []netip.Prefix
	for _, part := range strings.Split(string(s), ",") {
		if p, err := netip.ParsePrefix(part); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// WGPeer is a peer of a WireGuard device: packets for its allowed IPs are
// encrypted to its public key and sent to its endpoint (cryptokey
// routing).
type WGPeer struct {
	LinkIndex  int // the WireGuard device
	PublicKey  WGKey
	Endpoint   netip.AddrPort
	AllowedIPs PrefixSet
	// Keepalive is the persistent keepalive interval in seconds (0: off).
	Keepalive int
	// PSK is the pre-shared key (zero: none). It is never printed.
	PSK WGKey
}

// WGPeerKey identifies a WireGuard peer: a device has one peer per public
// key.
type WGPeerKey struct {
	LinkIndex int
	PublicKey WGKey
}

// Key returns the peer's identity.
func (p WGPeer) Key() WGPeerKey { return WGPeerKey{p.LinkIndex, p.PublicKey} }

// String describes the peer without its pre-shared key.
func (p WGPeer) String() string {
	s := fmt.Sprintf("%s endpoint %s allowed-ips %s dev %d", p.PublicKey, p.Endpoint, p.AllowedIPs, p.LinkIndex)
	if p.Keepalive > 0 {
		s += fmt.Sprintf(" keepalive %ds", p.Keepalive)
	}
	if !p.PSK.IsZero() {
		s += " psk (set)"
	}
	return s
}
