package backend

import (
	"strings"
	"testing"

	"github.com/flanneld/flanneld/subnet"
)

// Upstream's ipip and ipsec are refused at start with the reason.
func TestUnsupportedBackendTypes(t *testing.T) {
	r := Registry{"vxlan": nil, "wireguard": nil}
	for typ, why := range map[string]string{"ipip": "ipip link type", "ipsec": "strongSwan"} {
		_, err := r.New(Params{Config: &subnet.Config{BackendType: typ}})
		want := `backend type "` + typ + `" is not supported by this flanneld: `
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), why) ||
			!strings.Contains(err.Error(), "vxlan, wireguard") {
			t.Errorf("%s: error %v; want %q naming the reason (%s) and the supported types", typ, err, want, why)
		}
	}
	if _, err := r.New(Params{Config: &subnet.Config{BackendType: "frob"}}); err == nil || !strings.Contains(err.Error(), "unknown backend type") {
		t.Errorf("unknown type: %v", err)
	}
}
