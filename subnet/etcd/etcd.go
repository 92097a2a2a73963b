package etcd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/subnet"
)

// DefaultTTL is how long a lease lives without renewal, as upstream.
const DefaultTTL = 24 * time.Hour

// reconnectMaxDelay bounds the wait between attempts to reconnect to etcd.
const reconnectMaxDelay = 3 * time.Second

// Config configures the etcd lease source.
type Config struct {
	Endpoints          []string
	Prefix             string
	KeyFile, CertFile  string
	CAFile             string
	Username, Password string
	// RenewMargin is how long before expiry the lease is renewed.
	RenewMargin time.Duration
	// TTL is the lease's time to live (DefaultTTL when zero).
	TTL time.Duration
	// SubnetFile is the previous subnet.env: its subnets (FLANNEL_SUBNET,
	// FLANNEL_IPV6_SUBNET) are taken back when still free.
	SubnetFile string
	// PublicIP finds this host's existing lease; PublicIPv6 finds it when
	// the host or the lease has no IPv4 public IP (IPv6-only).
	PublicIP   netip.Addr
	PublicIPv6 netip.Addr
	// OnExpiry, if set, is told the lease's expiry time whenever it changes.
	OnExpiry func(time.Time)
	// OnWatchEvent, if set, is called for every lease event ("add",
	// "update", "delete"); OnSynced after every complete list.
	OnWatchEvent func(eventType string)
	OnSynced     func()
}

// Source is the etcd lease source.
type Source struct {
	cfg Config
	cc  clientv3.Config
	cli *clientv3.Client // nil until connect when credentials are given
	net *subnet.Config
	rng *rand.Rand

	synced chan struct{} // closed after the first list of leases
	peers  *subnet.Peers

	mu      sync.Mutex
	own     subnet.Lease
	ownKey  string
	leaseID clientv3.LeaseID
	lost    chan struct{} // signalled when this host's key is deleted
	errs    chan error

	// beforeCommit, if set (by tests), runs before each acquire
	// transaction is sent.
	beforeCommit func(attempt int)
}

var (
	_ subnet.Source         = (*Source)(nil)
	_ subnet.PublicIPSetter = (*Source)(nil)
	_ subnet.Failer         = (*Source)(nil)
)

// New connects lazily to etcd; nothing is sent until the first request.
func New(cfg Config) (*Source, error) {
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	cfg.Prefix = strings.TrimSuffix(cfg.Prefix, "/")
	cc := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		Username:             cfg.Username,
		Password:             cfg.Password,
		// gRPC's default reconnect backoff grows to 120 s, so after an
		// outage flanneld could notice etcd's return minutes late; cap it.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay},
			MinConnectTimeout: 5 * time.Second,
		})},
	}
	if cfg.KeyFile != "" || cfg.CertFile != "" || cfg.CAFile != "" {
		info := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS configuration: %w", err)
		}
		cc.TLS = tc
	}
	s := &Source{
		cfg:    cfg,
		cc:     cc,
		rng:    rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		synced: make(chan struct{}),
		lost:   make(chan struct{}, 1),
		errs:   make(chan error, 1),
	}
	if cfg.Username == "" && cfg.Password == "" {
		// Without credentials the client connects in the background.
		cli, err := clientv3.New(cc)
		if err != nil {
			return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(cfg.Endpoints, ","), err)
		}
		s.cli = cli
	}
	return s, nil
}

// connect creates the client when New could not: with credentials,
// clientv3.New authenticates at once, so it waits here (with NetworkConfig's
// retries) while etcd is unreachable instead of failing at start.
func (s *Source) connect(ctx context.Context) error {
	s.mu.Lock()
	connected := s.cli != nil
	s.mu.Unlock()
	if connected {
		return nil
	}
	return retry(ctx, "connect", func(ctx context.Context) error {
		// Not bound to ctx (which ends with this attempt): New gives
		// up after DialTimeout by itself.
		cli, err := clientv3.New(s.cc)
		if err != nil {
			if isPermanent(err) {
				return permanentError{fmt.Errorf("etcd refused the credentials of user %q: %w", s.cfg.Username, err)}
			}
			return fmt.Errorf("etcd client for %s: %w", strings.Join(s.cfg.Endpoints, ","), err)
		}
		s.mu.Lock()
		s.cli = cli
		s.mu.Unlock()
		return nil
	})
}

