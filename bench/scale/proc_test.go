package scale

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat
// (100 on every Linux ABI Go supports).
const clockTicks = 100

// usage is what /proc says about a process's resources.
type usage struct {
	peakRSSKiB int64         // VmHWM
	rssKiB     int64         // VmRSS
	anonKiB    int64         // RssAnon: the heap and stacks
	fileKiB    int64         // RssFile: pages of the binary and other files
	cpu        time.Duration // utime + stime
}

// readUsage reads /proc/<pid>/status and /proc/<pid>/stat.
func readUsage(pid int) (usage, error) {
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	if u.peakRSSKiB, err = statusKiB(string(status), "VmHWM"); err != nil {
		return u, err
	}
	if u.rssKiB, err = statusKiB(string(status), "VmRSS"); err != nil {
		return u, err
	}
	if u.anonKiB, err = statusKiB(string(status), "RssAnon"); err != nil {
		return u, err
	}
	if u.fileKiB, err = statusKiB(string(status), "RssFile"); err != nil {
		return u, err
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	u.cpu, err = statCPU(string(stat))
	return u, err
}

// statusKiB returns field (e.g. "VmHWM") of /proc/<pid>/status in KiB.
func statusKiB(status, field string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected %s line %q", field, line)
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no %s in /proc status", field)
}

// statCPU returns utime+stime of /proc/<pid>/stat. The command name (field
// 2) may hold spaces, so fields are counted after its closing parenthesis:
// utime and stime are fields 14 and 15.
func statCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat %q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat %q", stat)
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("malformed /proc stat %q: %w", stat, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// processExe is the program process pid runs (/proc/<pid>/exe).
func processExe(pid int) string {
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return exe
}
