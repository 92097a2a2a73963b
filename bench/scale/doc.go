// Package scale is the scale benchmark: one node namespace running the
// freshly built flanneld (VXLAN) against the lab's real kube-apiserver, with
// N fake peer Nodes of kubelet size created through the API. For each N it
// measures the time from process start to all N peers programmed in the
// kernel, the time to program 100 peers added and to remove 100 deleted
// while running, flanneld's peak RSS and CPU seconds, and the floor measured
// in the same run: one protobuf LIST of all Nodes plus one `ip -batch` /
// `bridge -batch` of the same kernel entries.
//
// Run it with `make bench-scale` (as root). It is a Go test that skips
// unless FLANNELD_BENCH=1, so `make test` never runs it; it reports figures
// and asserts nothing about them. See Documentation/scale.md.
package scale
