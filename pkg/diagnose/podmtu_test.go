package diagnose

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// withPods is the clean node with a cni0 bridge whose ports have the MTUs.
func withPods(t *testing.T, mtus ...int) Inputs {
	t.Helper()
	in, _ := cleanInputs(t)
	in.PodBridge = &Bridge{Name: PodBridge, Ports: []BridgePort{}}
	for i, m := range mtus {
		// In reverse name order: the report sorts them.
		in.PodBridge.Ports = append(in.PodBridge.Ports, BridgePort{Name: fmt.Sprintf("veth%02d", len(mtus)-1-i), MTU: m})
	}
	return in
}

// TestBuildPodMTU: pods whose veth on cni0 has another MTU than the
// backend's (FLANNEL_MTU) are reported, with one problem line; a node
// without cni0, or whose pods all have the MTU, has no problem.
func TestBuildPodMTU(t *testing.T) {
	t.Run("no cni0", func(t *testing.T) {
		in, _ := cleanInputs(t)
		r, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		want := PodMTUReport{Want: 1450, Stale: []PortMTU{}}
		if !r.OK || !podMTUEqual(r.PodMTU, want) {
			t.Errorf("ok %v, podMTU %+v, problems %q; want ok, %+v", r.OK, r.PodMTU, r.Problems, want)
		}
		if text, _ := render(t, r); strings.Contains(string(text), "POD VETH") {
			t.Errorf("text has a POD VETH section without cni0:\n%s", text)
		}
	})

	for _, c := range []struct {
		name string
		mtus []int
		row  string // a row of the text section
	}{
		{"cni0 without pods", nil, "(no pods)"},
		{"one pod", []int{1450}, "(1 veth) 1450 ok"},
		{"every pod has the MTU", []int{1450, 1450, 1450}, "(3 veths) 1450 ok"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := Build(withPods(t, c.mtus...))
			if err != nil {
				t.Fatal(err)
			}
			want := PodMTUReport{Bridge: "cni0", Want: 1450, Ports: len(c.mtus), Stale: []PortMTU{}}
			if !r.OK || !podMTUEqual(r.PodMTU, want) {
				t.Errorf("ok %v, podMTU %+v, problems %q; want ok, %+v", r.OK, r.PodMTU, r.Problems, want)
			}
			if text, _ := render(t, r); !hasRow(string(text), c.row) {
				t.Errorf("text lacks the row %q:\n%s", c.row, text)
			}
		})
	}

	t.Run("pods created before the MTU changed", func(t *testing.T) {
		r, err := Build(withPods(t, 1500, 1450, 1500, 1450))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"2 pods have MTU 1500, not 1450: recreate them (their veths: veth01, veth03)"}
		if r.OK || !slices.Equal(r.Problems, want) {
			t.Errorf("ok %v, problems %q; want %q", r.OK, r.Problems, want)
		}
		text, js := render(t, r)
		checkGolden(t, "podmtu.txt", text)
		var back struct {
			PodMTU json.RawMessage `json:"podMTU"`
		}
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatal(err)
		}
		wantJSON := `{"bridge":"cni0","want":1450,"ports":4,"stale":[{"port":"veth01","mtu":1500},{"port":"veth03","mtu":1500}]}`
		if got := canonicalJSON(back.PodMTU); got != canonicalJSON(json.RawMessage(wantJSON)) {
			t.Errorf("podMTU %s, want %s", got, wantJSON)
		}
	})

	t.Run("one pod", func(t *testing.T) {
		r, err := Build(withPods(t, 1450, 8950))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"1 pod has MTU 8950, not 1450: recreate it (its veth: veth00)"}
		if !slices.Equal(r.Problems, want) {
			t.Errorf("problems %q, want %q", r.Problems, want)
		}
	})

	t.Run("many pods", func(t *testing.T) {
		// 23 pods with two old MTUs (two changes, none recreated), 2 new.
		var mtus []int
		for i := range 25 {
			switch {
			case i < 2:
				mtus = append(mtus, 1450)
			case i%3 == 0:
				mtus = append(mtus, 8950)
			default:
				mtus = append(mtus, 1500)
			}
		}
		r, err := Build(withPods(t, mtus...))
		if err != nil {
			t.Fatal(err)
		}
		if len(r.PodMTU.Stale) != 23 || r.PodMTU.Ports != 25 {
			t.Errorf("podMTU %+v, want 23 of 25 ports stale", r.PodMTU)
		}
		if !slices.IsSortedFunc(r.PodMTU.Stale, func(a, b PortMTU) int { return strings.Compare(a.Port, b.Port) }) {
			t.Errorf("stale ports not sorted: %+v", r.PodMTU.Stale)
		}
		want := []string{"23 pods have MTU 1500 or 8950, not 1450: recreate them (their veths: veth00, veth01, veth02, veth03, veth04 and 18 more)"}
		if !slices.Equal(r.Problems, want) {
			t.Errorf("problems %q, want %q", r.Problems, want)
		}
		text, _ := render(t, r)
		checkGolden(t, "podmtu_many.txt", text)
	})

	t.Run("no MTU to compare with", func(t *testing.T) {
		in := withPods(t, 1500)
		in.Backend = zeroMTUBackend{}
		r, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.PodMTU.Stale) != 0 || slices.ContainsFunc(r.Problems, func(p string) bool { return strings.Contains(p, "pod") }) {
			t.Errorf("podMTU %+v, problems %q; want nothing compared", r.PodMTU, r.Problems)
		}
	})
}

// zeroMTUBackend tells no MTU.
type zeroMTUBackend struct{ fakeBackend }

func (zeroMTUBackend) MTU() int { return 0 }

// hasRow reports whether text has a line with the fields of row.
func hasRow(text, row string) bool {
	want := strings.Join(strings.Fields(row), " ")
	for _, line := range strings.Split(text, "\n") {
		if strings.Join(strings.Fields(line), " ") == want {
			return true
		}
	}
	return false
}

func podMTUEqual(a, b PodMTUReport) bool {
	return a.Bridge == b.Bridge && a.Want == b.Want && a.Ports == b.Ports && a.Stale != nil && slices.Equal(a.Stale, b.Stale)
}
