package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/backend/hostgw"
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
	klog.InfoS("Using external interface", "interface", ext.Name, "address", ext.IfaceAddr, "publicIP", ext.ExtAddr, "mtu", ext.MTU)
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

	m.Lease.WithLabelValues(lease.Subnet.String()).Set(1)
	if err := startFirewall(ctx, o, cfg, lease, m); err != nil {
		return err
	}
	env := subnet.NewEnv(cfg, &lease, be.MTU(), o.IPMasq)
	if err := subnet.WriteEnvFile(o.SubnetFile, env); err != nil {
		return err
	}
	klog.InfoS("Wrote subnet file", "path", o.SubnetFile, "subnet", env.Subnet, "mtu", env.MTU)

	status.SetReady(false, "waiting for the first sync of peers")
	loop := newSyncLoop(be, network.NewReconciler(kernel.NewNetlink(h)), peers, lease, o.Resync, status, m)
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
		klog.InfoS("flanneld is ready", "node", src.nodeName, "subnet", lease.Subnet, "peers", peers.Len())
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
	klog.InfoS("Backend device ready", "backend", attrs.BackendType, "data", string(attrs.BackendData))
	lease, err := src.AcquireLease(ctx, attrs)
	if err != nil {
		return subnet.Lease{}, err
	}
	klog.InfoS("Acquired lease", "subnet", lease.Subnet, "publicIP", lease.Attrs.PublicIP, "backend", lease.Attrs.BackendType)
	if err := be.Configure(ctx, lease); err != nil {
		return subnet.Lease{}, err
	}
	return lease, nil
}

// startFirewall installs the masquerade and forward rules and keeps them in
// place every --iptables-resync seconds.
func startFirewall(ctx context.Context, o Options, cfg *subnet.Config, lease subnet.Lease, m *metrics.Metrics) error {
	rules := FirewallRules(&o, cfg, lease)
	if len(rules) == 0 {
		return nil
	}
	ipt, err := network.NewIPTables(iptables.ProtocolIPv4)
	if err != nil {
		return err
	}
	fw := network.NewFirewall(ipt, rules)
	fw.OnRestore = func(repairs []string) { m.DriftRepairs.WithLabelValues("rule").Add(float64(len(repairs))) }
	if _, err := fw.Ensure(); err != nil {
		return fmt.Errorf("install firewall rules: %w", err)
	}
	go fw.Run(ctx, time.Duration(o.IPTablesResync)*time.Second)
	return nil
}
