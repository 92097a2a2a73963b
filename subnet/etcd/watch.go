package etcd

import (
	"context"
	"errors"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/subnet"
)

// Start implements subnet.Source: it lists the leases, then watches them
// from that revision, listing again after a compaction or a broken watch.
func (s *Source) Start(ctx context.Context, peers *subnet.Peers) error {
	if s.net == nil {
		return errors.New("etcd source: NetworkConfig must be read first")
	}
	s.peers = peers
	go s.watchLeases(ctx, peers)
	return nil
}

func (s *Source) watchLeases(ctx context.Context, peers *subnet.Peers) {
	known := map[string]bool{}
	for ctx.Err() == nil {
		var rev int64
		err := retry(ctx, "list leases", func(ctx context.Context) error {
			resp, err := s.cli.Get(ctx, s.subnetsKey(), clientv3.WithPrefix())
			if err != nil {
				return err
			}
			seen := map[string]bool{}
			for _, kv := range resp.Kvs {
				name := strings.TrimPrefix(string(kv.Key), s.subnetsKey())
				seen[name] = true
				s.applyPut(name, kv.Value, kv.CreateRevision, peers)
			}
			for name := range known {
				if !seen[name] {
					peers.Delete(name)
				}
			}
			known = seen
			rev = resp.Header.Revision
			return nil
		})
		if err != nil {
			return
		}
		peers.MarkSynced()
		if s.cfg.OnSynced != nil {
			s.cfg.OnSynced()
		}
		select {
		case <-s.synced:
		default:
			close(s.synced)
			klog.InfoS("Lease list synced", "peers", peers.Len(), "revision", rev)
		}
		s.watchFrom(ctx, rev+1, peers, known)
		if ctx.Err() == nil {
			time.Sleep(time.Second)
		}
	}
}

// watchFrom applies lease events until the watch breaks.
func (s *Source) watchFrom(ctx context.Context, rev int64, peers *subnet.Peers, known map[string]bool) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range s.cli.Watch(wctx, s.subnetsKey(), clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if err := resp.Err(); err != nil {
			if resp.CompactRevision != 0 {
				klog.InfoS("Lease watch compacted; listing again", "revision", resp.CompactRevision)
			} else {
				klog.ErrorS(err, "Lease watch failed; listing again")
			}
			return
		}
		for _, ev := range resp.Events {
			name := strings.TrimPrefix(string(ev.Kv.Key), s.subnetsKey())
			switch ev.Type {
			case clientv3.EventTypePut:
				s.watchEvent(map[bool]string{true: "add", false: "update"}[ev.IsCreate()])
				known[name] = true
				s.applyPut(name, ev.Kv.Value, ev.Kv.CreateRevision, peers)
			case clientv3.EventTypeDelete:
				s.watchEvent("delete")
				delete(known, name)
				s.applyDelete(name, peers)
			}
		}
	}
}

func (s *Source) watchEvent(t string) {
	if s.cfg.OnWatchEvent != nil {
		s.cfg.OnWatchEvent(t)
	}
}

// isOwnLocked reports whether name is this host's lease key; s.mu is held.
func (s *Source) isOwnLocked(name string) bool {
	return s.ownKey != "" && name == strings.TrimPrefix(s.ownKey, s.subnetsKey())
}

// applyPut and applyDelete hold s.mu while they check the key's owner and
// update peers, so that acquire (which takes a key and removes it from
// peers under s.mu) cannot interleave: a watch event for the key being
// acquired is applied either entirely before, or entirely after.
func (s *Source) applyPut(name string, data []byte, created int64, peers *subnet.Peers) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isOwnLocked(name) {
		return
	}
	if len(name) > subnet.MaxNameBytes {
		// Not a lease key; not even worth a peer's name in logs and maps.
		klog.InfoS("Ignoring a key under the subnets prefix that is too long to be a lease", "key", subnet.Quote(name), "bytes", len(name))
		return
	}
	l, err := leaseFromKV(name, data, created)
	if err != nil {
		// Known but unusable: the sync loop reports it and programs none of it.
		l = subnet.Lease{Name: name, Created: created, Err: &subnet.PeerError{Reason: subnet.SkipMalformed, Err: err}}
	}
	peers.Set(l)
}

func (s *Source) applyDelete(name string, peers *subnet.Peers) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isOwnLocked(name) {
		select {
		case s.lost <- struct{}{}:
		default:
		}
		return
	}
	peers.Delete(name)
}

func (s *Source) waitSynced(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.synced:
		return nil
	}
}
