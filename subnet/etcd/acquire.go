package etcd

import (
	"context"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// acquire writes this host's lease key (one key naming the subnets of every
// enabled family) in a transaction, so that two hosts can never hold the
// same subnet. A transaction that loses a race is tried again with a new
// choice.
func (s *Source) acquire(ctx context.Context, attrs subnet.LeaseAttrs, previous, previous6 netip.Prefix) (subnet.Lease, error) {
	value, err := marshalValue(attrs)
	if err != nil {
		return subnet.Lease{}, err
	}
	for attempt := 1; ; attempt++ {
		all, revs, rev, err := s.listAll(ctx)
		if err != nil {
			return subnet.Lease{}, err
		}
		ch, err := chooseSubnet(s.net, all, hostIPs{v4: attrs.PublicIP, v6: attrs.PublicIPv6}, previous, previous6, s.rng)
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("%s: %w", s.cfg.Prefix, err)
		}
		w, err := s.leaseWrite(ctx, ch, revs, rev, value)
		if err != nil {
			return subnet.Lease{}, err
		}
		if s.beforeCommit != nil {
			s.beforeCommit(attempt)
		}
		ok, err := s.commit(ctx, w)
		if err != nil {
			return subnet.Lease{}, err
		}
		if !ok {
			if w.granted {
				// Only a lease granted for this attempt is ours to drop:
				// the key's own lease still holds this host's live key.
				_, _ = s.cli.Revoke(ctx, w.id)
			}
			klog.InfoS("Lease raced with another host; choosing again", "key", w.name, "attempt", attempt)
			continue
		}
		return s.acquired(ch, w, attrs, previous, previous6), nil
	}
}

// leaseWrite is one attempt's transaction: put the lease key, bound to an
// etcd lease, if nobody changed it meanwhile; delete this host's stale keys.
type leaseWrite struct {
	name, key string
	id        clientv3.LeaseID // 0 for a reservation
	granted   bool             // id was granted for this attempt, not the key's own
	conds     []clientv3.Cmp
	ops       []clientv3.Op
}

// leaseWrite prepares the transaction that takes ch: a new key if none
// exists yet, else the key taken back (if it is unchanged), keeping the
// key's live etcd lease or granting a new one (none for a reservation).
// The transaction also requires that no lease key was written since the
// list at revision rev that ch was chosen from: a key names the subnets of
// both families, so two hosts choosing at once could otherwise both take
// one IPv4 subnet with two IPv6 ones.
func (s *Source) leaseWrite(ctx context.Context, ch choice, revs map[string]int64, rev int64, value []byte) (leaseWrite, error) {
	w := leaseWrite{name: keyName(ch.subnet, ch.ipv6Subnet)}
	cond := clientv3.Compare(clientv3.CreateRevision(s.subnetsKey()+w.name), "=", 0)
	if ch.reuse != nil {
		w.name = ch.reuse.lease.Name
		cond = clientv3.Compare(clientv3.ModRevision(s.subnetsKey()+w.name), "=", revs[w.name])
	}
	w.key = s.subnetsKey() + w.name
	if ch.reuse != nil && !ch.reuse.reserved {
		// Keep the etcd lease the key already has, if it is alive.
		prev := clientv3.LeaseID(ch.reuse.leaseID)
		if _, err := s.cli.KeepAliveOnce(ctx, prev); err == nil {
			w.id = prev
		}
	}
	if w.id == 0 && (ch.reuse == nil || !ch.reuse.reserved) {
		var grant *clientv3.LeaseGrantResponse
		err := retry(ctx, "grant lease", func(ctx context.Context) (err error) {
			grant, err = s.cli.Grant(ctx, int64(s.cfg.TTL.Seconds()))
			return err
		})
		if err != nil {
			return w, err
		}
		w.id, w.granted = grant.ID, true
	}
	var opts []clientv3.OpOption
	if w.id != 0 {
		opts = append(opts, clientv3.WithLease(w.id))
	}
	unchanged := clientv3.Compare(clientv3.ModRevision(s.subnetsKey()), "<", rev+1).WithPrefix()
	w.conds = []clientv3.Cmp{cond, unchanged}
	w.ops = []clientv3.Op{clientv3.OpPut(w.key, string(value), opts...)}
	for _, e := range ch.stale {
		staleKey := s.subnetsKey() + e.lease.Name
		klog.InfoS("Deleting this host's lease that does not fit the network configuration",
			"key", staleKey, "network", ip.Text(s.net.Network), "subnetLen", s.net.SubnetLen,
			"ipv6Network", ip.Text(s.net.IPv6Network), "ipv6SubnetLen", s.net.IPv6SubnetLen)
		w.conds = append(w.conds, clientv3.Compare(clientv3.ModRevision(staleKey), "=", revs[e.lease.Name]))
		w.ops = append(w.ops, clientv3.OpDelete(staleKey))
	}
	return w, nil
}

// commit sends the transaction and reports whether it took effect.
func (s *Source) commit(ctx context.Context, w leaseWrite) (bool, error) {
	var ok bool
	err := retry(ctx, "write lease", func(ctx context.Context) error {
		resp, err := s.cli.Txn(ctx).If(w.conds...).Then(w.ops...).Commit()
		if err == nil {
			ok = resp.Succeeded
		}
		return err
	})
	return ok, err
}

// acquired records the lease written and says how it was chosen.
func (s *Source) acquired(ch choice, w leaseWrite, attrs subnet.LeaseAttrs, previous, previous6 netip.Prefix) subnet.Lease {
	l := subnet.Lease{Name: w.name, Subnet: ch.subnet, IPv6Subnet: ch.ipv6Subnet, Attrs: attrs}
	s.mu.Lock()
	s.own, s.ownKey, s.leaseID = l, w.key, w.id
	if s.peers != nil {
		s.peers.Delete(w.name) // listed before it was known to be ours
	}
	s.mu.Unlock()
	how := "new"
	switch {
	case ch.reuse != nil && ch.reuse.reserved:
		how = "reservation"
	case ch.reuse != nil:
		how = "renewed"
	case (ch.subnet.IsValid() || ch.ipv6Subnet.IsValid()) &&
		(!ch.subnet.IsValid() || ch.subnet == previous) && (!ch.ipv6Subnet.IsValid() || ch.ipv6Subnet == previous6):
		how = "previous subnet" // from the subnet file, or held before the key was lost
	}
	klog.InfoS("Acquired etcd lease", "key", w.key, "subnet", ip.Text(ch.subnet), "ipv6Subnet", ip.Text(ch.ipv6Subnet), "how", how, "ttl", s.cfg.TTL)
	s.reportExpiry(w.id)
	return l
}
