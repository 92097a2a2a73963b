package udp

import (
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// dropReason is why the forwarder dropped a packet. The set is fixed, so
// the drop counter's cardinality is bounded.
type dropReason int

const (
	// dropUnknownSource: a datagram whose source address is not a current
	// peer's public IP.
	dropUnknownSource dropReason = iota
	// dropInnerSource: a packet whose source address is not inside the
	// subnet of the peer that sent it.
	dropInnerSource
	// dropInnerDestination: a received packet whose destination is not
	// inside this node's subnet.
	dropInnerDestination
	// dropInvalid: not a well-formed IPv4 packet (IPv6 included), in either
	// direction.
	dropInvalid
	// dropBadOffload: a packet from the TUN device whose virtio-net header
	// does not fit it (checkOffload): a partial checksum outside the
	// transport header's checksum field, TCP segmentation of what is not
	// a TCP segment, an unknown GSO type.
	dropBadOffload
	// dropNoRoute: a packet for an address of the Network that no peer
	// owns; an ICMP net-unreachable goes back to its sender.
	dropNoRoute
	// dropTTLExpired: a packet whose TTL ran out; an ICMP time-exceeded
	// goes back to its sender.
	dropTTLExpired
	// dropSendError: the UDP socket refused to send.
	dropSendError
	// dropWriteError: the TUN device refused the packet, or was gone.
	dropWriteError
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	dropUnknownSource:    "unknown_source",
	dropInnerSource:      "inner_source",
	dropInnerDestination: "inner_destination",
	dropInvalid:          "invalid",
	dropBadOffload:       "bad_offload",
	dropNoRoute:          "no_route",
	dropTTLExpired:       "ttl_expired",
	dropSendError:        "send_error",
	dropWriteError:       "write_error",
}

func (r dropReason) String() string { return dropReasonNames[r] }

// dropLogInterval bounds the logging: one line per reason per interval.
const dropLogInterval = 10 * time.Second

// drops counts the dropped packets by reason, and logs them rate-limited.
// Counting costs two atomic operations and no allocation, so a flood of
// bad datagrams costs little more than receiving them.
type drops struct {
	counts  [numDropReasons]atomic.Uint64
	nextLog [numDropReasons]atomic.Int64 // Unix nanoseconds
}

func newDrops() *drops { return &drops{} }

// add counts n packets dropped for reason r. from (the datagram's source
// address, 0 when none) and pkt (the packet, nil when none) describe the
// latest, which is logged at most once per dropLogInterval per reason.
func (d *drops) add(r dropReason, n int, from uint32, pkt []byte) {
	total := d.counts[r].Add(uint64(n))
	next := d.nextLog[r].Load()
	now := time.Now().UnixNano()
	if now < next || !d.nextLog[r].CompareAndSwap(next, now+int64(dropLogInterval)) {
		return
	}
	d.log(r, total, from, pkt)
}

func (d *drops) log(r dropReason, total uint64, from uint32, pkt []byte) {
	kv := []any{"reason", r.String(), "totalDropped", total}
	if from != 0 {
		kv = append(kv, "from", uint32ToAddr(from))
	}
	if len(pkt) >= ipv4HeaderLen && pkt[0]>>4 == 4 {
		kv = append(kv, "source", uint32ToAddr(srcAddr(pkt)), "destination", uint32ToAddr(dstAddr(pkt)))
	}
	klog.InfoS("Dropped packets (logged at most once per reason every "+dropLogInterval.String()+")", kv...)
}

// snapshot returns every reason's count.
func (d *drops) snapshot() map[string]uint64 {
	out := make(map[string]uint64, numDropReasons)
	for i := range numDropReasons {
		out[dropReasonNames[i]] = d.counts[i].Load()
	}
	return out
}
