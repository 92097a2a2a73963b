package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/backend/hostgw"
	"github.com/flanneld/flanneld/backend/udp"
	"github.com/flanneld/flanneld/backend/vxlan"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/pkg/kernel"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

// Backends returns the registry of the backends this build supports.
func Backends() backend.Registry {
	return backend.Registry{
		vxlan.Type:  vxlan.New,
		hostgw.Type: hostgw.New,
		udp.Type:    udp.New,
	}
}

// Run sets up this node's pod network and keeps it in sync with the
// cluster until ctx ends. It returns an error for anything that prevents
// the node from joining; on a clean stop it returns nil and leaves the
// datapath in place, so pods keep working while flanneld restarts.
func Run(ctx context.Context, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := metrics.New(o.Version)

	open := openEtcd
	if o.KubeSubnetMgr {
		open = openKube
	}
	src, err := open(ctx, o, m)
	if err != nil {
		return err
	}
	defer src.close()
	cfg := src.config

	if o.IPBlackholeRoute {
		klog.InfoS("--ip-blackhole-route is accepted for compatibility but not acted on in this release")
	}

	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()

	ext, err := ip.LookupExternalInterface(h, o.InterfaceOptions(cfg))
	if err != nil {
		return err
	}
	klog.InfoS("Using external interface", validKV("interface", ext.Name, "address", ext.IfaceAddr, "publicIP", ext.ExtAddr,
		"addressIPv6", ext.IfaceV6Addr, "publicIPv6", ext.ExtV6Addr, "mtu", ext.MTU)...)
	src.withExternal(ext)

	be, err := Backends().New(backend.Params{Config: cfg, ExtIface: ext, Handle: h, Reach: ip.KernelReachability{H: h}})
	if err != nil {
		return fmt.Errorf("%s: %w", src.configOrigin, err)
	}

	status := health.NewStatus(3*o.Resync + time.Minute)
	var healthErr <-chan error
	if o.HealthzPort > 0 {
		mux := http.NewServeMux()
		mux.Handle("/", status.Handler())
		mux.Handle("/metrics", m.Handler())
		addr := net.JoinHostPort(o.HealthzIP, strconv.Itoa(o.HealthzPort))
		if healthErr, err = health.Serve(ctx, addr, mux); err != nil {
			return err
		}
	}

	peers := subnet.NewPeers()
	if err := src.Start(ctx, peers); err != nil {
		return err
	}
	status.SetReady(false, "waiting for this node's lease")
	lease, err := joinNetwork(ctx, src, be)
	if err != nil {
		return err
	}
	if err := removeStaleDevices(h, be.Base().OwnedLinks); err != nil {
		return err
	}
	fwdErr, err := startForwarder(ctx, be, m)
	if err != nil {
		return err
	}

	for _, sn := range []netip.Prefix{lease.Subnet, lease.IPv6Subnet} {
		if sn.IsValid() {
			m.Lease.WithLabelValues(sn.String()).Set(1)
		}
	}
	if err := startFirewall(ctx, o, cfg, lease, m); err != nil {
		return err
	}
	env := subnet.NewEnv(cfg, &lease, be.MTU(), o.IPMasq)
	if err := subnet.WriteEnvFile(o.SubnetFile, env); err != nil {
		return err
	}
	klog.InfoS("Wrote subnet file", validKV("path", o.SubnetFile, "subnet", env.Subnet, "subnetIPv6", env.IPv6Subnet, "mtu", env.MTU)...)

	status.SetReady(false, "waiting for the first sync of peers")
	rules := subnet.PeerRules{Config: cfg, Own: lease}
	loop := newSyncLoop(be, network.NewReconciler(kernel.NewNetlink(h)), peers, rules, o.Resync, status, m)
	loop.localAddrs = func() ([]netip.Prefix, error) { return ip.LinkPrefixes(h, ext.Index) }
	loop.refreshRules()
	reportReady := make(chan struct{}, 1)
	go func() {
		// NetworkUnavailable=False, off the sync loop: the API server may be slow.
		for {
			select {
			case <-ctx.Done():
				return
			case <-reportReady:
				if err := src.ReportReady(ctx); err != nil && ctx.Err() == nil {
					klog.ErrorS(err, "Could not report the node's network as available")
				}
			}
		}
	}()
	loop.onReady = func() {
		klog.InfoS("flanneld is ready", validKV("node", src.nodeName, "subnet", lease.Subnet, "subnetIPv6", lease.IPv6Subnet, "peers", peers.Len())...)
		notifySystemd()
		select {
		case reportReady <- struct{}{}:
		default:
		}
	}
	loop.event = src.event
	if err := m.Register(metrics.NewLinkStats(h, loop.ownedLinks)); err != nil {
		return err
	}
	loop.watchKernel(ctx, ext.Index)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		loop.run(ctx)
	}()

	select {
	case <-ctx.Done():
	case err := <-healthErr:
		cancel()
		<-loopDone
		return fmt.Errorf("health server: %w", err)
	case err := <-src.errs:
		cancel()
		<-loopDone
		return err
	case err := <-fwdErr:
		cancel()
		<-loopDone
		return fmt.Errorf("forwarder: %w", err)
	}
	<-loopDone
	klog.InfoS("Stopping; the datapath stays in place")
	return nil
}

