package lab

// This file stands in for the CNI plugins: it wires pods by hand the way the
// bridge plugin would. A later change replaces it with the real plugins.

import (
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// Pod is a namespace with an eth0 on its node's cni0 bridge.
type Pod struct {
	Name    string
	Node    *Node
	Netns   string
	IP      netip.Addr
	Gateway netip.Addr // the cni0 address
}

// AddPod waits for the node's subnet.env, makes sure cni0 exists with the
// first address of FLANNEL_SUBNET, and creates a pod namespace whose eth0
// (MTU FLANNEL_MTU) has the next free address and a default route via cni0.
func (l *Lab) AddPod(t testing.TB, n *Node, name string) *Pod {
	t.Helper()
	env := ParseSubnetEnv(n.WaitSubnetEnv(t, 60*time.Second))
	gw, err := netip.ParsePrefix(env["FLANNEL_SUBNET"])
	if err != nil {
		t.Fatalf("subnet.env of %s: FLANNEL_SUBNET: %v", n.Name, err)
	}
	mtu, err := strconv.Atoi(env["FLANNEL_MTU"])
	if err != nil {
		t.Fatalf("subnet.env of %s: FLANNEL_MTU: %v", n.Name, err)
	}

	l.mu.Lock()
	host := n.nextPod
	n.nextPod++
	l.mu.Unlock()
	ip := gw.Masked().Addr()
	for range host {
		ip = ip.Next()
	}
	if !gw.Contains(ip) {
		t.Fatalf("node %s: no free address left in %s", n.Name, gw)
	}
	p := &Pod{Name: name, Node: n, Netns: netnsName(l.runID, n.Name, name), IP: ip, Gateway: gw.Addr()}
	if err := ensureCNIBridge(n.Netns, gw, mtu); err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
	if err := wirePod(p, gw.Bits(), mtu, ifName("vp-"+name, fmt.Sprintf("vp%d", host))); err != nil {
		t.Fatalf("creating pod %s on %s: %v", name, n.Name, err)
	}
	return p
}

// ensureCNIBridge creates cni0 with address gw if the node has none yet.
func ensureCNIBridge(nodeNS string, gw netip.Prefix, mtu int) error {
	if _, err := runIP("-n", nodeNS, "link", "show", "cni0"); err == nil {
		return nil
	}
	for _, args := range [][]string{
		{"-n", nodeNS, "link", "add", "cni0", "mtu", strconv.Itoa(mtu), "type", "bridge"},
		{"-n", nodeNS, "addr", "add", gw.String(), "dev", "cni0"},
		{"-n", nodeNS, "link", "set", "cni0", "up"},
	} {
		if _, err := runIP(args...); err != nil {
			return err
		}
	}
	return nil
}

// wirePod creates the pod namespace and its veth pair.
func wirePod(p *Pod, bits, mtu int, hostVeth string) error {
	if err := createNetns(p.Netns); err != nil {
		return err
	}
	nodeNS := p.Node.Netns
	m := strconv.Itoa(mtu)
	for _, args := range [][]string{
		{"-n", nodeNS, "link", "add", hostVeth, "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", p.Netns},
		{"-n", nodeNS, "link", "set", hostVeth, "master", "cni0", "up"},
		{"-n", p.Netns, "addr", "add", netip.PrefixFrom(p.IP, bits).String(), "dev", "eth0"},
		{"-n", p.Netns, "link", "set", "eth0", "up"},
		{"-n", p.Netns, "route", "add", "default", "via", p.Gateway.String(), "dev", "eth0"},
	} {
		if _, err := runIP(args...); err != nil {
			return err
		}
	}
	return nil
}

// Ping sends one echo request from the pod (2 s timeout).
func Ping(from *Pod, to netip.Addr) error {
	_, err := Exec(from.Netns, "ping", "-c", "1", "-W", "2", to.String())
	return err
}

// WaitPing retries Ping until it succeeds or timeout passes.
func WaitPing(t testing.TB, from *Pod, to netip.Addr, timeout time.Duration) {
	t.Helper()
	WaitFor(t, fmt.Sprintf("ping %s/%s -> %s", from.Node.Name, from.Name, to), timeout, func() error {
		return Ping(from, to)
	})
}
