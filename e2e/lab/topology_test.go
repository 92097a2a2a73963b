package lab

import "testing"

func TestSegments(t *testing.T) {
	for _, c := range []struct {
		seg                     Segment
		prefix, gateway, host11 string
		bridge                  string
	}{
		{Segment1, "192.168.100.0/24", "192.168.100.1", "192.168.100.11", "br0"},
		{Segment2, "192.168.200.0/24", "192.168.200.1", "192.168.200.11", "br1"},
	} {
		if got := c.seg.Prefix().String(); got != c.prefix {
			t.Errorf("%v prefix %s, want %s", c.seg, got, c.prefix)
		}
		if got := c.seg.Gateway().String(); got != c.gateway {
			t.Errorf("%v gateway %s, want %s", c.seg, got, c.gateway)
		}
		if got := c.seg.Host(11).String(); got != c.host11 {
			t.Errorf("%v host 11 %s, want %s", c.seg, got, c.host11)
		}
		if got := c.seg.Bridge(); got != c.bridge {
			t.Errorf("%v bridge %s, want %s", c.seg, got, c.bridge)
		}
	}
	for _, c := range []struct {
		seg                     Segment
		prefix, gateway, host11 string
	}{
		{Segment1, "fd00:100::/64", "fd00:100::1", "fd00:100::11"},
		{Segment2, "fd00:200::/64", "fd00:200::1", "fd00:200::11"},
	} {
		if got := c.seg.Prefix6().String(); got != c.prefix {
			t.Errorf("%v IPv6 prefix %s, want %s", c.seg, got, c.prefix)
		}
		if got := c.seg.Gateway6().String(); got != c.gateway {
			t.Errorf("%v IPv6 gateway %s, want %s", c.seg, got, c.gateway)
		}
		if got := c.seg.Host6(11).String(); got != c.host11 {
			t.Errorf("%v IPv6 host 11 %s, want %s", c.seg, got, c.host11)
		}
		if !c.seg.Prefix6().Contains(c.seg.Host6(255)) {
			t.Errorf("%v: host 255 %s is outside %s", c.seg, c.seg.Host6(255), c.seg.Prefix6())
		}
	}
	if Segment1.Gateway() != UnderlayGateway {
		t.Errorf("Segment1's gateway %s is not UnderlayGateway %s", Segment1.Gateway(), UnderlayGateway)
	}
	if Segment(7).valid() || Segment(-1).valid() {
		t.Error("an unknown segment is valid")
	}
}