// SetPublicIP sets the address this host's existing lease is found by; it
// must be called before PreviousAttrs and AcquireLease.
func (s *Source) SetPublicIP(a netip.Addr) { s.cfg.PublicIP = a }

// SetPublicIPv6 sets the IPv6 address this host's existing lease is found
// by when it has no IPv4 public IP (IPv6-only); like SetPublicIP, it must be
// called before PreviousAttrs. AcquireLease uses the public IPs of its
// attributes.
func (s *Source) SetPublicIPv6(a netip.Addr) { s.cfg.PublicIPv6 = a }

// SetPublicIPs implements subnet.PublicIPSetter: SetPublicIP and
// SetPublicIPv6 at once.
func (s *Source) SetPublicIPs(v4, v6 netip.Addr) { s.SetPublicIP(v4); s.SetPublicIPv6(v6) }

func (s *Source) host() hostIPs { return hostIPs{v4: s.cfg.PublicIP, v6: s.cfg.PublicIPv6} }

// Close closes the etcd client.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cli == nil {
		return nil
	}
	return s.cli.Close()
}

// Errors reports a failure the source cannot recover from (this host's
// subnet was taken by another host while its lease was lost).
func (s *Source) Errors() <-chan error { return s.errs }

func (s *Source) configKey() string  { return s.cfg.Prefix + "/config" }
func (s *Source) subnetsKey() string { return s.cfg.Prefix + "/subnets/" }

// retry calls f until it succeeds or ctx ends, with capped backoff,
// logging at most every 30 s while etcd is unreachable.
func retry(ctx context.Context, what string, f func(ctx context.Context) error) error {
	delay := 250 * time.Millisecond
	var lastLog time.Time
	for {
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f(callCtx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return perm.error
		}
		if time.Since(lastLog) >= 30*time.Second {
			klog.ErrorS(err, "etcd request failed; retrying", "request", what)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// permanentError stops retry.
type permanentError struct{ error }

func isPermanent(err error) bool {
	return errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrPermissionDenied) ||
		errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrInvalidAuthToken)
}

// NetworkConfig reads and validates <prefix>/config, waiting while etcd is
// unreachable.
func (s *Source) NetworkConfig(ctx context.Context) (*subnet.Config, error) {
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	var data []byte
	err := retry(ctx, "get network config", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, s.configKey())
		if err != nil {
			if isPermanent(err) {
				return permanentError{fmt.Errorf("etcd refused the request: %w", err)}
			}
			return err
		}
		if len(resp.Kvs) == 0 {
			return permanentError{fmt.Errorf("the network configuration %s does not exist in etcd; create it, e.g.: "+
				`etcdctl put %s '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'`, s.configKey(), s.configKey())}
		}
		data = resp.Kvs[0].Value
		return nil
	})
	if err != nil {
		return nil, err
	}
	c, err := subnet.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.configKey(), err)
	}
	if err := c.ApplyEtcdDefaults(); err != nil {
		return nil, fmt.Errorf("%s: %w", s.configKey(), err)
	}
	s.net = c
	return c, nil
}

// PreviousAttrs implements subnet.Source: the attributes of the lease that
// has this host's public IP (or public IPv6 address, see hostIPs).
func (s *Source) PreviousAttrs(ctx context.Context) (*subnet.LeaseAttrs, error) {
	all, _, _, err := s.listAll(ctx)
	if err != nil {
		return nil, err
	}
	for _, e := range all {
		if s.host().owns(e.lease.Attrs) {
			a := e.lease.Attrs
			return &a, nil
		}
	}
	return nil, nil
}

