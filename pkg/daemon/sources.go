package daemon

import (
	"context"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
	"github.com/flanneld/flanneld/subnet/etcd"
	"github.com/flanneld/flanneld/subnet/kube"
)

// leaseSource is a subnet.Source with what the daemon needs of it besides:
// the network configuration, Events and fatal errors.
type leaseSource struct {
	subnet.Source
	config *subnet.Config
	// configOrigin names where config came from, for error messages.
	configOrigin string
	// nodeName names this node in logs.
	nodeName string
	// event posts an Event on this node (Kubernetes only).
	event func(warning bool, reason, message string)
	// errs reports failures the source cannot recover from.
	errs <-chan error
	// withExternal completes the source once the external interface is
	// known (etcd mode finds this host's lease by its public IP).
	withExternal func(ext *ip.ExternalInterface)
	close        func()
}

// wait returns the first failure the source cannot recover from, or nil
// once ctx ends.
func (s *leaseSource) wait(ctx context.Context) error {
	select {
	case err := <-s.errs: // nil channel (Kubernetes): never
		return err
	case <-ctx.Done():
		return nil
	}
}

// openKube is the Kubernetes lease source: net-conf.json from a file, the
// lease from this node's podCIDR.
func openKube(ctx context.Context, o Options, m *metrics.Metrics) (*leaseSource, error) {
	cfg, err := subnet.ReadConfigFile(o.NetConfigPath)
	if err != nil {
		return nil, err
	}
	client, err := kube.NewClient(o.KubeconfigFile, o.KubeAPIURL, "flanneld/"+o.Version)
	if err != nil {
		return nil, err
	}
	nodeName, err := kube.NodeName(ctx, client)
	if err != nil {
		return nil, err
	}
	publicIP, _ := o.publicIP(o.PublicIP, true)
	publicIPv6, _ := o.publicIP(o.PublicIPv6, false)
	src := kube.New(kube.Config{
		Client:                client,
		NodeName:              nodeName,
		AnnotationPrefix:      o.KubeAnnotationPrefix,
		Network:               cfg,
		ExplicitPublicIP:      publicIP.IsValid(),
		ExplicitPublicIPv6:    publicIPv6.IsValid(),
		SetNetworkUnavailable: o.SetNodeNetworkUnavailable,
		Recorder:              kube.NewRecorder(ctx, client, nodeName),
		OnWatchEvent:          func(t string) { m.WatchEvents.WithLabelValues(t).Inc() },
		OnSynced:              m.LastWatchSync.SetToCurrentTime,
	})
	return &leaseSource{
		Source:       src,
		config:       cfg,
		configOrigin: o.NetConfigPath,
		nodeName:     nodeName,
		event:        src.Event,
		withExternal: func(*ip.ExternalInterface) {},
		close:        func() {},
	}, nil
}

// openEtcd is the etcd lease source: the network config at <prefix>/config,
// leases under <prefix>/subnets/.
func openEtcd(ctx context.Context, o Options, m *metrics.Metrics) (*leaseSource, error) {
	cfg := o.EtcdConfig()
	cfg.OnWatchEvent = func(t string) { m.WatchEvents.WithLabelValues(t).Inc() }
	cfg.OnSynced = m.LastWatchSync.SetToCurrentTime
	cfg.OnExpiry = func(t time.Time) {
		if t.IsZero() {
			m.LeaseExpiry.Set(0)
		} else {
			m.LeaseExpiry.Set(float64(t.Unix()))
		}
	}
	// The public IP is set once the external interface is known.
	var src *etcd.Source
	ls := &leaseSource{
		nodeName: "this host",
		event:    func(bool, string, string) {},
		withExternal: func(ext *ip.ExternalInterface) {
			src.SetPublicIP(ext.ExtAddr)
			src.SetPublicIPv6(ext.ExtV6Addr)
		},
	}
	var err error
	if src, err = etcd.New(cfg); err != nil {
		return nil, err
	}
	ls.Source, ls.errs, ls.close = src, src.Errors(), func() { _ = src.Close() }
	klog.InfoS("Reading the network configuration from etcd", "endpoints", o.EtcdEndpoints, "prefix", o.EtcdPrefix)
	ls.configOrigin = "etcd key " + strings.TrimSuffix(o.EtcdPrefix, "/") + "/config"
	if ls.config, err = src.NetworkConfig(ctx); err != nil {
		src.Close()
		return nil, err
	}
	return ls, nil
}

// EtcdConfig is the etcd lease source's configuration from the options
// (shared with `flanneld diagnose`).
func (o *Options) EtcdConfig() etcd.Config {
	return etcd.Config{
		Endpoints:   o.EtcdEndpoints,
		Prefix:      o.EtcdPrefix,
		KeyFile:     o.EtcdKeyfile,
		CertFile:    o.EtcdCertfile,
		CAFile:      o.EtcdCAFile,
		Username:    o.EtcdUsername,
		Password:    o.EtcdPassword,
		RenewMargin: time.Duration(o.SubnetLeaseRenewMargin) * time.Minute,
		SubnetFile:  o.SubnetFile,
	}
}
