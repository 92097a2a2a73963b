package udp

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/flanneld/flanneld/subnet"
)

// peer is a programmed peer as the forwarder sees it.
type peer struct {
	name   string
	subnet netip.Prefix
	prefix uint32 // the subnet's masked address
	mask   uint32
	public uint32
	addr   netip.AddrPort // the peer's public IP and the backend's port
}

func (p *peer) contains(a uint32) bool { return a&p.mask == p.prefix }

// peerTable holds the programmed peers, indexed for the forwarder: by
// subnet, to find where a packet goes (one map lookup per distinct subnet
// length, whatever the number of peers: in practice every node has the
// same length), and by public IP, to check where a datagram comes from.
// The sync loop writes it; the forwarding goroutines read it, holding the
// read lock for a batch of packets.
type peerTable struct {
	port int

	mu       sync.RWMutex
	byName   map[string]*peer
	bySubnet [33]map[uint32]*peer // by prefix length, then masked address
	lengths  []int                // prefix lengths in use, longest first
	byPublic map[uint32][]*peer
}

func newPeerTable(port int) *peerTable {
	return &peerTable{port: port, byName: map[string]*peer{}, byPublic: map[uint32][]*peer{}}
}

func addrToUint32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func uint32ToAddr(a uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], a)
	return netip.AddrFrom4(b)
}

// set records the peer's lease, or forgets the peer when lease is nil. A
// lease without an IPv4 subnet and public IP removes the peer.
func (t *peerTable) set(name string, lease *subnet.Lease) {
	var p *peer
	if lease != nil && lease.Subnet.IsValid() && lease.Subnet.Addr().Is4() && lease.Attrs.PublicIP.Is4() {
		sn := lease.Subnet.Masked()
		bits := sn.Bits()
		p = &peer{
			name:   name,
			subnet: sn,
			prefix: addrToUint32(sn.Addr()),
			mask:   ^uint32(0) << (32 - bits), // 0 for a /0
			public: addrToUint32(lease.Attrs.PublicIP),
			addr:   netip.AddrPortFrom(lease.Attrs.PublicIP, uint16(t.port)),
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.byName[name]; old != nil {
		t.remove(old)
	}
	if p != nil {
		t.add(p)
	}
}

// add and remove keep the indexes; the write lock is held.
func (t *peerTable) add(p *peer) {
	t.byName[p.name] = p
	bits := p.subnet.Bits()
	if t.bySubnet[bits] == nil {
		t.bySubnet[bits] = map[uint32]*peer{}
		t.lengths = append(t.lengths, bits)
		sortDescending(t.lengths)
	}
	t.bySubnet[bits][p.prefix] = p
	t.byPublic[p.public] = append(t.byPublic[p.public], p)
}

func (t *peerTable) remove(p *peer) {
	delete(t.byName, p.name)
	bits := p.subnet.Bits()
	if m := t.bySubnet[bits]; m[p.prefix] == p {
		delete(m, p.prefix)
		if len(m) == 0 {
			t.bySubnet[bits] = nil
			for i, l := range t.lengths {
				if l == bits {
					t.lengths = append(t.lengths[:i], t.lengths[i+1:]...)
					break
				}
			}
		}
	}
	same := t.byPublic[p.public]
	for i, q := range same {
		if q == p {
			same = append(same[:i:i], same[i+1:]...)
			break
		}
	}
	if len(same) == 0 {
		delete(t.byPublic, p.public)
	} else {
		t.byPublic[p.public] = same
	}
}

func sortDescending(v []int) {
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && v[j] > v[j-1]; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}
}

// rlock and runlock bracket the lookups of a batch.
func (t *peerTable) rlock()   { t.mu.RLock() }
func (t *peerTable) runlock() { t.mu.RUnlock() }

// byDestination returns the peer whose subnet holds dst, or nil. The read
// lock must be held.
func (t *peerTable) byDestination(dst uint32) *peer {
	for _, bits := range t.lengths {
		mask := ^uint32(0) << (32 - bits) // 0 for a /0: Go shifts everything out
		if p := t.bySubnet[bits][dst&mask]; p != nil {
			return p
		}
	}
	return nil
}

// bySource returns the peers whose public IP is src (usually one), or
// nil. The read lock must be held.
func (t *peerTable) bySource(src uint32) []*peer { return t.byPublic[src] }

// len is the number of peers.
func (t *peerTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byName)
}
