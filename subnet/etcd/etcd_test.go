package etcd

// Tests of the Source against a real etcd (etcdserver_test.go); they skip
// when not root or when etcd is not installed.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

const (
	prefix    = "/coreos.com/network"
	configKey = prefix + "/config"
	leaseKeys = prefix + "/subnets/"
)

// newSource makes a Source on endpoint, closed when the test ends.
func newSource(t *testing.T, endpoint string, cfg Config) *Source {
	t.Helper()
	cfg.Endpoints = []string{endpoint}
	if cfg.Prefix == "" {
		cfg.Prefix = prefix
	}
	if cfg.RenewMargin == 0 {
		cfg.RenewMargin = time.Hour
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// vxlanAttrs are the attributes a vxlan host with public IP a advertises.
func vxlanAttrs(a netip.Addr) subnet.LeaseAttrs {
	b := a.As4()
	return subnet.LeaseAttrs{
		PublicIP:    a,
		BackendType: "vxlan",
		BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"0a:58:c0:a8:%02x:%02x"}`, b[2], b[3])),
	}
}

// join reads the config and acquires a lease for public IP a.
func join(t *testing.T, ctx context.Context, s *Source, a netip.Addr) subnet.Lease {
	t.Helper()
	s.SetPublicIP(a)
	if _, err := s.NetworkConfig(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := s.AcquireLease(ctx, vxlanAttrs(a))
	if err != nil {
		t.Fatalf("AcquireLease for %s: %v", a, err)
	}
	return l
}

func TestSourceConfigMissing(t *testing.T) {
	e := startEtcd(t)
	s := newSource(t, e.adminProxy.addr(), Config{})
	_, err := s.NetworkConfig(testContext(t))
	if err == nil {
		t.Fatal("NetworkConfig succeeded without a config key")
	}
	for _, want := range []string{configKey, "does not exist", "etcdctl put " + configKey, `"Network"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// Another prefix is named in the hint.
	s = newSource(t, e.adminProxy.addr(), Config{Prefix: "/example.org/net/"})
	if _, err := s.NetworkConfig(testContext(t)); err == nil || !strings.Contains(err.Error(), "etcdctl put /example.org/net/config") {
		t.Errorf("with prefix /example.org/net/: %v", err)
	}
}

func TestSourceBadConfig(t *testing.T) {
	e := startEtcd(t)
	for _, tc := range []struct{ config, want string }{
		{`{"Network":"10.244.0.0/16",}`, "line 1"},
		{`{"Backend":{"Type":"vxlan"}}`, "Network"},
		{`{"Network":"10.244.0.0/16","SubnetLen":8}`, "SubnetLen 8 is too short"},
		{`{"Network":"10.244.0.0/16","SubnetLen":31}`, "SubnetLen 31 is too long"},
		{`{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.5"}`, "did you mean 10.244.1.0"},
		{`{"Network":"10.244.0.0/16","SubnetMax":"10.245.0.0"}`, "outside Network"},
		{`{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.2.0"}`, "greater than"},
	} {
		e.put(t, configKey, tc.config)
		s := newSource(t, e.adminProxy.addr(), Config{})
		_, err := s.NetworkConfig(testContext(t))
		if err == nil {
			t.Errorf("config %s accepted", tc.config)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), configKey) {
			t.Errorf("config %s: error %q should name %s and say %q", tc.config, err, configKey, tc.want)
		}
	}
}

// TestSourceAcquireRenewRestart: the lease key has upstream's format and an
// etcd lease of TTL, it is renewed before it expires, and a restarted host
// takes back the same key, subnet and etcd lease.
func TestSourceAcquireRenewRestart(t *testing.T) {
	e := startEtcd(t)
	e.put(t, configKey, defaultConf)
	const ttl = 10 * time.Second
	var mu sync.Mutex
	var expiries []time.Time
	cfg := Config{TTL: ttl, RenewMargin: 7 * time.Second, OnExpiry: func(at time.Time) {
		mu.Lock()
		expiries = append(expiries, at)
		mu.Unlock()
	}}

	ctx1, stop1 := context.WithCancel(testContext(t))
	s1 := newSource(t, e.adminProxy.addr(), cfg)
	start := time.Now()
	l1 := join(t, ctx1, s1, ourIP)
	if !fits(s1.net, l1.Subnet) || l1.Name != keyName(l1.Subnet, netip.Prefix{}) {
		t.Fatalf("lease %+v: not a /24 of 10.244.0.0/16 named after its subnet", l1)
	}
	got := e.get(t, leaseKeys+l1.Name)
	if got == nil {
		t.Fatalf("no key %s", leaseKeys+l1.Name)
	}
	want := `{"PublicIP":"192.168.100.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:c0:a8:64:0b"}}`
	if got.Value != want {
		t.Errorf("value of %s:\n got %s\nwant %s", got.Key, got.Value, want)
	}
	if got.Lease == 0 {
		t.Fatalf("key %s has no etcd lease", got.Key)
	}
	ttlResp, err := e.admin.TimeToLive(testContext(t), got.Lease)
	if err != nil || ttlResp.GrantedTTL != int64(ttl.Seconds()) {
		t.Errorf("etcd lease %x: granted TTL %v (%v), want %v", got.Lease, ttlResp.GrantedTTL, err, ttl.Seconds())
	}

	// Renewed every TTL-RenewMargin = 3 s: alive well past its TTL.
	time.Sleep(time.Until(start.Add(ttl + 3*time.Second)))
	if now := e.get(t, got.Key); now == nil || now.Lease != got.Lease {
		t.Fatalf("after %v (TTL %v) the key is %+v, want it still bound to lease %x", time.Since(start).Round(time.Second), ttl, now, got.Lease)
	}
	mu.Lock()
	n := len(expiries)
	mu.Unlock()
	if n < 4 {
		t.Errorf("OnExpiry was told %d expiry times in %v, want the acquisition and at least 3 renewals", n, time.Since(start).Round(time.Second))
	}

	// Restart: a new Source for the same host takes back the same key and
	// etcd lease, even with another subnet in its subnet file.
	stop1()
	s1.Close()
	// The subnet file names a subnet other than the one l1 happened to get.
	prev := netip.MustParsePrefix("10.244.200.0/24")
	if l1.Subnet == prev {
		prev = netip.MustParsePrefix("10.244.201.0/24")
	}
	envFile := filepath.Join(t.TempDir(), "subnet.env")
	writeEnv(t, envFile, "10.244.0.0/16", ip.FirstAddr(prev).String())
	cfg.SubnetFile = envFile
	s2 := newSource(t, e.adminProxy.addr(), cfg)
	l2 := join(t, testContext(t), s2, ourIP)
	if l2.Name != l1.Name || l2.Subnet != l1.Subnet {
		t.Errorf("after restart: lease %s (%s), want %s (%s)", l2.Name, l2.Subnet, l1.Name, l1.Subnet)
	}
	if now := e.get(t, got.Key); now == nil || now.Lease != got.Lease {
		t.Errorf("after restart the key is %+v, want it still bound to etcd lease %x", now, got.Lease)
	}
	if keys := e.list(t, leaseKeys); len(keys) != 1 {
		t.Errorf("after restart: %d lease keys, want 1: %+v", len(keys), keys)
	}

	// Another host without a lease takes back the subnet of its subnet file.
	s3 := newSource(t, e.adminProxy.addr(), cfg)
	if l3 := join(t, testContext(t), s3, otherIP); l3.Subnet != prev {
		t.Errorf("new host with subnet.env of %s got %s", prev, l3.Subnet)
	}
}

func writeEnv(t *testing.T, path, network, sn string) {
	t.Helper()
	env := subnet.Env{Network: netip.MustParsePrefix(network), Subnet: netip.MustParsePrefix(sn), MTU: 1450}
	if err := subnet.WriteEnvFile(path, env); err != nil {
		t.Fatal(err)
	}
}

// TestSourceLeaseLost: a deleted key or a revoked etcd lease is acquired
// again with the same subnet; a subnet taken meanwhile is a fatal error.
func TestSourceLeaseLost(t *testing.T) {
	e := startEtcd(t)
	e.put(t, configKey, defaultConf)
	cut := e.newProxy(t)
	s := newSource(t, cut.addr(), Config{})
	ctx := testContext(t)
	s.SetPublicIP(ourIP)
	if _, err := s.NetworkConfig(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx, subnet.NewPeers()); err != nil {
		t.Fatal(err)
	}
	l, err := s.AcquireLease(ctx, vxlanAttrs(ourIP))
	if err != nil {
		t.Fatal(err)
	}
	key := leaseKeys + l.Name
	first := e.get(t, key)

	reacquired := func(what string, notLease clientv3.LeaseID) *kv {
		t.Helper()
		var now *kv
		waitUntil(t, "the key again after "+what, 30*time.Second, func() error {
			now = e.get(t, key)
			switch {
			case now == nil:
				return fmt.Errorf("no key %s", key)
			case now.Lease == 0 || now.Lease == notLease:
				return fmt.Errorf("key bound to lease %x", now.Lease)
			case now.Value != first.Value:
				return fmt.Errorf("value %s", now.Value)
			}
			return nil
		})
		return now
	}

	if _, err := e.admin.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	second := reacquired("deleting it", -1)
	if _, err := e.admin.Revoke(ctx, second.Lease); err != nil {
		t.Fatal(err)
	}
	reacquired("revoking its etcd lease", second.Lease)
	select {
	case err := <-s.Errors():
		t.Fatalf("Errors() reported %v", err)
	default:
	}

	// While the host is cut off, its key is deleted and another host takes
	// the subnet: when it is back, it cannot keep its subnet and says so.
	cut.setCut(true)
	if _, err := e.admin.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	e.put(t, key, `{"PublicIP":"192.168.100.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:c0:a8:64:63"}}`)
	time.Sleep(time.Second)
	cut.setCut(false)
	select {
	case err := <-s.Errors():
		if !strings.Contains(err.Error(), "lost subnet "+l.Subnet.String()) {
			t.Errorf("Errors() = %v, want it to say it lost subnet %s", err, l.Subnet)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no error after this host's subnet was taken by another")
	}
}

// TestSourceReservation: a key without an etcd lease is never handed to
// another host, and is taken by the host with its public IP.
func TestSourceReservation(t *testing.T) {
	e := startEtcd(t)
	e.put(t, configKey, `{"Network":"10.10.0.0/22","SubnetLen":24,"Backend":{"Type":"vxlan"}}`) // 10.10.1-3.0/24
	reservedIP := netip.MustParseAddr("192.168.100.50")
	e.put(t, leaseKeys+"10.10.2.0-24", `{"PublicIP":"192.168.100.50"}`)
	ctx := testContext(t)
	var got []string
	for i := range 2 {
		// A previous subnet.env naming the reserved subnet does not help.
		envFile := filepath.Join(t.TempDir(), "subnet.env")
		writeEnv(t, envFile, "10.10.0.0/22", "10.10.2.1/24")
		s := newSource(t, e.adminProxy.addr(), Config{SubnetFile: envFile})
		l := join(t, ctx, s, netip.AddrFrom4([4]byte{192, 168, 100, byte(11 + i)}))
		got = append(got, l.Subnet.String())
	}
	sort.Strings(got)
	if want := []string{"10.10.1.0/24", "10.10.3.0/24"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("two hosts got %v, want %v around the reservation", got, want)
	}
	s := newSource(t, e.adminProxy.addr(), Config{})
	s.SetPublicIP(netip.MustParseAddr("192.168.100.13"))
	if _, err := s.NetworkConfig(ctx); err != nil {
		t.Fatal(err)
	}
	if l, err := s.AcquireLease(ctx, vxlanAttrs(netip.MustParseAddr("192.168.100.13"))); !errors.Is(err, ErrOutOfSubnets) {
		t.Errorf("third host: lease %v, err %v; want ErrOutOfSubnets", l.Subnet, err)
	} else if !strings.Contains(err.Error(), "out of subnets") {
		t.Errorf("unclear error: %v", err)
	}

	// The host the reservation is for takes it, and it stays a reservation.
	s = newSource(t, e.adminProxy.addr(), Config{})
	if l := join(t, ctx, s, reservedIP); l.Subnet != netip.MustParsePrefix("10.10.2.0/24") {
		t.Errorf("reserved host got %s, want its reservation 10.10.2.0/24", l.Subnet)
	}
	k := e.get(t, leaseKeys+"10.10.2.0-24")
	if k == nil || k.Lease != 0 || !strings.Contains(k.Value, `"BackendType":"vxlan"`) {
		t.Errorf("reservation after its host joined: %+v; want its attributes, still without an etcd lease", k)
	}
}

// TestSourceWatch: peers follow puts and deletes, also across a
// compaction, and after the watch resumed at a compacted revision (the
// Source's connection was cut meanwhile) the leases are listed again.
func TestSourceWatch(t *testing.T) {
	e := startEtcd(t)
	e.put(t, configKey, defaultConf)
	cut := e.newProxy(t)
	s := newSource(t, cut.addr(), Config{})
	ctx := testContext(t)
	e.put(t, leaseKeys+"10.244.1.0-24", string(mustMarshal(t, vxlanAttrs(netip.MustParseAddr("192.168.100.21")))))
	e.put(t, leaseKeys+"10.244.2.0-24", `{"PublicIP":"192.168.100.50"}`) // a reservation is a peer too
	e.put(t, leaseKeys+"garbage", `{}`)                                  // skipped
	peers := subnet.NewPeers()
	view := watchPeers(ctx, peers)
	if _, err := s.NetworkConfig(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx, peers); err != nil {
		t.Fatal(err)
	}
	view.waitFor(t, "10.244.1.0-24", "10.244.2.0-24")
	own := join(t, ctx, s, ourIP)

	putPeer := func(name string, host byte) {
		e.put(t, leaseKeys+name, string(mustMarshal(t, vxlanAttrs(netip.AddrFrom4([4]byte{192, 168, 100, host})))))
	}
	putPeer("10.244.3.0-24", 23)
	view.waitFor(t, "10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24")

	// Compacted while watching: the watch goes on.
	compact(t, e)
	if _, err := e.admin.Delete(ctx, leaseKeys+"10.244.2.0-24"); err != nil {
		t.Fatal(err)
	}
	putPeer("10.244.4.0-24", 24)
	view.waitFor(t, "10.244.1.0-24", "10.244.3.0-24", "10.244.4.0-24")

	// Cut off, the Source misses changes that are then compacted away.
	cut.setCut(true)
	if _, err := e.admin.Delete(ctx, leaseKeys+"10.244.1.0-24"); err != nil {
		t.Fatal(err)
	}
	putPeer("10.244.5.0-24", 25)
	putPeer("10.244.3.0-24", 33) // changed attributes
	compact(t, e)
	time.Sleep(time.Second)
	cut.setCut(false)
	view.waitFor(t, "10.244.3.0-24", "10.244.4.0-24", "10.244.5.0-24")
	if l := view.get("10.244.3.0-24"); l.Attrs.PublicIP != netip.MustParseAddr("192.168.100.33") {
		t.Errorf("peer 10.244.3.0-24 has public IP %s after the relist, want 192.168.100.33", l.Attrs.PublicIP)
	}
	putPeer("10.244.6.0-24", 26)
	view.waitFor(t, "10.244.3.0-24", "10.244.4.0-24", "10.244.5.0-24", "10.244.6.0-24")
	if view.has(own.Name) {
		t.Errorf("this host's own lease %s is among the peers", own.Name)
	}
}

func compact(t *testing.T, e *testEtcd) {
	t.Helper()
	ctx := testContext(t)
	resp, err := e.admin.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact at revision %d: %v", resp.Header.Revision, err)
	}
}

func mustMarshal(t *testing.T, a subnet.LeaseAttrs) []byte {
	t.Helper()
	b, err := marshalValue(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// peerView follows a Peers set the way the sync loop does.
type peerView struct {
	mu sync.Mutex
	m  map[string]subnet.Lease
}

func watchPeers(ctx context.Context, p *subnet.Peers) *peerView {
	v := &peerView{m: map[string]subnet.Lease{}}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-p.Changed():
			}
			changed, _ := p.Drain()
			v.mu.Lock()
			for name, l := range changed {
				if l == nil || l.Err != nil { // deleted, or known but unusable
					delete(v.m, name)
				} else {
					v.m[name] = *l
				}
			}
			v.mu.Unlock()
		}
	}()
	return v
}

