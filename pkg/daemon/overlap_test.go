package daemon

import (
	"net/netip"
	"testing"
)

func TestSubnetIndex(t *testing.T) {
	x := newSubnetIndex()
	x.add("a", netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:0:0:1::/64"))
	x.add("b", netip.MustParsePrefix("10.244.2.0/24"))
	for _, tt := range []struct {
		name, p, want string
	}{
		{"c", "10.244.3.0/24", ""},
		{"c", "10.244.1.0/24", "a"},
		{"a", "10.244.1.0/24", ""},    // itself
		{"c", "10.244.1.128/25", "a"}, // inside a
		{"c", "10.244.0.0/16", "a"},   // contains a (and b)
		{"c", "10.245.0.0/16", ""},
		{"c", "fd00:0:0:1::/64", "a"},
		{"c", "fd00::/48", "a"},
		{"c", "fd00:0:0:2::/64", ""},
		{"c", "::/0", "a"},
	} {
		owner, _, ok := x.overlapping(tt.name, netip.MustParsePrefix(tt.p))
		if (tt.want == "") == ok || owner != tt.want && !(tt.want == "a" && owner == "b" && tt.p == "10.244.0.0/16") {
			t.Errorf("overlapping(%s, %s) = %q, %v; want %q", tt.name, tt.p, owner, ok, tt.want)
		}
	}
	x.remove("a", netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:0:0:1::/64"))
	if _, _, ok := x.overlapping("c", netip.MustParsePrefix("10.244.1.0/24")); ok {
		t.Error("removed subnet still overlaps")
	}
	x.remove("zzz", netip.MustParsePrefix("10.244.2.0/24")) // not the owner: no-op
	if owner, _, ok := x.overlapping("c", netip.MustParsePrefix("10.244.2.0/24")); !ok || owner != "b" {
		t.Error("a remove by a non-owner dropped b")
	}
	if len(x.lengths) != 1 || x.lengths[prefixLen{true, 24}] != 1 {
		t.Errorf("lengths %v", x.lengths)
	}
}
