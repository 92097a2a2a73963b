package lab

import (
	"slices"
	"testing"
)

func TestMergeArgs(t *testing.T) {
	got := mergeArgs(
		[]string{"--kube-subnet-mgr", "--iface=eth0", "--net-config-path=/a", "-v=2"},
		[]string{"--net-config-path=/b", "--ip-blackhole-route", "-v=4"},
	)
	want := []string{"--kube-subnet-mgr", "--iface=eth0", "--net-config-path=/b", "--ip-blackhole-route", "-v=4"}
	if !slices.Equal(got, want) {
		t.Errorf("mergeArgs = %v, want %v", got, want)
	}
}

func TestNames(t *testing.T) {
	id := newRunID()
	if len(id) != 6 {
		t.Fatalf("run id %q", id)
	}
	if got := netnsName(id, "n1", "p1"); got != "fl"+id+"-n1-p1" {
		t.Errorf("netnsName = %q", got)
	}
	if got := ifName("vp-averyveryverylongname", "vp2"); got != "vp2" {
		t.Errorf("ifName = %q", got)
	}
	if got := ParseSubnetEnv("FLANNEL_MTU=1450\n\nFLANNEL_SUBNET=10.244.1.1/24\n"); got["FLANNEL_MTU"] != "1450" || got["FLANNEL_SUBNET"] != "10.244.1.1/24" {
		t.Errorf("ParseSubnetEnv = %v", got)
	}
}

func TestSetPodCIDRs(t *testing.T) {
	for _, c := range []struct {
		given             []string
		podCIDR, podCIDR6 string
		podCIDRs          []string
	}{
		{nil, "", "", nil},
		{[]string{""}, "", "", nil},
		{[]string{"10.244.1.0/24"}, "10.244.1.0/24", "", []string{"10.244.1.0/24"}},
		{[]string{"10.244.1.0/24", "fd00:10:244:1::/64"}, "10.244.1.0/24", "fd00:10:244:1::/64", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}},
		{[]string{"fd00:10:244:1::/64"}, "fd00:10:244:1::/64", "fd00:10:244:1::/64", []string{"fd00:10:244:1::/64"}},
	} {
		var n Node
		n.setPodCIDRs(c.given)
		if n.PodCIDR != c.podCIDR || n.PodCIDR6() != c.podCIDR6 || !slices.Equal(n.PodCIDRs, c.podCIDRs) {
			t.Errorf("setPodCIDRs(%q): PodCIDR %q PodCIDR6 %q PodCIDRs %q, want %q %q %q",
				c.given, n.PodCIDR, n.PodCIDR6(), n.PodCIDRs, c.podCIDR, c.podCIDR6, c.podCIDRs)
		}
	}
}
