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
		fmt.Fprintf(t, "network\t%s\n", r.Network)
		fmt.Fprintf(t, "interface\t%s\n", join(r.Interface.Name, r.Interface.Address, mtu(r.Interface.MTU)))
	})

	l := r.Lease
	p.section(func(t io.Writer) {
		fmt.Fprintln(t, "LEASE\tON THE NODE\tLOCAL\tSTATUS")
		subnetStatus := l.SubnetStatus
		if subnetStatus != StatusOK {
			subnetStatus = "outside network " + r.Network
		}
		fmt.Fprintf(t, "subnet\t%s\t\t%s\n", dash(l.Subnet), subnetStatus)
		for _, row := range []struct {
			name string
			c    Compared
		}{{"public IP", l.PublicIP}, {"backend type", l.BackendType}, {"backend data", l.BackendData}} {
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", row.name, dash(row.c.Advertised), dash(row.c.Local), row.c.Status)
		}
	})

	p.section(func(t io.Writer) {
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
	})

	p.section(func(t io.Writer) {
		fmt.Fprintln(t, "PEER\tSUBNET\tPUBLIC IP\tKIND\tEXPECTED\tSTATUS")
		if len(r.Peers) == 0 {
			fmt.Fprintln(t, "(no peers)")
		}
		for _, pr := range r.Peers {
			first := true
			row := func(kind, want, st string) {
				if first {
					fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n", pr.Name, pr.Subnet, pr.PublicIP, kind, want, st)
					first = false
					return
				}
				fmt.Fprintf(t, "\t\t\t%s\t%s\t%s\n", kind, want, st)
			}
			for _, e := range pr.Entries {
				st := e.Status
				if e.Have != "" {
					st += ": kernel has " + e.Have
				}
				row(e.Kind, e.Want, st)
			}
			if pr.Probe != nil {
				st := "reachable"
				if !pr.Probe.Reachable {
					st = "unreachable"
				}
				row("probe", "ping "+pr.Probe.Target, st)
			}
			if first {
				row("-", "(no entries)", "")
			}
		}
	})

	if len(r.Skipped) > 0 {
		p.section(func(t io.Writer) {
			fmt.Fprintln(t, "SKIPPED PEER\tSUBNET\tREASON")
			for _, s := range r.Skipped {
				fmt.Fprintf(t, "%s\t%s\t%s\n", s.Name, dash(s.Subnet), s.Reason)
			}
		})
	}

	if len(r.Stale) > 0 {
		p.section(func(t io.Writer) {
			fmt.Fprintln(t, "STALE ENTRY (a running flanneld removes it)")
			for _, s := range r.Stale {
				fmt.Fprintln(t, s)
			}
		})
	}

	p.section(func(t io.Writer) {
		heading := "FIREWALL RULE"
		if r.Firewall.Mode != "" {
			heading += " (" + r.Firewall.Mode + ")"
		}
		fmt.Fprintln(t, heading+"\tSTATUS")
		if len(r.Firewall.Rules) == 0 {
			fmt.Fprintln(t, "(none: neither --ip-masq nor --iptables-forward-rules)")
		}
		for _, rule := range r.Firewall.Rules {
			fmt.Fprintf(t, "%s\t%s\n", rule.Rule, rule.Status)
		}
		for _, problem := range r.Firewall.Problems {
			fmt.Fprintf(t, "%s\t%s\n", problem, StatusDiffers)
		}
		for _, left := range r.Firewall.OtherMode {
			fmt.Fprintf(t, "%s\tleft over from the other mode\n", left)
		}
	})

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
