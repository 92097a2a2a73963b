package etcd

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flanneld/flanneld/subnet"
)

// Snapshot is every lease in etcd, read once without writing anything
// (for `flanneld diagnose`).
type Snapshot struct {
	// Own is the lease holding this host's public IP (or public IPv6
	// address, for an IPv6-only host or lease), nil if none.
	Own *subnet.Lease
	// Peers are the other leases, sorted by name; Skipped the keys whose
	// value cannot be read, with why.
	Peers   []subnet.Lease
	Skipped map[string]error
}

// ListLeases reads all leases once. The network configuration must have
// been read (NetworkConfig) and the public IP set (SetPublicIP, and
// SetPublicIPv6 for an IPv6-only host).
func (s *Source) ListLeases(ctx context.Context) (Snapshot, error) {
	snap := Snapshot{Skipped: map[string]error{}}
	resp, err := s.cli.Get(ctx, s.subnetsKey(), clientv3.WithPrefix())
	if err != nil {
		return snap, fmt.Errorf("list leases under %s: %w", s.subnetsKey(), err)
	}
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), s.subnetsKey())
		l, err := leaseFromKV(name, kv.Value, kv.CreateRevision)
		switch {
		case err != nil:
			snap.Skipped[name] = err
		case s.host().owns(l.Attrs) && snap.Own == nil:
			own := l
			snap.Own = &own
		default:
			snap.Peers = append(snap.Peers, l)
		}
	}
	slices.SortFunc(snap.Peers, func(a, b subnet.Lease) int { return strings.Compare(a.Name, b.Name) })
	return snap, nil
}

// PublicIP is the address this host's lease is found by.
func (s *Source) PublicIP() netip.Addr { return s.cfg.PublicIP }