// listAll reads every lease key with its etcd lease and mod revision.
func (s *Source) listAll(ctx context.Context) (all []existing, revs map[string]int64, rev int64, err error) {
	revs = map[string]int64{}
	err = retry(ctx, "list leases", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, s.subnetsKey(), clientv3.WithPrefix())
		if err != nil {
			return err
		}
		all, rev = all[:0], resp.Header.Revision
		for _, kv := range resp.Kvs {
			name := strings.TrimPrefix(string(kv.Key), s.subnetsKey())
			l, err := leaseFromKV(name, kv.Value, kv.CreateRevision)
			if err != nil {
				// Still occupies its subnet, if the key names one.
				if l.Subnet, l.IPv6Subnet, err = parseKeyName(name); err != nil {
					continue
				}
			}
			all = append(all, existing{lease: l, reserved: kv.Lease == 0, leaseID: kv.Lease})
			revs[name] = kv.ModRevision
		}
		return nil
	})
	return all, revs, rev, err
}

// AcquireLease implements subnet.Source.
func (s *Source) AcquireLease(ctx context.Context, attrs subnet.LeaseAttrs) (subnet.Lease, error) {
	if s.net == nil {
		return subnet.Lease{}, errors.New("etcd source: NetworkConfig must be read first")
	}
	var previous, previous6 netip.Prefix
	if env, err := subnet.ReadEnvFile(s.cfg.SubnetFile); err == nil {
		previous, previous6 = env.Subnet.Masked(), env.IPv6Subnet.Masked()
	}
	l, err := s.acquire(ctx, attrs, previous, previous6)
	if err != nil {
		return l, err
	}
	go s.keepLease(ctx)
	return l, nil
}

func (s *Source) reportExpiry(id clientv3.LeaseID) {
	if s.cfg.OnExpiry == nil {
		return
	}
	if id == 0 {
		s.cfg.OnExpiry(time.Time{}) // a reservation does not expire
		return
	}
	s.cfg.OnExpiry(time.Now().Add(s.cfg.TTL))
}

// keepLease renews the lease RenewMargin before it expires and takes the
// subnet back if the key is lost; the datapath is left alone meanwhile.
func (s *Source) keepLease(ctx context.Context) {
	expiry := time.Now().Add(s.cfg.TTL)
	for {
		s.mu.Lock()
		id, own := s.leaseID, s.own
		s.mu.Unlock()
		renewAt := time.Until(expiry.Add(-s.cfg.RenewMargin))
		var timer <-chan time.Time
		if id != 0 {
			timer = time.After(max(renewAt, 0))
		}
		select {
		case <-ctx.Done():
			return
		case <-timer:
			err := retry(ctx, "renew lease", func(ctx context.Context) error {
				_, err := s.cli.KeepAliveOnce(ctx, id)
				if errors.Is(err, rpctypes.ErrLeaseNotFound) {
					return permanentError{err}
				}
				return err
			})
			if err == nil {
				expiry = time.Now().Add(s.cfg.TTL)
				s.reportExpiry(id)
				klog.InfoS("Renewed etcd lease", "key", own.Name, "expires", expiry)
				continue
			}
			if ctx.Err() != nil {
				return
			}
			klog.InfoS("etcd lease expired; acquiring it again", "key", own.Name, "err", err)
		case <-s.lost:
			klog.InfoS("This host's lease key was deleted; acquiring it again", "key", own.Name)
		}
		l, err := s.acquire(ctx, own.Attrs, own.Subnet, own.IPv6Subnet)
		if err != nil {
			if ctx.Err() == nil {
				s.fail(fmt.Errorf("re-acquire lease: %w", err))
			}
			return
		}
		if l.Subnet != own.Subnet {
			s.fail(fmt.Errorf("lost subnet %s to another host while the lease was gone (got %s); restarting", own.Subnet, l.Subnet))
			return
		}
		if l.IPv6Subnet != own.IPv6Subnet {
			s.fail(fmt.Errorf("lost subnet %s to another host while the lease was gone (got %s); restarting", own.IPv6Subnet, l.IPv6Subnet))
			return
		}
		expiry = time.Now().Add(s.cfg.TTL)
	}
}

func (s *Source) fail(err error) {
	select {
	case s.errs <- err:
	default:
	}
}

// ReportReady implements subnet.Source: etcd has no node status.
func (s *Source) ReportReady(context.Context) error { return nil }
