package etcd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/flanneld/flanneld/subnet"
)

func TestKeyNameRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		v4, v6 string
		name   string
	}{
		{v4: "10.244.1.0/24", name: "10.244.1.0-24"},
		{v4: "10.0.0.0/8", name: "10.0.0.0-8"},
		{v4: "192.168.0.4/30", name: "192.168.0.4-30"},
		{v6: "fd00:0:0:1::/64", name: "fd00:0:0:1::-64"},
		{v4: "10.244.1.0/24", v6: "fd00:0:0:1::/64", name: "10.244.1.0-24&fd00:0:0:1::-64"},
		{v4: "10.244.255.0/24", v6: "fd00:0:0:ff::/64", name: "10.244.255.0-24&fd00:0:0:ff::-64"},
	} {
		var v4, v6 netip.Prefix
		if tc.v4 != "" {
			v4 = netip.MustParsePrefix(tc.v4)
		}
		if tc.v6 != "" {
			v6 = netip.MustParsePrefix(tc.v6)
		}
		if got := keyName(v4, v6); got != tc.name {
			t.Errorf("keyName(%v, %v) = %q, want %q", v4, v6, got, tc.name)
		}
		g4, g6, err := parseKeyName(tc.name)
		if err != nil {
			t.Errorf("parseKeyName(%q): %v", tc.name, err)
			continue
		}
		if g4 != v4 || g6 != v6 {
			t.Errorf("parseKeyName(%q) = %v, %v; want %v, %v", tc.name, g4, g6, v4, v6)
		}
	}
}

// TestKeyNameMasks: a prefix with host bits names its network.
func TestKeyNameMasks(t *testing.T) {
	if got := keyName(netip.MustParsePrefix("10.244.1.7/24"), netip.Prefix{}); got != "10.244.1.0-24" {
		t.Errorf("keyName of 10.244.1.7/24 = %q, want 10.244.1.0-24", got)
	}
}

func TestParseKeyNameMalformed(t *testing.T) {
	for _, name := range []string{
		"",
		"&",
		"10.244.1.0",
		"10.244.1.0/24",
		"10.244.1.0-",
		"-24",
		"10.244.1.0-33",
		"10.244.1.0--24",
		"10.244.1.0-x",
		"10.244.1.1-24", // not the network address
		"10.244.1.0-24&",
		"&10.244.1.0-24",
		"garbage-24",
		"10.244.1-24",
		"fd00::1-64",
		"fd00::-129",
		"fe80::%eth0-64",
		"10.244.1.0-24&10.244.2.0-24", // two IPv4 subnets
		"fd00:0:0:1::-64&fd00:0:0:2::-64",
		"10.244.1.0-24&fd00:0:0:1::-64&10.244.2.0-24",
	} {
		if v4, v6, err := parseKeyName(name); err == nil {
			t.Errorf("parseKeyName(%q) = %v, %v; want an error", name, v4, v6)
		}
		if _, err := leaseFromKV(name, []byte(`{"PublicIP":"192.168.100.11"}`), 1); err == nil {
			t.Errorf("leaseFromKV(%q) accepted a malformed key", name)
		}
	}
}

// upstreamVXLAN is a lease value exactly as upstream flannel writes it.
const upstreamVXLAN = `{"PublicIP":"192.168.100.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}}`

