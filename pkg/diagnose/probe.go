package diagnose

import (
	"net/netip"
	"sync"

	"github.com/flanneld/flanneld/backend"
	"github.com/flanneld/flanneld/backend/hostgw"
	"github.com/flanneld/flanneld/ip"
	"github.com/flanneld/flanneld/subnet"
)

// probe pings every programmed peer once in each address family it is
// programmed in, a few at a time.
func (b *builder) probe() {
	if b.in.Probe == nil {
		return
	}
	byName := map[string]subnet.Lease{}
	for _, p := range b.in.Peers {
		byName[p.Name] = p
	}
	type probe struct {
		peer   string
		target netip.Addr
		report *ProbeReport
	}
	var probes []probe
	for i := range b.r.Peers {
		pr := &b.r.Peers[i]
		// The families the backend programmed the peer in (it passed
		// PeerFamilies, or it would have been skipped).
		fams, _ := backend.PeerFamilies(byName[pr.Name], b.in.Config.EnableIPv4, b.in.Config.EnableIPv6)
		for _, f := range fams {
			target := probeTarget(b.in.Config.BackendType, f)
			rep := &ProbeReport{Target: ip.Text(target)}
			if f.IPv6 {
				pr.ProbeIPv6 = rep
			} else {
				pr.Probe = rep
			}
			probes = append(probes, probe{pr.Name, target, rep})
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxProbes)
	for _, p := range probes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := b.in.Probe(p.target); err != nil {
				p.report.Error = err.Error()
				return
			}
			p.report.Reachable = true
		}()
	}
	wg.Wait()
	for _, p := range probes {
		if !p.report.Reachable {
			b.problem("peer %s: %s does not answer a ping", p.peer, p.report.Target)
		}
	}
}

// probeTarget is what answers for a peer in an address family: its
// public IP of the family with host-gw, else its VTEP, the network address
// of its subnet of the family.
func probeTarget(backendType string, f backend.Family) netip.Addr {
	if backendType == hostgw.Type {
		return f.PublicIP
	}
	return f.Subnet.Masked().Addr()
}
