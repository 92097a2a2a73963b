package e2e

// The udp backend (issue 9): a TUN device, one route for the Network, and
// flanneld's own forwarder carrying one IPv4 packet per UDP datagram to
// port 8285, accepting datagrams from peers only.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

const (
	udpNetConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`
	udpDevice  = "flannel0"
	udpPort    = 8285
	// udpMTU is flannel0's MTU on a 1500-byte eth0: 1500 - 20 - 8.
	udpMTU = 1472
)

// TestUDPCluster runs flanneld with the udp backend on three nodes and
// checks REFERENCE section 4 for udp, the datapath (pings, bulk data, one
// packet per datagram on the wire), the source checks and their drop
// counters, the repair of a deleted device, and peer removal.
func TestUDPCluster(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	if err := l.WriteNetConf(udpNetConf); err != nil {
		t.Fatal(err)
	}
	nodes := make([]*lab.Node, 3)
	for i := range nodes {
		nodes[i] = l.AddNode(t, fmt.Sprintf("n%d", i+1), podCIDR(i+1))
	}
	startAll(t, l, nodes)

	t.Run("subnet.env", func(t *testing.T) { checkSubnetEnvs(t, nodes, subnetEnvWithMTU, udpMTU) })

	t.Run("node annotations", func(t *testing.T) { checkBackendAnnotations(t, l, nodes, "udp", nullBackendData) })

	t.Run("tun device and route", func(t *testing.T) {
		for i, n := range nodes {
			if err := lab.Poll(convergeTimeout, func() error { return checkUDPDevice(n.Netns, i+1) }); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
			if err := checkNoVXLANDevice(n.Netns); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	})

	var pods []*lab.Pod
	t.Run("ping between pods", func(t *testing.T) {
		pods = addPods(t, l, nodes)
		checkPodMTU(t, pods, udpMTU)
		pingAll(t, pods)
	})
	if len(pods) < 4 {
		t.Fatal("no pods; the remaining subtests need them")
	}
	n1p1, n2p1, n3p1 := pods[0], pods[2], pods[3]

	t.Run("move data", func(t *testing.T) {
		for _, c := range [][2]*lab.Pod{{n1p1, n2p1}, {n3p1, n1p1}, {n2p1, n3p1}} {
			if err := moveData(c[0], c[1], 64<<20); err != nil {
				t.Errorf("%s/%s -> %s/%s: %v", c[0].Node.Name, c[0].Name, c[1].Node.Name, c[1].Name, err)
			}
		}
	})

	t.Run("one IPv4 packet per datagram", func(t *testing.T) {
		checkWireFormat(t, l, nodes[0], n1p1, n2p1)
	})

	t.Run("datagrams from a non-peer are dropped", func(t *testing.T) {
		// The control plane's namespace is on the underlay but runs no
		// flanneld: whatever it sends to 8285 must not reach a pod.
		echo := icmpEchoPacket(netip.MustParseAddr("10.244.2.77"), n1p1.IP)
		checkInjection(t, l, l.ControlPlaneNetns(), nodes[0], n1p1, echo, "unknown_source", false)
		// The same packet from n2, whose subnet it comes from, is delivered.
		checkInjection(t, l, nodes[1].Netns, nodes[0], n1p1, echo, "", true)
	})

	t.Run("packets from outside the sending peer's subnet are dropped", func(t *testing.T) {
		// n2 is a peer, but 10.244.3.0/24 is n3's.
		spoofed := icmpEchoPacket(netip.MustParseAddr("10.244.3.77"), n1p1.IP)
		checkInjection(t, l, nodes[1].Netns, nodes[0], n1p1, spoofed, "inner_source", false)
		// A peer may not use this node as a relay either.
		relayed := icmpEchoPacket(netip.MustParseAddr("10.244.2.77"), n3p1.IP)
		checkInjection(t, l, nodes[1].Netns, nodes[0], n3p1, relayed, "inner_destination", false)
	})

	t.Run("device set down is set up again", func(t *testing.T) {
		n1 := nodes[0]
		mustExec(t, n1.Netns, "ip", "link", "set", udpDevice, "down")
		if err := lab.Poll(convergeTimeout, func() error { return checkUDPDevice(n1.Netns, 1) }); err != nil {
			t.Fatalf("%s after setting %s down: %v", n1.Name, udpDevice, err)
		}
		if len(logLines(n1.Flanneld().Log(), "Device changed; repairing", udpDevice)) == 0 {
			t.Errorf("flanneld on %s did not log the repair of %s", n1.Name, udpDevice)
		}
		pingAll(t, []*lab.Pod{n1p1, n2p1})
	})

	t.Run("deleted device is recreated", func(t *testing.T) {
		n1 := nodes[0]
		before, err := lab.ShowLink(n1.Netns, udpDevice)
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, n1.Netns, "ip", "link", "del", udpDevice)
		err = lab.Poll(convergeTimeout, func() error {
			link, err := lab.ShowLink(n1.Netns, udpDevice)
			if err != nil {
				return err
			}
			if link.IfIndex == before.IfIndex {
				return fmt.Errorf("still the old device")
			}
			return checkUDPDevice(n1.Netns, 1)
		})
		if err != nil {
			t.Fatalf("%s after deleting %s: %v", n1.Name, udpDevice, err)
		}
		pingAll(t, []*lab.Pod{n1p1, n2p1, n3p1})
		if err := moveData(n2p1, n1p1, 8<<20); err != nil {
			t.Errorf("moving data to the node whose device was recreated: %v", err)
		}
		requireRunning(t, n1)
	})

	t.Run("restart attaches to the device", func(t *testing.T) {
		n1 := nodes[0]
		checkTUNRestart(t, l, n1, udpDevice, "Attached to the TUN device the previous flanneld left", n1p1, n2p1,
			func() { l.StartFlanneld(t, n1) })
	})

	t.Run("deleted node is removed from peers", func(t *testing.T) {
		gone := nodes[2]
		gone.Flanneld().Stop()
		l.DeleteNode(t, gone)
		pingAll(t, []*lab.Pod{n1p1, pods[1], n2p1})
		// Its address is no longer a peer's: what it sends is dropped.
		echo := icmpEchoPacket(netip.MustParseAddr("10.244.3.77"), n1p1.IP)
		err := lab.Poll(convergeTimeout, func() error {
			return tryInjection(t, l, gone.Netns, nodes[0], n1p1, echo, "unknown_source", false)
		})
		if err != nil {
			t.Errorf("datagrams from the deleted node %s: %v", gone.Name, err)
		}
	})
}

// checkUDPDevice checks REFERENCE section 4 for flannel0 of node i: a TUN
// device without packet information, MTU 1472, up, address
// 10.244.i.0/32, and flanneld's route for the whole Network through it.
func checkUDPDevice(ns string, i int) error {
	link, err := lab.ShowLink(ns, udpDevice)
	if err != nil {
		return err
	}
	var problems []string
	check := func(what string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			problems = append(problems, fmt.Sprintf("%s = %v, want %v", what, got, want))
		}
	}
	check("kind", link.LinkInfo.InfoKind, "tun")
	check("type", link.LinkInfo.InfoData["type"], "tun")
	check("pi", link.LinkInfo.InfoData["pi"], false)
	check("mtu", link.MTU, udpMTU)
	check("up", link.IsUp(), true)
	addrs, err := lab.ShowAddrs(ns, udpDevice)
	if err != nil {
		return err
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.String())
	}
	check("addresses", got, []string{podNetAddr(i) + "/32"})
	routes, err := ownedRoutesOn(ns, udpDevice)
	if err != nil {
		return err
	}
	check("flanneld's routes", routes, []string{clusterNetwork + " dev " + udpDevice + " proto " + ownedProto})
	if len(problems) > 0 {
		return fmt.Errorf("%s: %s", udpDevice, strings.Join(problems, "; "))
	}
	return nil
}

// moveData sends size bytes over TCP from pod from to pod to and checks
// that they all arrive intact.
func moveData(from, to *lab.Pod, size int) error {
	ln, err := lab.ListenIn(to.Netns, "tcp4", net.JoinHostPort(to.IP.String(), "0"))
	if err != nil {
		return err
	}
	defer ln.Close()
	type result struct {
		n   int64
		sum [32]byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		r.n, r.err = n, err
		copy(r.sum[:], h.Sum(nil))
		done <- r
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := lab.DialContextIn(from.Netns)(ctx, "tcp4", ln.Addr().String())
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(time.Minute))
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), 9))
	for i := 0; i+8 <= len(data); i += 8 {
		binary.LittleEndian.PutUint64(data[i:], rng.Uint64())
	}
	if _, err := c.Write(data); err != nil {
		c.Close()
		return fmt.Errorf("sending: %w", err)
	}
	c.Close()
	r := <-done
	if r.err != nil {
		return fmt.Errorf("receiving: %w", r.err)
	}
	if r.n != int64(size) || r.sum != sha256.Sum256(data) {
		return fmt.Errorf("received %d bytes (checksum match %v), want %d intact", r.n, r.sum == sha256.Sum256(data), size)
	}
	return nil
}

// checkWireFormat captures the datagrams node n sends while moving data
// from pod from (on n) to pod to, and checks that each carries exactly
// one IPv4 packet no larger than flannel0's MTU. In the lab a UDP GSO send
// crosses the veth pairs uncut, so a tbf qdisc on eth0, which cuts GSO
// packets larger than its burst, shows the datagrams as a NIC would send
// them. The burst is one full frame (and a little): with two, a GSO
// packet of one full and one short segment would pass uncut.
func checkWireFormat(t *testing.T, l *lab.Lab, n *lab.Node, from, to *lab.Pod) {
	t.Helper()
	mustExec(t, n.Netns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "1gbit", "burst", "1600", "latency", "50ms")
	defer mustExec(t, n.Netns, "tc", "qdisc", "del", "dev", "eth0", "root")
	path := filepath.Join(l.Dir(), "udp-wire.pcap")
	capture := l.Start(t, n.Netns, "tcpdump-wire", nil, "tcpdump", "-i", "eth0", "-n", "-s", "96", "-c", "2000", "-w", path,
		fmt.Sprintf("udp and src host %s and dst port %d", n.IP, udpPort))
	defer capture.Stop()
	lab.WaitFor(t, "tcpdump listening", 10*time.Second, func() error {
		if !strings.Contains(capture.Log(), "listening on") {
			return errors.New("not yet")
		}
		return nil
	})
	if err := moveData(from, to, 16<<20); err != nil {
		t.Fatalf("moving data through the tbf qdisc: %v", err)
	}
	capture.Stop()
	frames, err := readPcap(path)
	if err != nil {
		t.Fatal(err)
	}
	full := 0
	for i, f := range frames {
		udp, inner, err := udpPayload(f.data)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		udpLen := int(binary.BigEndian.Uint16(udp[4:])) - 8
		if len(inner) < 20 || inner[0]>>4 != 4 {
			t.Fatalf("datagram %d does not start with an IPv4 header", i)
		}
		if total := int(binary.BigEndian.Uint16(inner[2:])); total != udpLen {
			t.Fatalf("datagram %d: %d bytes of UDP payload, inner IPv4 packet of %d: not exactly one packet", i, udpLen, total)
		}
		if udpLen > udpMTU {
			t.Fatalf("datagram %d: inner packet of %d bytes, more than flannel0's MTU %d", i, udpLen, udpMTU)
		}
		if udpLen == udpMTU {
			full++
		}
	}
	t.Logf("%d datagrams captured, %d carrying a full %d-byte packet", len(frames), full, udpMTU)
	if len(frames) < 100 || full < len(frames)/2 {
		t.Errorf("captured %d datagrams, %d full-size: want the bulk transfer's MSS-sized packets", len(frames), full)
	}
}

type pcapFrame struct{ data []byte }

// readPcap reads the frames of a classic pcap file (Ethernet, any byte
// order, micro- or nanosecond timestamps).
func readPcap(path string) ([]pcapFrame, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 {
		return nil, fmt.Errorf("%s: no pcap header", path)
	}
	var order binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		order = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		order = binary.BigEndian
	default:
		return nil, fmt.Errorf("%s: not a pcap file", path)
	}
	if lt := order.Uint32(b[20:]); lt != 1 {
		return nil, fmt.Errorf("%s: link type %d, want Ethernet", path, lt)
	}
	var frames []pcapFrame
	for b = b[24:]; len(b) >= 16; {
		incl := int(order.Uint32(b[8:]))
		if 16+incl > len(b) {
			break // the capture was stopped mid-record
		}
		frames = append(frames, pcapFrame{data: b[16 : 16+incl]})
		b = b[16+incl:]
	}
	return frames, nil
}

// udpPayload returns the UDP header and the (captured part of the)
// payload of an Ethernet frame holding IPv4/UDP.
func udpPayload(frame []byte) (udp, payload []byte, err error) {
	if len(frame) < 14+20+8 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return nil, nil, errors.New("not an IPv4 frame")
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != 17 || len(ip) < ihl+8 {
		return nil, nil, errors.New("not UDP")
	}
	return ip[ihl : ihl+8], ip[ihl+8:], nil
}

// icmpEchoPacket is an ICMP echo request from src to dst, as a pod would
// send it.
func icmpEchoPacket(src, dst netip.Addr) []byte {
	p := make([]byte, 20+8+8)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 1
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], inetChecksum(p[:20]))
	icmp := p[20:]
	icmp[0] = 8
	binary.BigEndian.PutUint16(icmp[4:], 0x4242)
	copy(icmp[8:], "flannel!")
	binary.BigEndian.PutUint16(icmp[2:], inetChecksum(icmp))
	return p
}

func inetChecksum(b []byte) uint16 {
	var s uint32
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// injections is how many datagrams checkInjection sends.
const injections = 5

// checkInjection sends datagrams holding pkt to node n's udp port from
// namespace ns, and checks that pod p sees pkt when delivered is true,
// and otherwise that it does not and that n counted each datagram as
// dropped for reason.
func checkInjection(t *testing.T, l *lab.Lab, ns string, n *lab.Node, p *lab.Pod, pkt []byte, reason string, delivered bool) {
	t.Helper()
	if err := tryInjection(t, l, ns, n, p, pkt, reason, delivered); err != nil {
		t.Error(err)
	}
}

func tryInjection(t testing.TB, l *lab.Lab, ns string, n *lab.Node, p *lab.Pod, pkt []byte, reason string, delivered bool) error {
	series := fmt.Sprintf(`flanneld_udp_dropped_packets_total{reason=%q}`, reason)
	before, err := scrapeMetrics(n)
	if err != nil {
		return err
	}
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	capture, err := startPodCapture(t, l, p, fmt.Sprintf("icmp and src host %s", src))
	if err != nil {
		return err
	}
	err = lab.InNetns(ns, func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: n.IP.AsSlice(), Port: udpPort})
		if err != nil {
			return err
		}
		defer c.Close()
		for range injections {
			if _, err := c.Write(pkt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		capture.Stop()
		return fmt.Errorf("sending from %s: %w", ns, err)
	}
	seen := 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && (seen == 0 || !delivered) {
		time.Sleep(200 * time.Millisecond)
		seen = strings.Count(capture.Stdout(), "ICMP echo request")
	}
	capture.Stop()
	if delivered {
		if seen == 0 {
			return fmt.Errorf("a packet from %s sent from %s did not reach pod %s/%s", src, ns, p.Node.Name, p.Name)
		}
		return nil
	}
	if seen != 0 {
		return fmt.Errorf("a packet from %s sent from %s reached pod %s/%s %d times", src, ns, p.Node.Name, p.Name, seen)
	}
	return lab.Poll(5*time.Second, func() error {
		after, err := scrapeMetrics(n)
		if err != nil {
			return err
		}
		if got := after[series] - before[series]; got != injections {
			return fmt.Errorf("%s on %s grew by %v, want %d", series, n.Name, got, injections)
		}
		return nil
	})
}

// startPodCapture runs tcpdump on pod p's eth0 with filter, printing what
// it sees, and waits until it listens.
func startPodCapture(t testing.TB, l *lab.Lab, p *lab.Pod, filter string) (*lab.Process, error) {
	proc := l.Start(t, p.Netns, "tcpdump-"+p.Node.Name+"-"+p.Name, nil, "tcpdump", "-i", "eth0", "-n", "-l", filter)
	err := lab.Poll(10*time.Second, func() error {
		if !strings.Contains(proc.Log(), "listening on") {
			return errors.New("tcpdump is not listening yet")
		}
		return nil
	})
	if err != nil {
		proc.Stop()
		return nil, err
	}
	return proc, nil
}

// TestUDPBackendSwitch restarts a vxlan cluster with udp and back: the
// restart to udp removes flannel.1 and its entries, the one back removes
// flannel0 (which the stopped flanneld left in place) and its route, and
// pods created under vxlan keep pinging under udp and after.
func TestUDPBackendSwitch(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireBinary(t, lab.BinaryFlanneld)
	l := lab.New(t)
	useVXLAN := writeNetConfFile(t, l, "vxlan", vxlanNetConf)
	useUDP := writeNetConfFile(t, l, "udp", udpNetConf)
	nodes := []*lab.Node{l.AddNode(t, "n1", podCIDR(1)), l.AddNode(t, "n2", podCIDR(2))}
	startAll(t, l, nodes, useVXLAN)
	pods := []*lab.Pod{l.AddPod(t, nodes[0], "p1"), l.AddPod(t, nodes[1], "p1")}
	pingAll(t, pods)

	stopAll(nodes)
	startAll(t, l, nodes, useUDP)
	for i, n := range nodes {
		if err := lab.Poll(convergeTimeout, func() error { return checkUDPDevice(n.Netns, i+1) }); err != nil {
			t.Errorf("%s on udp: %v", n.Name, err)
		}
		if err := lab.Poll(convergeTimeout, func() error { return checkNoVXLANDevice(n.Netns) }); err != nil {
			t.Errorf("%s on udp: %v", n.Name, err)
		}
	}
	pingAll(t, pods)

	stopAll(nodes)
	startAll(t, l, nodes, useVXLAN)
	for i, n := range nodes {
		err := lab.Poll(convergeTimeout, func() error {
			if _, err := lab.ShowLink(n.Netns, udpDevice); err == nil {
				return fmt.Errorf("%s still exists", udpDevice)
			}
			if routes, err := ownedRoutesOn(n.Netns, udpDevice); err != nil || len(routes) > 0 {
				return fmt.Errorf("routes on %s: %v (%v)", udpDevice, routes, err)
			}
			return checkVXLANDevice(n.Netns, i+1)
		})
		if err != nil {
			t.Errorf("%s back on vxlan: %v", n.Name, err)
		}
	}
	pingAll(t, pods)
}
