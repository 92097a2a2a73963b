package daemon

import (
	"context"
	"io"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/pkg/metrics"
	"github.com/flanneld/flanneld/subnet"
	"github.com/flanneld/flanneld/subnet/etcd"
	"github.com/flanneld/flanneld/subnet/kube"
)

// leaseSource is the lease source with the network configuration it read.
// What only some sources do (Events, public IPs, fatal errors, closing) is
// found through subnet's optional interfaces.
type leaseSource struct {
	subnet.Source
	config *subnet.Config
	// configOrigin names where config came from, for error messages.
	configOrigin string
	// nodeName names this node in logs.
	nodeName string
}

// event posts an Event on this node, if the source can.
func (s *leaseSource) event(warning bool, reason, message string) {
	if p, ok := s.Source.(subnet.EventPoster); ok {
		p.Event(warning, reason, message)
	}
}

// withExternal completes the source once the external interface is known
// (etcd mode finds this host's lease by its public IP).
func (s *leaseSource) withExternal(ext *ip.ExternalInterface) {
	if p, ok := s.Source.(subnet.PublicIPSetter); ok {
		p.SetPublicIPs(ext.ExtAddr, ext.ExtV6Addr)
	}
}

// close closes the source, if it holds anything.
func (s *leaseSource) close() {
	if c, ok := s.Source.(io.Closer); ok {
		_ = c.Close()
	}
}

// wait returns the first failure the source cannot recover from, or nil
// once ctx ends.
func (s *leaseSource) wait(ctx context.Context) error {
	var errs <-chan error // nil: never
	if f, ok := s.Source.(subnet.Failer); ok {
		errs = f.Errors()
	}
	select {
	case err := <-errs:
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
	return &leaseSource{Source: src, config: cfg, configOrigin: o.NetConfigPath, nodeName: nodeName}, nil
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
	src, err := etcd.New(cfg)
	if err != nil {
		return nil, err
	}
	ls := &leaseSource{Source: src, nodeName: "this host"}
	klog.InfoS("Reading the network configuration from etcd", "endpoints", o.EtcdEndpoints, "prefix", o.EtcdPrefix)
	ls.configOrigin = "etcd key " + strings.TrimSuffix(o.EtcdPrefix, "/") + "/config"
	if ls.config, err = src.NetworkConfig(ctx); err != nil {
		ls.close()
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
