package diagnose

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteJSON prints r as an indented JSON document.
func WriteJSON(w io.Writer, r Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText prints r as aligned tables, one section after the other, and
// ends with the list of problems.
func WriteText(w io.Writer, r Report) error {
	p := &printer{w: w}
	p.section(func(t io.Writer) {
		fmt.Fprintf(t, "node\t%s\n", r.Node)
		fmt.Fprintf(t, "backend\t%s\n", r.Backend)
		fmt.Fprintf(t, "network\t%s\n", join(r.Network, r.IPv6Network))
		fmt.Fprintf(t, "interface\t%s\n", join(r.Interface.Name, r.Interface.Address, r.Interface.AddressIPv6, mtu(r.Interface.MTU)))
	})

	p.section(func(t io.Writer) { writeLease(t, r) })

	p.section(func(t io.Writer) { writeDevices(t, r) })

	p.section(func(t io.Writer) { writePeers(t, r.Peers) })

	if len(r.Skipped) > 0 {
		p.section(func(t io.Writer) {
			fmt.Fprintln(t, "SKIPPED PEER\tSUBNET\tREASON")
			for _, s := range r.Skipped {
				fmt.Fprintf(t, "%s\t%s\t%s\n", s.Name, join(s.Subnet, s.IPv6Subnet), s.Reason)
			}
		})
	}

	if len(r.Unreachable) > 0 {
		p.section(func(t io.Writer) { writeUnreachable(t, r.Unreachable) })
	}

	if len(r.Stale) > 0 {
		p.section(func(t io.Writer) {
			fmt.Fprintln(t, "STALE ENTRY (a running flanneld removes it)")
			for _, s := range r.Stale {
				fmt.Fprintln(t, s)
			}
		})
	}

	p.section(func(t io.Writer) { writeFirewall(t, r.Firewall) })

	e := r.SubnetEnv
	p.section(func(t io.Writer) {
		fmt.Fprintf(t, "SUBNET FILE %s\tEXPECTED\tON DISK\tSTATUS\n", e.Path)
		if e.Status == StatusMissing {
			fmt.Fprintln(t, "(the file does not exist)\t\t\tmissing")
		}
		if e.Error != "" {
			fmt.Fprintf(t, "(%s)\t\t\terror\n", e.Error)
		}
		if e.Status != StatusMissing && e.Error == "" {
			for _, line := range e.Lines {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", line.Key, dash(line.Expected), dash(line.OnDisk), line.Status)
			}
		}
	})

	if r.PodMTU.Bridge != "" {
		p.section(func(t io.Writer) { writePodMTU(t, r.PodMTU) })
	}

	if r.OK {
		fmt.Fprintln(p.w, "RESULT: ok, the node is as flanneld would make it")
	} else {
		n := len(r.Problems)
		noun := "problems"
		if n == 1 {
			noun = "problem"
		}
		fmt.Fprintf(p.w, "RESULT: %d %s\n", n, noun)
		for _, pr := range r.Problems {
			fmt.Fprintf(p.w, "  - %s\n", pr)
		}
	}
	return p.err
}

// writeLease prints the LEASE section: the rows of the enabled address
// families (a disabled family's rows have no status, or are absent).
func writeLease(t io.Writer, r Report) {
	l := r.Lease
	fmt.Fprintln(t, "LEASE\tON THE NODE\tLOCAL\tSTATUS")
	subnetRow := func(name, sn, st, network string) {
		switch {
		case st == StatusOK:
		case sn == "":
			st = "missing"
		default:
			st = "outside network " + network
		}
		fmt.Fprintf(t, "%s\t%s\t\t%s\n", name, dash(sn), st)
	}
	compared := func(name string, c *Compared) {
		if c != nil && c.Status != "" {
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", name, dash(c.Advertised), dash(c.Local), c.Status)
		}
	}
	if l.SubnetStatus != "" {
		subnetRow("subnet", l.Subnet, l.SubnetStatus, r.Network)
	}
	if l.IPv6SubnetStatus != "" {
		subnetRow("IPv6 subnet", l.IPv6Subnet, l.IPv6SubnetStatus, r.IPv6Network)
	}
	compared("public IP", &l.PublicIP)
	compared("public IPv6", l.PublicIPv6)
	compared("backend type", &l.BackendType)
	compared("backend data", &l.BackendData)
	compared("backend v6 data", l.BackendV6Data)
}

// writeDevices prints the DEVICE section.
func writeDevices(t io.Writer, r Report) {
	fmt.Fprintln(t, "DEVICE\tTYPE\tMAC\tMTU\tSTATE\tADDRESSES\tSTATUS")
	if len(r.Devices) == 0 {
		fmt.Fprintf(t, "(none: %s uses the external interface)\n", r.Backend)
	}
	for _, d := range r.Devices {
		if d.Status == StatusMissing {
			fmt.Fprintf(t, "-\t\t\t\t\t\tmissing: %s\n", d.Detail)
			continue
		}
		state := "up"
		if !d.Up {
			state = "down"
		}
		typ := d.Type
		if d.VNI != 0 {
			typ += fmt.Sprintf(" vni %d", d.VNI)
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.Name, typ, dash(d.MAC), d.MTU, state,
			dash(strings.Join(d.Addresses, ",")), status(d.Status, d.Detail))
	}
}

// writePodMTU prints the POD VETH section: the ports of the pods' bridge
// with another MTU than the pods must have (the first maxStaleRows), then
// how many have the right one.
func writePodMTU(t io.Writer, pm PodMTUReport) {
	fmt.Fprintf(t, "POD VETH (%s)\tMTU\tSTATUS\n", pm.Bridge)
	if pm.Ports == 0 {
		fmt.Fprintln(t, "(no pods)\t\t")
		return
	}
	for i, s := range pm.Stale {
		if i == maxStaleRows {
			fmt.Fprintf(t, "(%d more)\t\t%s (--json lists them)\n", len(pm.Stale)-i, StatusDiffers)
			break
		}
		fmt.Fprintf(t, "%s\t%d\t%s: want %d, recreate the pod\n", s.Port, s.MTU, StatusDiffers, pm.Want)
	}
	if ok := pm.Ports - len(pm.Stale); ok > 0 {
		what := "veths"
		if ok == 1 {
			what = "veth"
		}
		if len(pm.Stale) > 0 {
			what = "other " + what
		}
		fmt.Fprintf(t, "(%d %s)\t%d\t%s\n", ok, what, pm.Want, StatusOK)
	}
}

// writeFirewall prints the FIREWALL RULE section.
func writeFirewall(t io.Writer, f FirewallReport) {
	heading := "FIREWALL RULE"
	if f.Mode != "" {
		heading += " (" + f.Mode + ")"
	}
	fmt.Fprintln(t, heading+"\tSTATUS")
	if len(f.Rules) == 0 {
		fmt.Fprintln(t, "(none: neither --ip-masq nor --iptables-forward-rules)")
	}
	for _, rule := range f.Rules {
		fmt.Fprintf(t, "%s\t%s\n", rule.Rule, rule.Status)
	}
	for _, problem := range f.Problems {
		fmt.Fprintf(t, "%s\t%s\n", problem, StatusDiffers)
	}
	for _, left := range f.OtherMode {
		fmt.Fprintf(t, "%s\tleft over from the other mode\n", left)
	}
}

// writePeers prints the PEER section: per peer its entries and probes, its
// IPv4 subnet and public IP on the first row, its IPv6 ones on the next.
func writePeers(t io.Writer, peers []PeerReport) {
	fmt.Fprintln(t, "PEER\tSUBNET\tPUBLIC IP\tKIND\tEXPECTED\tSTATUS")
	if len(peers) == 0 {
		fmt.Fprintln(t, "(no peers)")
	}
	for _, pr := range peers {
		var cells [][3]string // name, subnet, public IP of the first rows
		if pr.Subnet != "" || pr.IPv6Subnet == "" {
			cells = append(cells, [3]string{"", pr.Subnet, pr.PublicIP})
		}
		if pr.IPv6Subnet != "" {
			cells = append(cells, [3]string{"", pr.IPv6Subnet, pr.PublicIPv6})
		}
		cells[0][0] = pr.Name
		rows := 0
		row := func(kind, want, st string) {
			var c [3]string
			if rows < len(cells) {
				c = cells[rows]
			}
			rows++
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n", c[0], c[1], c[2], kind, want, st)
		}
		for _, e := range pr.Entries {
			st := e.Status
			if e.Have != "" {
				st += ": kernel has " + e.Have
			}
			row(e.Kind, e.Want, st)
		}
		for _, probe := range []*ProbeReport{pr.Probe, pr.ProbeIPv6} {
			if probe == nil {
				continue
			}
			st := "reachable"
			if !probe.Reachable {
				st = "unreachable"
			}
			row("probe", "ping "+probe.Target, st)
		}
		if rows == 0 {
			row("-", "(no entries)", "")
		}
		for rows < len(cells) {
			row("", "", "")
		}
	}
}

// printer prints sections separated by blank lines, each aligned on its
// own.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) section(fill func(t io.Writer)) {
	t := tabwriter.NewWriter(p.w, 0, 8, 2, ' ', 0)
	fill(t)
	if err := t.Flush(); err != nil && p.err == nil {
		p.err = err
	}
	if _, err := fmt.Fprintln(p.w); err != nil && p.err == nil {
		p.err = err
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func status(s, detail string) string {
	if detail == "" {
		return s
	}
	return s + ": " + detail
}

func mtu(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("mtu %d", n)
}

// join joins the non-empty parts with spaces.
func join(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return dash(strings.Join(out, " "))
}
