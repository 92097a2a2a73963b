package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/backend/alloc"
	"github.com/flanneld/flanneld/backend/extension"
	"github.com/flanneld/flanneld/backend/hostgw"
	"github.com/flanneld/flanneld/backend/udp"
	"github.com/flanneld/flanneld/backend/vxlan"
	"github.com/flanneld/flanneld/backend/wireguard"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/network"
	"github.com/flanneld/flanneld/network/kernel"
	"github.com/flanneld/flanneld/pkg/health"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
)

// Backends returns the registry of the backends this build supports.
func Backends() backend.Registry {
	return backend.Registry{
		vxlan.Type:     vxlan.New,
		hostgw.Type:    hostgw.New,
		udp.Type:       udp.New,
		alloc.Type:     alloc.New,
		extension.Type: extension.New,
		wireguard.Type: wireguard.New,
	}
}

// Run sets up this node's pod network and keeps it in sync with the
// cluster until ctx ends. It returns an error for anything that prevents
// the node from joining; on a clean stop (ctx ended, at any point, start-up
// included) it returns nil and leaves the datapath in place, so pods keep
// working while flanneld restarts. It returns only once every goroutine it
// started has ended.
func Run(ctx context.Context, o Options) error {
	err := run(ctx, o)
	if err != nil && ctx.Err() != nil {
		klog.InfoS("Stopped on request", "during", err)
		return nil
	}
	return err
}

// run is Run's start-up, in the order of architecture.md: each numbered
// step is a function, and nothing on the node changes before step 3.
func run(ctx context.Context, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	m := metrics.New(o.Version)
	// 1. The network configuration, the external interface, the backend.
	src, err := openSource(ctx, o, m)
	if err != nil {
		return err
	}
	defer src.close()
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close() // after every goroutine below has ended
	ext, be, err := buildBackend(h, o, src)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	stop := func(err error) error {
		g.Go(func() error { return err }) // cancels gctx
		if werr := g.Wait(); err == nil {
			err = werr
		}
		return err
	}
	status := health.NewStatus(3*o.Resync + time.Minute)
	if err := serveHealth(gctx, g, o, status, m); err != nil {
		return stop(err)
	}
	startRunner(gctx, g, be)
	// 2-5. The lease watch, the device, the lease.
	peers := subnet.NewPeers()
	if err := src.Start(gctx, peers); err != nil {
		return stop(err)
	}
	g.Go(func() error { return src.wait(gctx) })
	status.SetReady(false, "waiting for this node's lease")
	lease, err := joinNetwork(gctx, src, be)
	if err != nil {
		return stop(err)
	}
	impl := backend.ImplementationOf(be)
	m.BackendInfo.WithLabelValues(src.config.BackendType, impl).Set(1)
	klog.InfoS("Backend datapath", "backend", src.config.BackendType, "implementation", impl)
	// 6. Stale devices, the forwarder.
	if err := prepareDatapath(gctx, g, h, be, lease, m); err != nil {
		return stop(err)
	}
	// 7. The sync loop and its kernel watch: peers are programmed at once
	// (after a restart every millisecond counts for a datapath that went
	// with the old process); ready after its first full pass and step 8.
	status.SetReady(false, "waiting for the first sync of peers")
	prepared := make(chan struct{})
	loop := newSyncLoop(be, network.NewReconciler(kernel.NewNetlink(h)), peers,
		subnet.PeerRules{Config: src.config, Own: lease}, o.Resync, status, m)
	loop.prepared = prepared
	loop.localAddrs = func() ([]netip.Prefix, error) { return ip.LinkPrefixes(h, ext.Index) }
	loop.extMTU.Store(int64(ext.MTU))
	loop.underlayMTU = ext.MTU
	loop.onMTU = func(mtu int) { mtuChanged(o, src, lease, mtu) }
	loop.refreshRules()
	loop.event = src.event
	loop.onReady = readyReporter(gctx, g, src, lease, peers)
	if err := m.Register(metrics.NewLinkStats(h, loop.ownedLinks)); err != nil {
		return stop(err)
	}
	if cn, ok := be.(backend.ChangeNotifier); ok {
		g.Go(func() error { kickOnChange(gctx, cn.Changed(), loop); return nil })
	}
	if o.PeerProbeInterval > 0 && probed(src.config.BackendType) {
		loop.probes = newProber(ip.NewICMPPinger(), o.PeerProbeInterval, o.PeerProbeMaxRate, m)
		loop.probes.event, loop.probes.stateFile = src.event, ProbeStatePath(o.SubnetFile)
		g.Go(func() error { loop.probes.run(gctx); return nil })
	}
	g.Go(func() error { loop.watchKernel(gctx, ext.Index); return nil })
	g.Go(func() error { loop.run(gctx); return nil })
	// 8. The firewall, subnet.env.
	if err := prepareNode(gctx, g, o, src.config, be, lease, m); err != nil {
		return stop(err)
	}
	close(prepared)
	err = g.Wait()
	klog.InfoS("Stopping; the datapath stays in place")
	return err
}

