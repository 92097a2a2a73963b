package daemon

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestValidKV(t *testing.T) {
	got := validKV("subnet", netip.MustParsePrefix("10.244.1.0/24"), "subnetIPv6", netip.Prefix{},
		"publicIP", netip.Addr{}, "publicIPv6", netip.MustParseAddr("fd00::1"), "data", "", "peers", 0)
	want := []any{"subnet", netip.MustParsePrefix("10.244.1.0/24"), "publicIPv6", netip.MustParseAddr("fd00::1"), "peers", 0}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("validKV = %v, want %v", got, want)
	}
}
