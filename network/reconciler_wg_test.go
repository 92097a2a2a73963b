package network

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/network/kernel"
)

const wgLink = 7

func wgPeer(keyByte byte, endpoint, allowed string) kernel.WGPeer {
	var k kernel.WGKey
	k[0] = keyByte
	return kernel.WGPeer{LinkIndex: wgLink, PublicKey: k, Endpoint: netip.MustParseAddrPort(endpoint),
		AllowedIPs: kernel.NewPrefixSet(netip.MustParsePrefix(allowed)), Keepalive: 25}
}

// WireGuard peers are entries like the others: applied, repaired on a
// full pass (there are no notifications), updated in place, pruned from
// an owned device, never printed with their pre-shared key.
func TestWGPeersAreReconciled(t *testing.T) {
	k := kernel.NewFake()
	r := NewReconciler(k)
	r.SetOwnedLinks([]int{wgLink})
	p2 := wgPeer(2, "192.168.100.12:51820", "10.244.2.0/24")
	p2.PSK[0] = 0x42
	p3 := wgPeer(3, "192.168.100.13:51820", "10.244.3.0/24")
	r.Update("n2", State{}, State{WGPeers: []kernel.WGPeer{p2}})
	r.Update("n3", State{}, State{WGPeers: []kernel.WGPeer{p3}})
	if _, err := r.Apply(true); err != nil {
		t.Fatal(err)
	}
	if len(k.WG) != 2 {
		t.Fatalf("kernel has %d peers, want 2:\n%s", len(k.WG), k.Dump())
	}
	if d := k.Dump(); strings.Contains(d, "42") || !strings.Contains(d, "psk (set)") {
		t.Errorf("dump shows the PSK, or not that it is set:\n%s", d)
	}

	// Someone removes a peer (wg set flannel-wg peer X remove) and adds one.
	delete(k.WG, p2.Key())
	stray := wgPeer(9, "192.168.100.99:51820", "10.244.99.0/24")
	k.WG[stray.Key()] = stray
	res, err := r.Apply(true)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.WG[p2.Key()]; !ok || res.Kinds["wgpeer"] != 1 {
		t.Errorf("deleted peer not repaired (repairs %v):\n%s", res.Kinds, k.Dump())
	}
	if _, ok := k.WG[stray.Key()]; ok {
		t.Errorf("a peer nobody wants is left on the owned device:\n%s", k.Dump())
	}

	// A changed endpoint is set in place; a changed key replaces the peer.
	moved := p3
	moved.Endpoint = netip.MustParseAddrPort("192.168.100.33:51820")
	r.Update("n3", State{WGPeers: []kernel.WGPeer{p3}}, State{WGPeers: []kernel.WGPeer{moved}})
	rekeyed := p2
	rekeyed.PublicKey[1] = 1
	r.Update("n2", State{WGPeers: []kernel.WGPeer{p2}}, State{WGPeers: []kernel.WGPeer{rekeyed}})
	if _, err := r.Apply(false); err != nil {
		t.Fatal(err)
	}
	if got := k.WG[p3.Key()].Endpoint; got != moved.Endpoint {
		t.Errorf("endpoint = %s, want %s", got, moved.Endpoint)
	}
	if _, ok := k.WG[p2.Key()]; ok {
		t.Errorf("the peer's old key is still there:\n%s", k.Dump())
	}
	if _, ok := k.WG[rekeyed.Key()]; !ok {
		t.Errorf("the peer's new key is missing:\n%s", k.Dump())
	}

	// Someone changes a peer's allowed IPs: a full pass restores them.
	bad := k.WG[p3.Key()]
	bad.AllowedIPs = kernel.NewPrefixSet(netip.MustParsePrefix("0.0.0.0/0"))
	k.WG[p3.Key()] = bad
	if _, err := r.Apply(true); err != nil {
		t.Fatal(err)
	}
	if got := k.WG[p3.Key()]; got != moved {
		t.Errorf("peer = %v, want %v", got, moved)
	}

	// A removed Node's peer goes.
	r.Update("n3", State{WGPeers: []kernel.WGPeer{moved}}, State{})
	if _, err := r.Apply(false); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.WG[p3.Key()]; ok || len(k.WG) != 1 {
		t.Errorf("removed peer still programmed:\n%s", k.Dump())
	}
}

// Two peers claiming one public key conflict, like two claiming a VtepMAC.
func TestWGPeerKeyConflict(t *testing.T) {
	r := NewReconciler(kernel.NewFake())
	p := wgPeer(2, "192.168.100.12:51820", "10.244.2.0/24")
	r.Update("n2", State{}, State{WGPeers: []kernel.WGPeer{p}})
	thief := wgPeer(2, "192.168.100.66:51820", "10.244.66.0/24")
	other, entry, ok := r.Conflict("n66", State{WGPeers: []kernel.WGPeer{thief}})
	if !ok || other != "n2" || !strings.Contains(entry, "WireGuard peer with public key") {
		t.Errorf("Conflict = %q, %q, %v; want n2 holding the WireGuard peer", other, entry, ok)
	}
}

func TestPrefixSet(t *testing.T) {
	s := kernel.NewPrefixSet(netip.MustParsePrefix("fd00::1/64"), netip.MustParsePrefix("10.244.2.7/24"), netip.Prefix{})
	if s != "10.244.2.0/24,fd00::/64" {
		t.Errorf("NewPrefixSet = %q", s)
	}
	if got := s.Prefixes(); len(got) != 2 || got[1] != netip.MustParsePrefix("fd00::/64") {
		t.Errorf("Prefixes = %v", got)
	}
	if kernel.NewPrefixSet() != "" || kernel.PrefixSet("").Prefixes() != nil {
		t.Error("empty set is not empty")
	}
}
