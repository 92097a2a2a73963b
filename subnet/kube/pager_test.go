package kube

import "testing"

func TestPageLimit(t *testing.T) {
	for _, c := range []struct {
		seen, bytes, want int64
	}{
		{0, 0, firstPageNodes},
		{50, 50 * 7 << 10, maxPageNodes},   // kubelet-sized Nodes
		{50, 50 * 250_000, 33},             // Nodes with 250 KB of annotations
		{50, 50 * 1_500_000, minPageNodes}, // Nodes at etcd's size limit
		{550, 50*250_000 + 500*7<<10, 286}, // the mix so far
		{10, 0, firstPageNodes},            // sizes unknown
	} {
		if got := pageLimit(c.seen, c.bytes); got != c.want {
			t.Errorf("pageLimit(%d, %d) = %d, want %d", c.seen, c.bytes, got, c.want)
		}
	}
}
