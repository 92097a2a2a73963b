package diagnose

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/flanneld/flanneld/pkg/daemon"
)

// UnreachableReport is a peer the running daemon's probes find
// unreachable through the overlay.
type UnreachableReport struct {
	Name    string    `json:"name"`
	Address string    `json:"address"`
	Since   time.Time `json:"since"`
	// For is how long it has been unreachable when diagnose ran.
	For string `json:"for"`
}

// readProbeState reads the daemon's probe state file; nil when there is
// none (probing off, or no peer unreachable yet).
func readProbeState(data []byte, err error) *daemon.ProbeState {
	if err != nil {
		return nil
	}
	var s daemon.ProbeState
	if json.Unmarshal(data, &s) != nil {
		return nil
	}
	return &s
}

// unreachable reports the peers the daemon's probes find unreachable, each
// as a problem.
func (b *builder) unreachable() {
	if b.in.Probes == nil {
		return
	}
	now := b.in.Now
	if now.IsZero() {
		now = time.Now()
	}
	for _, u := range b.in.Probes.Unreachable {
		d := now.Sub(u.Since).Round(time.Second)
		b.r.Unreachable = append(b.r.Unreachable, UnreachableReport{Name: u.Name, Address: u.Address, Since: u.Since, For: d.String()})
		b.problem("peer %s does not answer probes through the overlay (%s) for %s", u.Name, u.Address, d)
	}
}

// writeUnreachable prints the UNREACHABLE PEER section.
func writeUnreachable(t io.Writer, us []UnreachableReport) {
	fmt.Fprintln(t, "UNREACHABLE PEER\tPROBED\tSINCE\tFOR")
	for _, u := range us {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", u.Name, u.Address, u.Since.UTC().Format(time.RFC3339), u.For)
	}
}
