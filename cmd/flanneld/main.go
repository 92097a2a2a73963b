// Command flanneld is the flannel network daemon: it leases this node a pod
// subnet out of the cluster network and connects all pod subnets across
// nodes. All the work is done by package daemon; this file only turns flags
// and FLANNELD_* environment variables into daemon.Options.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/pkg/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// flanneld is a small per-node agent: collect garbage at 50 % heap
	// growth instead of Go's default 100 %, unless GOGC says otherwise.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

// run is main without the exit, for tests.
func run(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "diagnose" {
		return runDiagnose(args[1:], environ, stdout, stderr)
	}
	opts, showVersion, err := parseOptions(args, environ, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "flanneld: %v\n", err)
		return 1
	}
	if showVersion {
		fmt.Fprintln(stdout, version)
		return 0
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintf(stderr, "flanneld: invalid options:\n%v\n", err)
		return 1
	}
	defer klog.Flush()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	klog.InfoS("Starting flanneld", "version", version)
	if err := daemon.Run(ctx, opts); err != nil {
		klog.ErrorS(err, "flanneld failed")
		klog.Flush()
		fmt.Fprintf(stderr, "flanneld: %v\n", err)
		return 1
	}
	return 0
}

// parseOptions reads the command line, then fills every flag not given
// there from FLANNELD_<NAME> (upper case, '-' as '_'): the command line wins.
func parseOptions(args, environ []string, stderr io.Writer) (daemon.Options, bool, error) {
	o := daemon.DefaultOptions()
	o.Version = version
	fs, showVersion := newFlagSet("flanneld", &o, stderr)
	if err := parseFlags(fs, args, environ); err != nil {
		return o, false, err
	}
	return o, *showVersion, nil
}

// newFlagSet defines the daemon's flags (and klog's) on o, and --version.
func newFlagSet(name string, o *daemon.Options, stderr io.Writer) (*pflag.FlagSet, *bool) {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false

	fs.BoolVar(&o.KubeSubnetMgr, "kube-subnet-mgr", o.KubeSubnetMgr, "use the Kubernetes API for subnet leases (else etcd)")
	fs.StringVar(&o.KubeconfigFile, "kubeconfig-file", o.KubeconfigFile, "kubeconfig file; empty uses the in-cluster configuration")
	fs.StringVar(&o.KubeAPIURL, "kube-api-url", o.KubeAPIURL, "Kubernetes API server URL")
	fs.StringVar(&o.KubeAnnotationPrefix, "kube-annotation-prefix", o.KubeAnnotationPrefix, "prefix of the Node annotations flanneld reads and writes")
	fs.StringSliceVar(&o.EtcdEndpoints, "etcd-endpoints", o.EtcdEndpoints, "comma-separated list of etcd endpoints")
	fs.StringVar(&o.EtcdPrefix, "etcd-prefix", o.EtcdPrefix, "etcd key prefix")
	fs.StringVar(&o.EtcdKeyfile, "etcd-keyfile", o.EtcdKeyfile, "TLS key file for etcd")
	fs.StringVar(&o.EtcdCertfile, "etcd-certfile", o.EtcdCertfile, "TLS certificate file for etcd")
	fs.StringVar(&o.EtcdCAFile, "etcd-cafile", o.EtcdCAFile, "CA file for etcd's TLS certificate")
	fs.StringVar(&o.EtcdUsername, "etcd-username", o.EtcdUsername, "etcd user name")
	fs.StringVar(&o.EtcdPassword, "etcd-password", o.EtcdPassword, "etcd password")
	fs.StringArrayVar(&o.Iface, "iface", o.Iface, "interface name or IP to use for inter-host traffic (repeatable: the first that exists wins)")
	fs.StringArrayVar(&o.IfaceRegex, "iface-regex", o.IfaceRegex, "regex matched against interface IPs, then names (repeatable)")
	fs.StringVar(&o.IfaceCanReach, "iface-can-reach", o.IfaceCanReach, "use the interface of the route to this IP")
	fs.StringVar(&o.PublicIP, "public-ip", o.PublicIP, "IPv4 address advertised to peers (default: the interface's)")
	fs.StringVar(&o.PublicIPv6, "public-ipv6", o.PublicIPv6, "IPv6 address advertised to peers (default: the interface's)")
	fs.StringVar(&o.SubnetFile, "subnet-file", o.SubnetFile, "file flanneld writes the node's subnet and MTU to")
	fs.StringVar(&o.NetConfigPath, "net-config-path", o.NetConfigPath, "network configuration file (Kubernetes mode)")
	fs.IntVar(&o.SubnetLeaseRenewMargin, "subnet-lease-renew-margin", o.SubnetLeaseRenewMargin, "renew the etcd lease this many minutes before it expires (1..1439)")
	fs.BoolVar(&o.IPMasq, "ip-masq", o.IPMasq, "masquerade traffic leaving the cluster network")
	fs.BoolVar(&o.IPMasqFullyRandomDisable, "ip-masq-fully-random-disable", o.IPMasqFullyRandomDisable, "do not use --random-fully in the masquerade rules")
	fs.IntVar(&o.IPTablesResync, "iptables-resync", o.IPTablesResync, "seconds between checks of the firewall rules")
	fs.DurationVar(&o.PeerProbeInterval, "peer-probe-interval", o.PeerProbeInterval, "probe each peer through the overlay this often (0: never); flanneld extension")
	fs.Float64Var(&o.PeerProbeMaxRate, "peer-probe-max-rate", o.PeerProbeMaxRate, "at most this many peer probes a second in total; flanneld extension")
	fs.BoolVar(&o.IPTablesForwardRules, "iptables-forward-rules", o.IPTablesForwardRules, "add FORWARD accept rules for the cluster network")
	fs.BoolVar(&o.IPBlackholeRoute, "ip-blackhole-route", o.IPBlackholeRoute, "add a blackhole route for this node's subnet")
	fs.StringVar(&o.HealthzIP, "healthz-ip", o.HealthzIP, "address of the /healthz and /readyz listener")
	fs.IntVar(&o.HealthzPort, "healthz-port", o.HealthzPort, "port of the /healthz and /readyz listener (0: off)")
	fs.BoolVar(&o.SetNodeNetworkUnavailable, "set-node-network-unavailable", o.SetNodeNetworkUnavailable, "set the Node's NetworkUnavailable condition to False once the network is up")
	showVersion := fs.Bool("version", false, "print the version and exit")

	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	fs.AddGoFlagSet(klogFlags)
	return fs, showVersion
}

// parseFlags parses the command line, then the environment.
func parseFlags(fs *pflag.FlagSet, args, environ []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return setFromEnv(fs, environ)
}

// setFromEnv sets each flag not given on the command line from its
// FLANNELD_<NAME> variable, unless that is empty. Repeatable flags take a
// comma-separated list.
func setFromEnv(fs *pflag.FlagSet, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Annotations[noEnv] != nil {
			return
		}
		key := "FLANNELD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := env[key]
		if !ok || v == "" {
			return // upstream ignores empty variables too
		}
		values := []string{v}
		if f.Value.Type() == "stringArray" {
			values = strings.Split(v, ",")
		}
		for _, one := range values {
			if err := fs.Set(f.Name, one); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", key, v, err))
			}
		}
	})
	return errors.Join(errs...)
}