func (v *peerView) names() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for name := range v.m {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func (v *peerView) get(name string) subnet.Lease {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.m[name]
}

func (v *peerView) has(name string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.m[name]
	return ok
}

// waitFor waits until the peers are exactly names.
func (v *peerView) waitFor(t *testing.T, names ...string) {
	t.Helper()
	sort.Strings(names)
	waitUntil(t, fmt.Sprintf("peers %v", names), 60*time.Second, func() error {
		if got := v.names(); fmt.Sprint(got) != fmt.Sprint(names) {
			return fmt.Errorf("peers are %v", got)
		}
		return nil
	})
}

// TestSourceNetworkChanged: after the network configuration changed, a
// host's old lease is not taken back; it is replaced in one transaction.
func TestSourceNetworkChanged(t *testing.T) {
	e := startEtcd(t)
	e.put(t, configKey, defaultConf)
	ctx := testContext(t)
	old := join(t, ctx, newSource(t, e.adminProxy.addr(), Config{}), ourIP)
	e.put(t, configKey, `{"Network":"10.50.0.0/16","Backend":{"Type":"vxlan"}}`)
	l := join(t, ctx, newSource(t, e.adminProxy.addr(), Config{}), ourIP)
	if !netip.MustParsePrefix("10.50.0.0/16").Contains(l.Subnet.Addr()) {
		t.Errorf("after the network changed the host got %s", l.Subnet)
	}
	var names []string
	for _, k := range e.list(t, leaseKeys) {
		names = append(names, strings.TrimPrefix(k.Key, leaseKeys))
	}
	if fmt.Sprint(names) != fmt.Sprint([]string{l.Name}) {
		t.Errorf("lease keys %v, want only %s (the old %s deleted)", names, l.Name, old.Name)
	}
}

// TestSourceOwnLeaseNeverAPeer: the watch event of this host's own key,
// which races with AcquireLease, never makes the host its own peer (a
// regression test: it did about one time in ten).
func TestSourceOwnLeaseNeverAPeer(t *testing.T) {
	e := startEtcd(t)
	for i := range 20 {
		p := fmt.Sprintf("/race%d", i)
		e.put(t, p+"/config", defaultConf)
		s := newSource(t, e.adminProxy.addr(), Config{Prefix: p})
		ctx := testContext(t)
		peers := subnet.NewPeers()
		s.SetPublicIP(ourIP)
		if _, err := s.NetworkConfig(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(ctx, peers); err != nil {
			t.Fatal(err)
		}
		if err := s.waitSynced(ctx); err != nil {
			t.Fatal(err)
		}
		l, err := s.AcquireLease(ctx, vxlanAttrs(ourIP))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if changed, _ := peers.Drain(); changed[l.Name] != nil {
			t.Fatalf("attempt %d: this host's lease %s is among its peers", i+1, l.Name)
		}
	}
}

// TestSourceAuth: with etcd's user authentication on, --etcd-username and
// --etcd-password work, wrong credentials are an error at once, and an
// unreachable etcd is waited for (also with credentials).
func TestSourceAuth(t *testing.T) {
	e := startEtcd(t)
	e.put(t, configKey, defaultConf)
	ctx := testContext(t)
	steps := []func() error{
		func() error { _, err := e.admin.RoleAdd(ctx, "root"); return err },
		func() error { _, err := e.admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := e.admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := e.admin.RoleAdd(ctx, "flannel"); return err },
		func() error {
			_, err := e.admin.RoleGrantPermission(ctx, "flannel", prefix+"/", clientv3.GetPrefixRangeEnd(prefix+"/"),
				clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := e.admin.UserAdd(ctx, "flanneld", "s3cret"); return err },
		func() error { _, err := e.admin.UserGrantRole(ctx, "flanneld", "flannel"); return err },
		func() error { _, err := e.admin.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i+1, err)
		}
	}

	s := newSource(t, e.adminProxy.addr(), Config{Username: "flanneld", Password: "s3cret"})
	if l := join(t, ctx, s, ourIP); !l.Subnet.IsValid() {
		t.Fatalf("lease %+v", l)
	}

	for _, tc := range []struct{ user, password, want string }{
		{"flanneld", "wrong", "authentication failed"},
		{"", "", "user name is empty"},
	} {
		// A permanent error is returned, not retried until the context
		// ends (which would give "context deadline exceeded").
		caseCtx, cancel := context.WithTimeout(ctx, time.Minute)
		var err error
		if s, err = New(Config{Endpoints: []string{e.adminProxy.addr()}, Prefix: prefix, Username: tc.user, Password: tc.password}); err == nil {
			_, err = s.NetworkConfig(caseCtx)
			s.Close()
		}
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("user %q password %q: %v, want an error saying %q", tc.user, tc.password, err, tc.want)
		}
	}

	// etcd unreachable at start: the Source waits for it.
	cut := e.newProxy(t)
	cut.setCut(true)
	s, err := New(Config{Endpoints: []string{cut.addr()}, Prefix: prefix, Username: "flanneld", Password: "s3cret"})
	if err != nil {
		t.Fatalf("New with credentials while etcd is unreachable: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	done := make(chan error, 1)
	go func() {
		_, err := s.NetworkConfig(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("NetworkConfig returned %v while etcd was unreachable", err)
	case <-time.After(8 * time.Second):
	}
	cut.setCut(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("NetworkConfig after etcd became reachable: %v", err)
		}
		s.SetPublicIP(otherIP)
		if _, err := s.AcquireLease(ctx, vxlanAttrs(otherIP)); err != nil {
			t.Errorf("AcquireLease after etcd became reachable: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("NetworkConfig still waiting 60 s after etcd became reachable")
	}
}

// TestSourceRaceKeepsOwnLease: when the transaction that takes back this
// host's key (keeping its live etcd lease) loses a race, the key's lease
// is not revoked: that would delete the host's own live key, and every
// peer would prune its routes until it acquired again. (On 4308a5a the
// failed attempt revoked it.)
func TestSourceRaceKeepsOwnLease(t *testing.T) {
	e := startEtcd(t)
	e.put(t, configKey, defaultConf)
	ctx := testContext(t)
	s1 := newSource(t, e.adminProxy.addr(), Config{})
	l1 := join(t, ctx, s1, ourIP)
	key := leaseKeys + l1.Name
	before := e.get(t, key)
	s1.Close()

	// A restarted host takes its key back; just before its transaction,
	// something rewrites the key (same value, same lease), so the
	// transaction's ModRevision comparison fails once.
	s2 := newSource(t, e.adminProxy.addr(), Config{})
	s2.beforeCommit = func(attempt int) {
		if attempt == 1 {
			e.put(t, key, before.Value, clientv3.WithLease(before.Lease))
		}
	}
	l2 := join(t, ctx, s2, ourIP)
	if l2.Name != l1.Name {
		t.Errorf("after the race: lease %s, want %s back", l2.Name, l1.Name)
	}
	ttl, err := e.admin.TimeToLive(ctx, before.Lease)
	if err != nil || ttl.TTL <= 0 {
		t.Fatalf("the key's own etcd lease %x was revoked by the failed attempt (TTL %v, %v)", before.Lease, ttl.TTL, err)
	}
	// The key was never deleted meanwhile: replay its history.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for resp := range e.admin.Watch(wctx, key, clientv3.WithRev(before.ModRevision+1)) {
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				t.Fatalf("the host's live key %s was deleted during the race", key)
			}
		}
	}
}

// TestSourceDualStackRaceOneSubnetEach: a lease key names the subnets of
// both families, so two dual-stack hosts choosing at once (here: both
// taking back the IPv4 subnet of their subnet.env, with other IPv6 ones)
// would both commit one IPv4 subnet under two key names; the transaction
// also requires that no lease key changed since the list it chose from.
// (On 4308a5a both hosts got 10.244.5.0/24.)
func TestSourceDualStackRaceOneSubnetEach(t *testing.T) {
	e := startEtcd(t)
	e.put(t, configKey, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	ctx := testContext(t)
	host := func(v4, v6 string, envV6 string) (*Source, subnet.LeaseAttrs) {
		envFile := filepath.Join(t.TempDir(), "subnet.env")
		env := subnet.Env{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.5.1/24"),
			IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"), IPv6Subnet: netip.MustParsePrefix(envV6), MTU: 1450}
		if err := subnet.WriteEnvFile(envFile, env); err != nil {
			t.Fatal(err)
		}
		s := newSource(t, e.adminProxy.addr(), Config{SubnetFile: envFile})
		attrs := vxlanAttrs(netip.MustParseAddr(v4))
		attrs.PublicIPv6 = netip.MustParseAddr(v6)
		attrs.BackendV6Data = attrs.BackendData
		s.SetPublicIPs(attrs.PublicIP, attrs.PublicIPv6)
		if _, err := s.NetworkConfig(ctx); err != nil {
			t.Fatal(err)
		}
		return s, attrs
	}
	a, attrsA := host("192.168.100.11", "fd00:100::11", "fd00:10:244:a::1/64")
	b, attrsB := host("192.168.100.12", "fd00:100::12", "fd00:10:244:b::1/64")
	var lb subnet.Lease
	a.beforeCommit = func(attempt int) {
		if attempt == 1 { // b commits between a's list and a's transaction
			var err error
			if lb, err = b.AcquireLease(ctx, attrsB); err != nil {
				t.Error(err)
			}
		}
	}
	la, err := a.AcquireLease(ctx, attrsA)
	if err != nil {
		t.Fatal(err)
	}
	if la.Subnet == lb.Subnet || la.IPv6Subnet == lb.IPv6Subnet {
		t.Fatalf("two hosts hold one subnet: %s %s and %s %s", la.Subnet, la.IPv6Subnet, lb.Subnet, lb.IPv6Subnet)
	}
	if lb.Subnet != netip.MustParsePrefix("10.244.5.0/24") {
		t.Errorf("the first to commit got %s, want its previous 10.244.5.0/24", lb.Subnet)
	}
}