func TestMarshalValueIsUpstreamJSON(t *testing.T) {
	attrs := subnet.LeaseAttrs{
		PublicIP:    netip.MustParseAddr("192.168.100.11"),
		BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`),
	}
	got, err := marshalValue(attrs)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != upstreamVXLAN {
		t.Errorf("marshalValue:\n got %s\nwant %s", got, upstreamVXLAN)
	}

	// Whitespace in the backend's document does not reach etcd.
	attrs.BackendData = json.RawMessage("{\"VNI\": 1,\n \"VtepMAC\": \"0a:58:0a:f4:01:00\"}")
	if got, err := marshalValue(attrs); err != nil || string(got) != upstreamVXLAN {
		t.Errorf("marshalValue with indented backend data = %s, %v; want %s", got, err, upstreamVXLAN)
	}
}

func TestMarshalValueVariants(t *testing.T) {
	for _, tc := range []struct {
		name  string
		attrs subnet.LeaseAttrs
		want  string
	}{{
		name:  "no backend data",
		attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.100.12"), BackendType: "host-gw"},
		want:  `{"PublicIP":"192.168.100.12","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}`,
	}, {
		name: "dual stack",
		attrs: subnet.LeaseAttrs{
			PublicIP:      netip.MustParseAddr("192.168.100.13"),
			PublicIPv6:    netip.MustParseAddr("fd00:100::13"),
			BackendType:   "vxlan",
			BackendData:   json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:03:00"}`),
			BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:03:01"}`),
		},
		want: `{"PublicIP":"192.168.100.13","PublicIPv6":"fd00:100::13","BackendType":"vxlan",` +
			`"BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:03:00"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:0a:f4:03:01"}}`,
	}} {
		got, err := marshalValue(tc.attrs)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

func TestLeaseFromKVUpstream(t *testing.T) {
	l, err := leaseFromKV("10.244.1.0-24", []byte(upstreamVXLAN), 1)
	if err != nil {
		t.Fatal(err)
	}
	want := subnet.Lease{
		Name:   "10.244.1.0-24",
		Subnet: netip.MustParsePrefix("10.244.1.0/24"),
		Attrs: subnet.LeaseAttrs{
			PublicIP:    netip.MustParseAddr("192.168.100.11"),
			BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`),
		},
	}
	assertLeaseEqual(t, l, want)

	// What we read, we write back unchanged.
	back, err := marshalValue(l.Attrs)
	if err != nil || string(back) != upstreamVXLAN {
		t.Errorf("marshalValue(leaseFromKV(upstream)) = %s, %v; want %s", back, err, upstreamVXLAN)
	}
}

func TestLeaseFromKVVariants(t *testing.T) {
	for _, tc := range []struct {
		name, key, value string
		want             subnet.Lease
	}{{
		name:  "reservation: public IP only",
		key:   "10.244.5.0-24",
		value: `{"PublicIP":"192.168.100.50"}`,
		want: subnet.Lease{Name: "10.244.5.0-24", Subnet: netip.MustParsePrefix("10.244.5.0/24"),
			Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.100.50")}},
	}, {
		name:  "dual stack key and value",
		key:   "10.244.1.0-24&fd00:0:0:1::-64",
		value: `{"PublicIP":"192.168.100.11","PublicIPv6":"fd00:100::11","BackendType":"vxlan","BackendData":{"VNI":1},"BackendV6Data":{"VNI":1}}`,
		want: subnet.Lease{
			Name:       "10.244.1.0-24&fd00:0:0:1::-64",
			Subnet:     netip.MustParsePrefix("10.244.1.0/24"),
			IPv6Subnet: netip.MustParsePrefix("fd00:0:0:1::/64"),
			Attrs: subnet.LeaseAttrs{
				PublicIP:      netip.MustParseAddr("192.168.100.11"),
				PublicIPv6:    netip.MustParseAddr("fd00:100::11"),
				BackendType:   "vxlan",
				BackendData:   json.RawMessage(`{"VNI":1}`),
				BackendV6Data: json.RawMessage(`{"VNI":1}`),
			},
		},
	}, {
		name:  "empty public IP strings and unknown fields",
		key:   "10.244.7.0-24",
		value: `{"PublicIP":"","PublicIPv6":"","BackendType":"host-gw","Extra":[1,2]}`,
		want: subnet.Lease{Name: "10.244.7.0-24", Subnet: netip.MustParsePrefix("10.244.7.0/24"),
			Attrs: subnet.LeaseAttrs{BackendType: "host-gw"}},
	}, {
		name:  "null backend data",
		key:   "10.244.8.0-24",
		value: `{"PublicIP":"192.168.100.18","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}`,
		want: subnet.Lease{Name: "10.244.8.0-24", Subnet: netip.MustParsePrefix("10.244.8.0/24"),
			Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.168.100.18"), BackendType: "host-gw",
				BackendData: json.RawMessage("null")}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := leaseFromKV(tc.key, []byte(tc.value), 1)
			if err != nil {
				t.Fatal(err)
			}
			assertLeaseEqual(t, l, tc.want)
		})
	}
}

func TestLeaseFromKVMalformedValue(t *testing.T) {
	for _, value := range []string{
		``,
		`null-ish`,
		`[]`,
		`"192.168.100.11"`,
		`{"PublicIP":192}`,
		`{"PublicIP":"192.168.100"}`,
		`{"PublicIP":"fd00::1"}`,          // IPv6 where IPv4 belongs
		`{"PublicIPv6":"192.168.100.11"}`, // and the other way round
		`{"PublicIP":"192.168.100.11","BackendData":{`,
		`{"PublicIP":"192.168.100.11","BackendType":7}`,
	} {
		_, err := leaseFromKV("10.244.1.0-24", []byte(value), 1)
		if err == nil {
			t.Errorf("leaseFromKV accepted value %q", value)
			continue
		}
		if !strings.Contains(err.Error(), "10.244.1.0-24") {
			t.Errorf("error for value %q does not name the lease: %v", value, err)
		}
	}
}

func assertLeaseEqual(t *testing.T, got, want subnet.Lease) {
	t.Helper()
	if got.Name != want.Name || got.Subnet != want.Subnet || got.IPv6Subnet != want.IPv6Subnet ||
		got.Attrs.PublicIP != want.Attrs.PublicIP || got.Attrs.PublicIPv6 != want.Attrs.PublicIPv6 ||
		got.Attrs.BackendType != want.Attrs.BackendType ||
		!bytes.Equal(got.Attrs.BackendData, want.Attrs.BackendData) ||
		!bytes.Equal(got.Attrs.BackendV6Data, want.Attrs.BackendV6Data) {
		t.Errorf("lease:\n got %+v (data %s, v6 data %s)\nwant %+v (data %s, v6 data %s)",
			got, got.Attrs.BackendData, got.Attrs.BackendV6Data, want, want.Attrs.BackendData, want.Attrs.BackendV6Data)
	}
}

// A lease value longer than subnet.MaxLeaseValueBytes is refused unread,
// and a malformed one is quoted in a bounded way.
func TestLeaseFromKVOversized(t *testing.T) {
	big := `{"PublicIP":"192.168.100.11","BackendType":"vxlan","BackendData":"` + strings.Repeat("x", 10<<20) + `"}`
	_, err := leaseFromKV("10.244.1.0-24", []byte(big), 5)
	if err == nil || len(err.Error()) > 300 || !strings.Contains(err.Error(), "more than the 16384") {
		t.Fatalf("10 MB value: %.300v (%d bytes)", err, len(fmt.Sprint(err)))
	}
	bad := strings.Repeat("{", 16000)
	_, err = leaseFromKV("10.244.1.0-24", []byte(bad), 5)
	if err == nil || len(err.Error()) > 600 {
		t.Fatalf("malformed value: %.300v (%d bytes)", err, len(fmt.Sprint(err)))
	}
	l, err := leaseFromKV("10.244.1.0-24", []byte(`{"PublicIP":"192.168.100.11"}`), 42)
	if err != nil || l.Created != 42 {
		t.Fatalf("lease %+v, %v; want Created 42", l, err)
	}
}
