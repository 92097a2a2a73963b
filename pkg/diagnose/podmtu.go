package diagnose

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// PodBridge is the bridge the CNI plugin hangs the node's pods on: the
// host side of each pod's veth is one of its ports, with the pod's MTU.
const PodBridge = "cni0"

// maxNamedPorts bounds the veths a problem line names; maxStaleRows the
// rows of the text section. The JSON report lists them all.
const (
	maxNamedPorts = 5
	maxStaleRows  = 10
)

// Bridge is the node's pod bridge as the kernel has it.
type Bridge struct {
	Name string
	// Ports are the links whose master is the bridge.
	Ports []BridgePort
}

// BridgePort is one port of the pod bridge: the host side of a pod's veth.
type BridgePort struct {
	Name string
	MTU  int
}

// podMTU compares the MTU of each pod (the port of its veth on cni0) with
// the MTU pods must have, the backend's (FLANNEL_MTU). Pods keep the MTU
// they were created with when the underlay's MTU changes, until they are
// recreated. Without cni0 (no pod yet) there is nothing to compare.
func (b *builder) podMTU() {
	r := &b.r.PodMTU
	r.Want, r.Stale = b.in.Backend.MTU(), []PortMTU{}
	br := b.in.PodBridge
	if br == nil {
		return
	}
	r.Bridge, r.Ports = br.Name, len(br.Ports)
	if r.Want <= 0 {
		return
	}
	for _, p := range br.Ports {
		if p.MTU != r.Want {
			r.Stale = append(r.Stale, PortMTU{Port: p.Name, MTU: p.MTU})
		}
	}
	if len(r.Stale) == 0 {
		return
	}
	slices.SortFunc(r.Stale, func(a, c PortMTU) int { return strings.Compare(a.Port, c.Port) })
	b.problem("%s", staleProblem(r.Want, r.Stale))
}

// staleProblem is the problem line of the pods with another MTU than
// want: how many, their MTUs, and the first maxNamedPorts of their veths.
func staleProblem(want int, stale []PortMTU) string {
	var mtus []int
	names := make([]string, 0, maxNamedPorts)
	for i, p := range stale {
		if !slices.Contains(mtus, p.MTU) {
			mtus = append(mtus, p.MTU)
		}
		if i < maxNamedPorts {
			names = append(names, p.Port)
		}
	}
	slices.Sort(mtus)
	list := strings.Join(names, ", ")
	if more := len(stale) - len(names); more > 0 {
		list += fmt.Sprintf(" and %d more", more)
	}
	if len(stale) == 1 {
		return fmt.Sprintf("1 pod has MTU %s, not %d: recreate it (its veth: %s)", orList(mtus), want, list)
	}
	return fmt.Sprintf("%d pods have MTU %s, not %d: recreate them (their veths: %s)", len(stale), orList(mtus), want, list)
}

// orList is "1450", "1450 or 1500", "1400, 1450 or 1500".
func orList(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}
