package scale

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// printTable writes the figures, one row per N, then the RSS growth per
// extra peer between consecutive sizes.
func printTable(w io.Writer, results []result, s settings) {
	fmt.Fprintf(w, "flanneld scale benchmark: vxlan, kubelet-sized Nodes, %d CPUs, flanneld -v=%d\n", cpus(), s.verbosity)
	fmt.Fprintf(w, "floor = one protobuf LIST of all Nodes + bridge/ip -batch of the same FDB, neighbour and route entries; ratio = start-to-programmed / floor\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "N\tstart-to-programmed s\tfloor s (list + batch)\tratio\tadd-%d s\tremove-%d s\tpeak RSS MiB\tCPU s\t\n", s.churn, s.churn)
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(tw, "%d\terror: %v\t\t\t\t\t\t\t\n", r.n, r.err)
			continue
		}
		programmed, ratio := "did not converge", "-"
		if r.converged {
			programmed = seconds(r.startToProgrammed)
			ratio = fmt.Sprintf("%.2f", r.startToProgrammed.Seconds()/r.floor().Seconds())
		} else {
			programmed = fmt.Sprintf(">%s (%d routes)", seconds(s.timeout), r.final.routes)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s (%s + %s)\t%s\t%s\t%s\t%.1f\t%.2f\t\n",
			r.n, programmed, seconds(r.floor()), seconds(r.listFloor), seconds(r.batchFloor), ratio,
			churnFigure(r.addOK, r.add, r.converged), churnFigure(r.removeOK, r.remove, r.converged),
			mib(r.end.peakRSSKiB), r.end.cpu.Seconds())
	}
	tw.Flush()
	fmt.Fprintf(w, "add/remove: from the first create/delete call until the kernel matches (the API calls themselves take part of it; see the *_after_api metrics)\n")
	for _, g := range growths(results) {
		fmt.Fprintf(w, "peak RSS growth from N=%d to N=%d: %.2f KiB per extra peer\n", g.from, g.to, g.kibPerPeer)
	}
}

func churnFigure(ok bool, d time.Duration, converged bool) string {
	switch {
	case !converged:
		return "-"
	case !ok:
		return fmt.Sprintf(">%s", seconds(churnTimeout))
	default:
		return seconds(d)
	}
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

type growth struct {
	from, to   int
	kibPerPeer float64
}

// growths is the peak RSS growth per extra peer between consecutive
// measured sizes (ascending), e.g. 5,000 to 10,000.
func growths(results []result) []growth {
	var out []growth
	for i := range results {
		for j := range results {
			a, b := results[i], results[j]
			if a.err != nil || b.err != nil || b.n <= a.n {
				continue
			}
			// only consecutive sizes: no measured size strictly between
			between := false
			for _, c := range results {
				if c.err == nil && c.n > a.n && c.n < b.n {
					between = true
				}
			}
			if !between {
				out = append(out, growth{a.n, b.n, float64(b.end.peakRSSKiB-a.end.peakRSSKiB) / float64(b.n-a.n)})
			}
		}
	}
	return out
}

// printMetrics writes every figure as a "METRIC name=value" line.
func printMetrics(w io.Writer, results []result, s settings) {
	metric := func(name string, format string, v any) {
		fmt.Fprintf(w, "METRIC %s="+format+"\n", name, v)
	}
	for _, r := range results {
		if r.err != nil {
			continue
		}
		p := fmt.Sprintf("n%d_", r.n)
		metric(p+"converged", "%t", r.converged)
		if r.converged {
			metric(p+"start_to_programmed_seconds", "%.3f", r.startToProgrammed.Seconds())
			metric(p+"ratio_to_floor", "%.3f", r.startToProgrammed.Seconds()/r.floor().Seconds())
		}
		metric(p+"first_route_seconds", "%.3f", r.firstRoute.Seconds())
		metric(p+"floor_seconds", "%.3f", r.floor().Seconds())
		metric(p+"floor_list_seconds", "%.3f", r.listFloor.Seconds())
		metric(p+"floor_batch_seconds", "%.3f", r.batchFloor.Seconds())
		metric(p+"list_mib", "%.2f", float64(r.listBytes)/(1<<20))
		if r.probes.measured {
			metric(p+"probe_pps", "%.2f", r.probes.pps)
			metric(p+"probe_cpu_percent", "%.2f", 100*r.probes.cpuShare)
			metric(p+"probe_rss_growth_mib", "%.1f", r.probes.rssGrowthMiB)
		}
		if r.addOK {
			metric(fmt.Sprintf("%sadd%d_seconds", p, s.churn), "%.3f", r.add.Seconds())
			metric(fmt.Sprintf("%sadd%d_after_api_seconds", p, s.churn), "%.3f", r.addAfterAPI.Seconds())
		}
		if r.removeOK {
			metric(fmt.Sprintf("%sremove%d_seconds", p, s.churn), "%.3f", r.remove.Seconds())
			metric(fmt.Sprintf("%sremove%d_after_api_seconds", p, s.churn), "%.3f", r.removeAfter.Seconds())
		}
		metric(p+"peak_rss_mib", "%.1f", mib(r.end.peakRSSKiB))
		metric(p+"rss_at_programmed_mib", "%.1f", mib(r.atProgrammed.rssKiB))
		metric(p+"peak_rss_at_programmed_mib", "%.1f", mib(r.atProgrammed.peakRSSKiB))
		for _, m := range r.daemon.list() {
			metric(p+m.name, m.format, m.value)
		}
		metric(p+"rss_anon_at_end_mib", "%.1f", mib(r.end.anonKiB))
		metric(p+"rss_file_at_end_mib", "%.1f", mib(r.end.fileKiB))
		metric(p+"cpu_seconds", "%.2f", r.end.cpu.Seconds())
		metric(p+"cpu_at_programmed_seconds", "%.2f", r.atProgrammed.cpu.Seconds())
		metric(p+"log_bytes", "%d", r.logBytes)
		metric(p+"log_error_lines", "%d", r.logErrors)
		metric(p+"create_nodes_per_second", "%.0f", r.createRate)
	}
	for _, g := range growths(results) {
		metric(fmt.Sprintf("rss_growth_kib_per_peer_%d_%d", g.from, g.to), "%.2f", g.kibPerPeer)
	}
}
