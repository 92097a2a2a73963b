package lab

// Readers of a namespace's kernel state, from the JSON output of ip and
// bridge (iproute2), for assertions.

import (
	"encoding/json"
	"fmt"
	"slices"
)

// Link is one entry of `ip -d -j link show`.
type Link struct {
	IfIndex   int      `json:"ifindex"`
	IfName    string   `json:"ifname"`
	Flags     []string `json:"flags"`
	MTU       int      `json:"mtu"`
	OperState string   `json:"operstate"`
	Address   string   `json:"address"`
	LinkInfo  struct {
		InfoKind string         `json:"info_kind"`
		InfoData map[string]any `json:"info_data"`
	} `json:"linkinfo"`
}

// IsUp reports whether the link is administratively up.
func (l Link) IsUp() bool { return slices.Contains(l.Flags, "UP") }

// Route is one entry of `ip -j route show`.
type Route struct {
	Dst      string   `json:"dst"`
	Gateway  string   `json:"gateway"`
	Dev      string   `json:"dev"`
	Protocol string   `json:"protocol"`
	Type     string   `json:"type"`
	Flags    []string `json:"flags"`
}

// Onlink reports whether the route has the onlink flag.
func (r Route) Onlink() bool { return slices.Contains(r.Flags, "onlink") }

func (r Route) String() string {
	s := r.Dst
	if r.Type != "" && r.Type != "unicast" {
		s = r.Type + " " + s
	}
	if r.Gateway != "" {
		s += " via " + r.Gateway
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	if r.Protocol != "" {
		s += " proto " + r.Protocol
	}
	for _, f := range r.Flags {
		s += " " + f
	}
	return s
}

// Neighbour is one entry of `ip -j neigh show`.
type Neighbour struct {
	Dst    string   `json:"dst"`
	Dev    string   `json:"dev"`
	LLAddr string   `json:"lladdr"`
	State  []string `json:"state"`
}

func (n Neighbour) String() string {
	return fmt.Sprintf("%s dev %s lladdr %s %v", n.Dst, n.Dev, n.LLAddr, n.State)
}

// FDBEntry is one entry of `bridge -j fdb show`.
type FDBEntry struct {
	MAC    string   `json:"mac"`
	IfName string   `json:"ifname"`
	Dst    string   `json:"dst"`
	Flags  []string `json:"flags"`
	State  string   `json:"state"`
}

func (f FDBEntry) String() string {
	return fmt.Sprintf("%s dev %s dst %s %v %s", f.MAC, f.IfName, f.Dst, f.Flags, f.State)
}

// Addr is one address of `ip -j addr show`.
type Addr struct {
	Family    string `json:"family"`
	Local     string `json:"local"`
	PrefixLen int    `json:"prefixlen"`
	Scope     string `json:"scope"` // "global", "link", "host"
	NoDAD     bool   `json:"nodad"` // IPv6: added without duplicate address detection
}

func (a Addr) String() string { return fmt.Sprintf("%s/%d", a.Local, a.PrefixLen) }

// ShowLink returns the details of one link of namespace ns.
func ShowLink(ns, dev string) (Link, error) {
	var links []Link
	if err := execJSON(ns, &links, "ip", "-d", "-j", "link", "show", "dev", dev); err != nil {
		return Link{}, err
	}
	if len(links) != 1 {
		return Link{}, fmt.Errorf("ip link show dev %s in %s: %d entries", dev, ns, len(links))
	}
	return links[0], nil
}

// ShowAddrs returns the IPv4 addresses of dev.
func ShowAddrs(ns, dev string) ([]Addr, error) { return showAddrs(ns, dev, "-4") }

// ShowAddrs6 returns the IPv6 addresses of dev (link-local ones too).
func ShowAddrs6(ns, dev string) ([]Addr, error) { return showAddrs(ns, dev, "-6") }

func showAddrs(ns, dev, family string) ([]Addr, error) {
	var ifaces []struct {
		AddrInfo []Addr `json:"addr_info"`
	}
	if err := execJSON(ns, &ifaces, "ip", family, "-j", "addr", "show", "dev", dev); err != nil {
		return nil, err
	}
	var addrs []Addr
	for _, i := range ifaces {
		addrs = append(addrs, i.AddrInfo...)
	}
	return addrs, nil
}

// ShowRoutes returns the IPv4 routes of the main table.
func ShowRoutes(ns string) ([]Route, error) { return showRoutes(ns, "-4") }

// ShowRoutes6 returns the IPv6 routes of the main table.
func ShowRoutes6(ns string) ([]Route, error) { return showRoutes(ns, "-6") }

func showRoutes(ns, family string) ([]Route, error) {
	var routes []Route
	err := execJSON(ns, &routes, "ip", family, "-j", "route", "show", "table", "main")
	return routes, err
}

// ShowNeighbours returns the IPv4 neighbour entries.
func ShowNeighbours(ns string) ([]Neighbour, error) { return showNeighbours(ns, "-4") }

// ShowNeighbours6 returns the IPv6 neighbour entries.
func ShowNeighbours6(ns string) ([]Neighbour, error) { return showNeighbours(ns, "-6") }

func showNeighbours(ns, family string) ([]Neighbour, error) {
	var neighs []Neighbour
	err := execJSON(ns, &neighs, "ip", family, "-j", "neigh", "show")
	return neighs, err
}

// ShowFDB returns the forwarding database entries of dev.
func ShowFDB(ns, dev string) ([]FDBEntry, error) {
	var entries []FDBEntry
	if err := execJSON(ns, &entries, "bridge", "-j", "fdb", "show", "dev", dev); err != nil {
		return nil, err
	}
	for i := range entries {
		if entries[i].IfName == "" {
			entries[i].IfName = dev
		}
	}
	return entries, nil
}

func execJSON(ns string, v any, argv ...string) error {
	out, err := Exec(ns, argv...)
	if err != nil {
		return err
	}
	if len(out) == 0 {
		return nil
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("parsing the output of %v: %w", argv, err)
	}
	return nil
}
