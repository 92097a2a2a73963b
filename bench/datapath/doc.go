// Package datapath is the datapath benchmark: pod-to-pod TCP throughput
// (iperf3) and TCP latency (qperf tcp_lat) for each flanneld backend,
// compared with the underlay between the same two node namespaces,
// measured in the same run on the e2e lab (package e2e/lab).
//
// Run it with `make bench-datapath` (as root). It is a Go test that skips
// unless FLANNELD_BENCH=1, so `make test` never runs it; it reports figures
// and asserts nothing about them. See README.md.
package datapath
