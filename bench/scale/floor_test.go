package scale

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/flanneld/flanneld/e2e/lab"
)

// The second half of the floor: how long the kernel takes the entries of N
// peers from one batch file, applied in a scratch namespace that has a VXLAN
// device configured like flanneld's flannel.1.

// floorUnderlayIP is eth0's address in the scratch namespace (the same as
// the measured node's, though the namespaces are unrelated).
const floorUnderlayIP = "192.168.100.11"

// batchFiles returns the bridge(8) batch (FDB entries) and the ip(8) batch
// (neighbours, then routes) that program peers 1..n the way flanneld does.
func batchFiles(n int) (fdb, neighRoute string) {
	var f, nr strings.Builder
	for i := 1; i <= n; i++ {
		p := peerAt(i)
		fmt.Fprintf(&f, "fdb replace %s dev %s dst %s self permanent\n", p.mac, vxlanDevice, p.publicIP)
		fmt.Fprintf(&nr, "neigh replace %s lladdr %s dev %s nud permanent\n", p.vtepIP, p.mac, vxlanDevice)
	}
	for i := 1; i <= n; i++ {
		p := peerAt(i)
		fmt.Fprintf(&nr, "route replace %s via %s dev %s onlink proto %d\n", p.subnet, p.vtepIP, vxlanDevice, routeProtocol)
	}
	return f.String(), nr.String()
}

// batchFloor creates namespace ns with eth0 (one end of a veth pair), then,
// rounds times, creates a VXLAN device like flannel.1 and times `bridge
// -batch` of the FDB entries plus `ip -batch` of the neighbours and routes
// of n peers, checks the result with the same counter that watches
// flanneld, and deletes the device. It returns the median and deletes ns.
func batchFloor(ctx context.Context, ns, dir string, n, rounds int) (time.Duration, error) {
	defer exec.Command("ip", "netns", "del", ns).Run()
	if err := runIPs(ctx,
		[]string{"netns", "add", ns},
		[]string{"-n", ns, "link", "set", "lo", "up"},
		[]string{"-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"},
		[]string{"-n", ns, "addr", "add", floorUnderlayIP + "/24", "dev", "eth0"},
		[]string{"-n", ns, "link", "set", "eth0", "up"},
		[]string{"-n", ns, "link", "set", "eth1", "up"},
	); err != nil {
		return 0, err
	}
	fdb, neighRoute := batchFiles(n)
	fdbPath, nrPath := filepath.Join(dir, "floor-fdb.batch"), filepath.Join(dir, "floor-neigh-route.batch")
	if err := os.WriteFile(fdbPath, []byte(fdb), 0o644); err != nil {
		return 0, err
	}
	if err := os.WriteFile(nrPath, []byte(neighRoute), 0o644); err != nil {
		return 0, err
	}
	c, err := openCounter(ns)
	if err != nil {
		return 0, err
	}
	defer c.close()

	var samples []time.Duration
	for range rounds {
		if err := runIPs(ctx,
			[]string{"-n", ns, "link", "add", vxlanDevice, "type", "vxlan", "id", "1", "local", floorUnderlayIP,
				"dev", "eth0", "dstport", "8472", "nolearning"},
			[]string{"-n", ns, "link", "set", vxlanDevice, "mtu", "1450"},
			[]string{"-n", ns, "addr", "add", "10.0.0.0/32", "dev", vxlanDevice},
			[]string{"-n", ns, "link", "set", vxlanDevice, "up"},
		); err != nil {
			return 0, err
		}
		var total time.Duration
		for _, cmd := range [][]string{
			{"bridge", "-n", ns, "-batch", fdbPath},
			{"ip", "-n", ns, "-batch", nrPath},
		} {
			start := time.Now()
			out, err := exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput()
			total += time.Since(start)
			if err != nil {
				return 0, fmt.Errorf("%s: %w: %s", strings.Join(cmd, " "), err, strings.TrimSpace(string(out)))
			}
		}
		index, err := linkIndex(ns, vxlanDevice)
		if err != nil || index == 0 {
			return 0, fmt.Errorf("finding %s in %s: %v", vxlanDevice, ns, err)
		}
		got, err := c.count(index)
		if err != nil {
			return 0, err
		}
		if !got.all(n) {
			return 0, fmt.Errorf("after the batch the scratch namespace has %s, want %d of each", got, n)
		}
		// Deleting the device removes its neighbours, FDB entries and routes.
		if err := runIPs(ctx, []string{"-n", ns, "link", "del", vxlanDevice}); err != nil {
			return 0, err
		}
		samples = append(samples, total)
	}
	return median(samples), nil
}

func runIPs(ctx context.Context, argvs ...[]string) error {
	for _, args := range argvs {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func median(samples []time.Duration) time.Duration {
	s := slices.Clone(samples)
	slices.Sort(s)
	return s[len(s)/2]
}

// floorNetns is the scratch namespace's name. It carries the lab's run
// prefix, so the lab's cleanup removes it too if the benchmark is killed
// between creating and deleting it.
func floorNetns(l *lab.Lab) string { return "fl" + l.RunID() + "-floor" }