// joinNetwork sets up the backend's device, acquires the lease with the
// device's attributes and applies the lease to the device.
func joinNetwork(ctx context.Context, src subnet.Source, be backend.Backend) (subnet.Lease, error) {
	prev, err := src.PreviousAttrs(ctx)
	if err != nil {
		return subnet.Lease{}, err
	}
	attrs, err := be.Setup(ctx, prev)
	if err != nil {
		return subnet.Lease{}, err
	}
	klog.InfoS("Backend device ready", validKV("backend", attrs.BackendType, "data", string(attrs.BackendData), "dataIPv6", string(attrs.BackendV6Data))...)
	lease, err := src.AcquireLease(ctx, attrs)
	if err != nil {
		return subnet.Lease{}, err
	}
	klog.InfoS("Acquired lease", validKV("subnet", lease.Subnet, "publicIP", lease.Attrs.PublicIP,
		"subnetIPv6", lease.IPv6Subnet, "publicIPv6", lease.Attrs.PublicIPv6, "backend", lease.Attrs.BackendType)...)
	if err := be.Configure(ctx, lease); err != nil {
		return subnet.Lease{}, err
	}
	return lease, nil
}

// startForwarder runs the datapath of a backend that forwards packets
// itself (udp) and exports its drop counters. The channel reports its
// failure; it is nil for kernel datapaths.
func startForwarder(ctx context.Context, be backend.Backend, m *metrics.Metrics) (<-chan error, error) {
	fw, ok := be.(backend.Forwarder)
	if !ok {
		return nil, nil
	}
	if err := m.Register(metrics.NewUDPDrops(fw.Dropped)); err != nil {
		return nil, err
	}
	errs := make(chan error, 1)
	go func() {
		if err := fw.Forward(ctx); err != nil && ctx.Err() == nil {
			errs <- err
		}
	}()
	return errs, nil
}

// startFirewall installs the masquerade and forward rules of every address
// family in the configured mode (iptables, or nftables with
// EnableNFTables), keeps them in place every --iptables-resync seconds, and
// removes flanneld's rules of the other mode, which a node switched from it
// still has (after installing, so the node is never without rules).
func startFirewall(ctx context.Context, o Options, cfg *subnet.Config, lease subnet.Lease, m *metrics.Metrics) error {
	mode := FirewallMode(cfg)
	if sets := FirewallRuleSets(&o, cfg, lease); len(sets) > 0 {
		onRestore := func(repairs []string) { m.DriftRepairs.WithLabelValues("rule").Add(float64(len(repairs))) }
		keeper, err := network.NewRuleKeeper(cfg.EnableNFTables, sets, onRestore)
		if err != nil {
			return fmt.Errorf("firewall (%s mode): %w", mode, err)
		}
		if _, err := keeper.Ensure(); err != nil {
			return fmt.Errorf("install firewall rules (%s mode): %w", mode, err)
		}
		go keeper.Run(ctx, time.Duration(o.IPTablesResync)*time.Second)
	}
	removed, err := network.RemoveOtherModeRules(cfg.EnableNFTables)
	for _, r := range removed {
		klog.InfoS("Removed firewall rule of the other mode", "mode", mode, "removed", r)
	}
	if err != nil {
		klog.ErrorS(err, "Could not remove the firewall rules of the other mode", "mode", mode)
	}
	return nil
}

// validKV returns the key/value pairs of a log line without those whose
// value is absent: an invalid address or prefix (the address family is
// off) or an empty string.
func validKV(kv ...any) []any {
	out := kv[:0:0]
	for i := 0; i+1 < len(kv); i += 2 {
		switch v := kv[i+1].(type) {
		case netip.Addr:
			if !v.IsValid() {
				continue
			}
		case netip.Prefix:
			if !v.IsValid() {
				continue
			}
		case string:
			if v == "" {
				continue
			}
		}
		out = append(out, kv[i], kv[i+1])
	}
	return out
}