// openSource opens the lease source of the mode the options choose, which
// reads the network configuration.
func openSource(ctx context.Context, o Options, m *metrics.Metrics) (*leaseSource, error) {
	open := openEtcd
	if o.KubeSubnetMgr {
		open = openKube
	}
	src, err := open(ctx, o, m)
	if err != nil {
		return nil, err
	}
	if o.IPBlackholeRoute {
		klog.InfoS("--ip-blackhole-route is accepted for compatibility but not acted on in this release")
	}
	return src, nil
}

// buildBackend selects the external interface and builds the backend,
// which validates its options; nothing on the node changes.
func buildBackend(h *netlink.Handle, o Options, src *leaseSource) (*ip.ExternalInterface, backend.Backend, error) {
	ext, err := ip.LookupExternalInterface(h, o.InterfaceOptions(src.config))
	if err != nil {
		return nil, nil, err
	}
	klog.InfoS("Using external interface", validKV("interface", ext.Name, "address", ext.IfaceAddr, "publicIP", ext.ExtAddr,
		"addressIPv6", ext.IfaceV6Addr, "publicIPv6", ext.ExtV6Addr, "mtu", ext.MTU)...)
	src.withExternal(ext)
	be, err := Backends().New(backend.Params{Config: src.config, ExtIface: ext, Handle: h, Reach: ip.KernelReachability{H: h}})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", src.configOrigin, err)
	}
	return ext, be, nil
}

