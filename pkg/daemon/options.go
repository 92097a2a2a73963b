// Package daemon is flanneld as a library: Run(ctx, Options) sets up the
// node's network and keeps it in sync until ctx ends. cmd/flanneld is a thin
// wrapper around it; another program can embed it the same way (as k3s does
// with flannel). It keeps no global state and never exits the process.
package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet/kube"
)

// Options are flanneld's settings, one field per command-line flag.
type Options struct {
	KubeSubnetMgr        bool
	KubeconfigFile       string
	KubeAPIURL           string
	KubeAnnotationPrefix string

	EtcdEndpoints []string
	EtcdPrefix    string
	EtcdKeyfile   string
	EtcdCertfile  string
	EtcdCAFile    string
	EtcdUsername  string
	EtcdPassword  string

	Iface         []string
	IfaceRegex    []string
	IfaceCanReach string
	PublicIP      string
	PublicIPv6    string

	SubnetFile             string
	NetConfigPath          string
	SubnetLeaseRenewMargin int // minutes

	IPMasq                   bool
	IPMasqFullyRandomDisable bool
	IPTablesResync           int // seconds
	IPTablesForwardRules     bool
	IPBlackholeRoute         bool

	HealthzIP                 string
	HealthzPort               int
	SetNodeNetworkUnavailable bool

	// PeerProbeInterval is how often each peer is probed through the
	// overlay (0: never); PeerProbeMaxRate bounds the probes a second in
	// total, so a large cluster probes each peer less often.
	PeerProbeInterval time.Duration
	PeerProbeMaxRate  float64

	// Resync is the period of the full reconcile pass that repairs drift.
	Resync time.Duration
	// Version is reported in the User-Agent.
	Version string
}

// DefaultOptions returns upstream flanneld's defaults.
func DefaultOptions() Options {
	return Options{
		KubeAnnotationPrefix:      kube.DefaultAnnotationPrefix,
		EtcdEndpoints:             []string{"http://127.0.0.1:4001", "http://127.0.0.1:2379"},
		EtcdPrefix:                "/coreos.com/network",
		SubnetFile:                "/run/flannel/subnet.env",
		NetConfigPath:             "/etc/kube-flannel/net-conf.json",
		SubnetLeaseRenewMargin:    60,
		IPTablesResync:            5,
		IPTablesForwardRules:      true,
		HealthzIP:                 "0.0.0.0",
		SetNodeNetworkUnavailable: true,
		Resync:                    30 * time.Second,
		PeerProbeInterval:         time.Minute,
		PeerProbeMaxRate:          5,
		Version:                   "dev",
	}
}

// Validate checks every option that can be checked without touching the
// system, so a bad value fails before anything changes.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if o.SubnetLeaseRenewMargin < 1 || o.SubnetLeaseRenewMargin > 1439 {
		bad("--subnet-lease-renew-margin must be between 1 and 1439 minutes, got %d", o.SubnetLeaseRenewMargin)
	}
	if o.IPTablesResync < 1 {
		bad("--iptables-resync must be at least 1 second, got %d", o.IPTablesResync)
	}
	if o.HealthzPort < 0 || o.HealthzPort > 65535 {
		bad("--healthz-port must be between 0 and 65535, got %d", o.HealthzPort)
	}
	if o.HealthzPort > 0 && (o.HealthzIP == "" || strings.ContainsAny(o.HealthzIP, " /:[]") && !isIP(o.HealthzIP)) {
		bad("--healthz-ip %q is not an IP address or host name", o.HealthzIP)
	}
	if _, err := o.publicIP(o.PublicIP, true); err != nil {
		errs = append(errs, err)
	}
	if _, err := o.publicIP(o.PublicIPv6, false); err != nil {
		errs = append(errs, err)
	}
	for _, re := range o.IfaceRegex {
		if _, err := regexp.Compile(re); err != nil {
			bad("--iface-regex %q: %w", re, err)
		}
	}
	if o.IfaceCanReach != "" {
		if _, err := netip.ParseAddr(o.IfaceCanReach); err != nil {
			bad("--iface-can-reach %q is not an IP address", o.IfaceCanReach)
		}
	}
	if o.KubeSubnetMgr && o.NetConfigPath == "" {
		bad("--net-config-path must not be empty")
	}
	if o.SubnetFile == "" {
		bad("--subnet-file must not be empty")
	}
	if o.Resync <= 0 {
		bad("the resync period must be positive")
	}
	if o.PeerProbeInterval < 0 {
		bad("--peer-probe-interval must not be negative, got %s", o.PeerProbeInterval)
	}
	if o.PeerProbeMaxRate <= 0 || o.PeerProbeMaxRate > 1000 {
		bad("--peer-probe-max-rate must be above 0 and at most 1000 probes a second, got %g", o.PeerProbeMaxRate)
	}
	return errors.Join(errs...)
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

// publicIP parses --public-ip (want4) or --public-ipv6; empty is no address.
func (o *Options) publicIP(s string, want4 bool) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	flag := "--public-ip"
	if !want4 {
		flag = "--public-ipv6"
	}
	a, err := ip.ParseAddrOf(s, want4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q is %w", flag, s, err)
	}
	return a, nil
}
