// Package lab builds a throwaway flannel cluster out of Linux network
// namespaces for the end-to-end tests.
//
// A lab is one "underlay" namespace holding a bridge (br0), a control-plane
// namespace running etcd and kube-apiserver, and any number of node
// namespaces, each wired to the bridge by a veth pair whose node end is
// called eth0. Pods are further namespaces hanging off a cni0 bridge in
// their node. Nothing is created in the host namespace and no traffic leaves
// the lab.
//
// A lab can also be routed (topology.go): a second segment (Segment2, bridge
// br1) joined to the first by a router namespace, for peers that are reached
// only through a gateway.
//
// New(t, WithIPv6()) makes the underlay dual-stack (fd00:100::/64 next to
// 192.168.100.0/24, and so on) for IPv6 and dual-stack pod networks: give
// AddNode an IPv6 podCIDR, alone or after the IPv4 one, and the pods get
// IPv6 addresses (Pod.IPv6) through the same CNI chain. Without it a lab is
// IPv4 only, as before.
//
// Every machine-wide name (namespace names) carries a random run id, so
// parallel test runs never collide, and everything a lab creates is removed
// by t.Cleanup, also when the test fails or panics.
//
// Methods that can fail take the calling test's testing.TB as their first
// argument, so they are safe to use from subtests; resources still belong to
// the lab and are released when the test that called New ends.
package lab