// serveHealth serves /healthz, /readyz and /metrics on --healthz-port, if
// set, in g.
func serveHealth(ctx context.Context, g *errgroup.Group, o Options, status *health.Status, m *metrics.Metrics) error {
	if o.HealthzPort <= 0 {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/", status.Handler())
	mux.Handle("/metrics", m.Handler())
	ln, err := health.Listen(net.JoinHostPort(o.HealthzIP, strconv.Itoa(o.HealthzPort)), health.DefaultLimits)
	if err != nil {
		return err
	}
	g.Go(func() error {
		if err := health.Serve(ctx, ln, mux, health.DefaultLimits); err != nil {
			return fmt.Errorf("health server: %w", err)
		}
		return nil
	})
	return nil
}

// prepareDatapath removes stale devices and starts the forwarder (udp) in
// g: what must be done before the sync loop programs peers.
func prepareDatapath(ctx context.Context, g *errgroup.Group, h *netlink.Handle, be backend.Backend, lease subnet.Lease, m *metrics.Metrics) error {
	if err := removeStaleDevices(h, be.Base().OwnedLinks); err != nil {
		return err
	}
	if err := startForwarder(ctx, g, be, m); err != nil {
		return err
	}
	for _, sn := range []netip.Prefix{lease.Subnet, lease.IPv6Subnet} {
		if sn.IsValid() {
			m.Lease.WithLabelValues(sn.String()).Set(1)
		}
	}
	return nil
}

// prepareNode starts the firewall keeper in g and writes subnet.env; the
// sync loop may already be programming peers.
func prepareNode(ctx context.Context, g *errgroup.Group, o Options, cfg *subnet.Config, be backend.Backend, lease subnet.Lease, m *metrics.Metrics) error {
	if err := startFirewall(ctx, g, o, cfg, lease, m); err != nil {
		return err
	}
	env := subnet.NewEnv(cfg, &lease, be.MTU(), o.IPMasq)
	if err := subnet.WriteEnvFile(o.SubnetFile, env); err != nil {
		return err
	}
	klog.InfoS("Wrote subnet file", validKV("path", o.SubnetFile, "subnet", env.Subnet, "subnetIPv6", env.IPv6Subnet, "mtu", env.MTU)...)
	return nil
}

// ProbeStatePath is where the daemon keeps the peers that do not answer
// its probes (for `flanneld diagnose`): next to subnet.env.
func ProbeStatePath(subnetFile string) string {
	return filepath.Join(filepath.Dir(subnetFile), "peer-probes.json")
}

// mtuChanged rewrites subnet.env when the MTU pods must use changed (the
// external interface's MTU did), and says so: pods created from now on get
// it; existing pods keep theirs until they are recreated.
func mtuChanged(o Options, src *leaseSource, lease subnet.Lease, mtu int) {
	env := subnet.NewEnv(src.config, &lease, mtu, o.IPMasq)
	if err := subnet.WriteEnvFile(o.SubnetFile, env); err != nil {
		klog.ErrorS(err, "Could not write the new MTU to the subnet file", "path", o.SubnetFile, "mtu", mtu)
		return
	}
	klog.InfoS("The pods' MTU changed; new pods get it, existing pods keep theirs until recreated", "mtu", mtu, "path", o.SubnetFile)
	src.event(false, "MTUChanged", fmt.Sprintf("the pods' MTU is now %d (FLANNEL_MTU in %s); existing pods keep theirs until recreated", mtu, o.SubnetFile))
}

// readyReporter returns the sync loop's onReady: it logs, tells systemd,
// and sets NetworkUnavailable=False from a goroutine in g (the API server
// may be slow; the sync loop must not wait for it).
func readyReporter(ctx context.Context, g *errgroup.Group, src *leaseSource, lease subnet.Lease, peers *subnet.Peers) func() {
	reportReady := make(chan struct{}, 1)
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-reportReady:
				if err := src.ReportReady(ctx); err != nil && ctx.Err() == nil {
					klog.ErrorS(err, "Could not report the node's network as available")
				}
			}
		}
	})
	return func() {
		klog.InfoS("flanneld is ready", validKV("node", src.nodeName, "subnet", lease.Subnet, "subnetIPv6", lease.IPv6Subnet, "peers", peers.Len())...)
		notifySystemd()
		select {
		case reportReady <- struct{}{}:
		default:
		}
	}
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
// itself (udp) in g and exports its drop counters; its failure stops
// flanneld. Kernel datapaths have nothing to run.
func startForwarder(ctx context.Context, g *errgroup.Group, be backend.Backend, m *metrics.Metrics) error {
	fw, ok := be.(backend.Forwarder)
	if !ok {
		return nil
	}
	if err := m.Register(metrics.NewUDPDrops(fw.Dropped)); err != nil {
		return err
	}
	g.Go(func() error {
		if err := fw.Forward(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("forwarder: %w", err)
		}
		return nil
	})
	return nil
}

// kickOnChange runs a full pass of loop whenever the backend reports a
// change someone else made to its device, until ctx ends.
func kickOnChange(ctx context.Context, changed <-chan struct{}, loop *syncLoop) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			klog.InfoS("Backend device changed by someone else; repairing")
			loop.kickFull()
		}
	}
}

// startRunner runs in g what a backend runs inside flanneld (wireguard's
// userspace device) until ctx ends; its failure stops flanneld.
func startRunner(ctx context.Context, g *errgroup.Group, be backend.Backend) {
	r, ok := be.(backend.Runner)
	if !ok {
		return
	}
	g.Go(func() error {
		if err := r.Run(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("backend: %w", err)
		}
		return nil
	})
}

// startFirewall installs the masquerade and forward rules of every address
// family in the configured mode (iptables, or nftables with
// EnableNFTables), keeps them in place every --iptables-resync seconds, and
// removes flanneld's rules of the other mode, which a node switched from it
// still has (after installing, so the node is never without rules).
func startFirewall(ctx context.Context, g *errgroup.Group, o Options, cfg *subnet.Config, lease subnet.Lease, m *metrics.Metrics) error {
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
		g.Go(func() error { keeper.Run(ctx, time.Duration(o.IPTablesResync)*time.Second); return nil })
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
