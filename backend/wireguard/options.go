package wireguard

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/network/kernel"
)

// Modes (the Mode option), as upstream's.
const (
	// ModeSeparate: flannel-wg for IPv4 over IPv4, flannel-wg-v6 for IPv6
	// over IPv6.
	ModeSeparate = "separate"
	// ModeAuto: one device for both families; each peer's endpoint is its
	// IPv4 public address, or its IPv6 one when only that is a public
	// (not private) address.
	ModeAuto = "auto"
	// ModeIPv4 and ModeIPv6: one device for both families, endpoints of
	// that family.
	ModeIPv4 = "ipv4"
	ModeIPv6 = "ipv6"
)

const (
	defaultPort   = 51820
	defaultPortV6 = 51821
	// overhead is what upstream takes off the MTU for both families: outer
	// IPv6 header (40), UDP (8), WireGuard header (16) and tag (16).
	overhead = 80
	minMTU   = 576
)

// Options are the backend's keys in net-conf.json.
type Options struct {
	PSK          string
	ListenPort   int
	ListenPortV6 int
	MTU          int
	// PersistentKeepaliveInterval is in seconds (0: off), as upstream.
	PersistentKeepaliveInterval int
	Mode                        string

	psk kernel.WGKey
}

// ParseOptions reads and validates the Backend object of net-conf.json.
func ParseOptions(raw json.RawMessage) (Options, error) {
	var o Options
	if err := backend.DecodeOptions(Type, raw, &o); err != nil {
		return o, err
	}
	if o.ListenPort == 0 {
		o.ListenPort = defaultPort
	}
	if o.ListenPortV6 == 0 {
		o.ListenPortV6 = defaultPortV6
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"ListenPort", o.ListenPort}, {"ListenPortV6", o.ListenPortV6}} {
		if p.v < 1 || p.v > 65535 {
			return o, fmt.Errorf("wireguard %s %d is out of range 1..65535", p.name, p.v)
		}
	}
	if o.PersistentKeepaliveInterval < 0 || o.PersistentKeepaliveInterval > 65535 {
		return o, fmt.Errorf("wireguard PersistentKeepaliveInterval %d is out of range 0..65535 (seconds)", o.PersistentKeepaliveInterval)
	}
	if o.MTU < 0 || (o.MTU > 0 && o.MTU-overhead < minMTU) {
		return o, fmt.Errorf("wireguard MTU %d is too small: pods would get less than %d bytes after %d bytes of WireGuard overhead", o.MTU, minMTU, overhead)
	}
	o.Mode = strings.ToLower(o.Mode)
	switch o.Mode {
	case "":
		o.Mode = ModeSeparate
	case ModeSeparate, ModeAuto, ModeIPv4, ModeIPv6:
	default:
		return o, fmt.Errorf("wireguard Mode %q is not one of separate, auto, ipv4, ipv6", o.Mode)
	}
	if o.PSK != "" {
		k, err := kernel.ParseWGKey(o.PSK)
		if err != nil {
			return o, fmt.Errorf("wireguard PSK is not a key as `wg genpsk` prints: %w", err)
		}
		o.psk = k
	}
	return o, nil
}

// Data is the backend-data (and backend-v6-data) annotation:
// `{"PublicKey":"<base64>","Port":51820}`.
type Data struct {
	PublicKey string `json:"PublicKey"`
	Port      int    `json:"Port,omitempty"`
}
