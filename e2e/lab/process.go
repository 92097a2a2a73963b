package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// Process is a command running inside a lab namespace, in its own process
// group. Its standard error goes to LogPath and its standard output to
// StdoutPath.
type Process struct {
	Name       string
	Netns      string
	LogPath    string // standard error (klog writes here)
	StdoutPath string

	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	waitErr error
}

// Start runs argv inside namespace ns (through `ip netns exec`) with env
// added to the test's environment (minus any FLANNELD_* variables). The
// process is stopped when the lab is cleaned up.
func (l *Lab) Start(t testing.TB, ns, name string, env []string, argv ...string) *Process {
	t.Helper()
	p, err := l.start(ns, name, env, argv)
	if err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	return p
}

func (l *Lab) start(ns, name string, env []string, argv []string) (*Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	base := uniqueName(name, func(n string) bool {
		for _, p := range l.procs {
			if p.Name == n {
				return true
			}
		}
		return false
	})
	p := &Process{
		Name:       base,
		Netns:      ns,
		LogPath:    filepath.Join(l.logDir, base+".log"),
		StdoutPath: filepath.Join(l.logDir, base+".stdout"),
		done:       make(chan struct{}),
	}
	stderr, err := os.Create(p.LogPath)
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	stdout, err := os.Create(p.StdoutPath)
	if err != nil {
		return nil, err
	}
	defer stdout.Close()

	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Env = append(cleanEnviron(), env...)
	p.cmd.Stdout = stdout
	p.cmd.Stderr = stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		err := p.cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p, nil
}

// uniqueName returns name, or name-2, name-3, ... when taken.
func uniqueName(name string, taken func(string) bool) string {
	if !taken(name) {
		return name
	}
	for i := 2; ; i++ {
		n := fmt.Sprintf("%s-%d", name, i)
		if !taken(n) {
			return n
		}
	}
}

// cleanEnviron is the test's environment without FLANNELD_* settings, which
// would silently change the daemon's flags.
func cleanEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLANNELD_") {
			env = append(env, kv)
		}
	}
	return env
}

// Pid is the process id (also its process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitCode is the exit status once exited (-1 when killed by a signal or
// still running).
func (p *Process) ExitCode() int {
	if p.Running() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// WaitExit waits up to timeout for the process to exit and returns its exit
// code; ok is false when it is still running.
func (p *Process) WaitExit(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
		return p.ExitCode(), true
	case <-time.After(timeout):
		return -1, false
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after a timeout, and
// waits for the exit.
func (p *Process) Stop() {
	if !p.Running() {
		return
	}
	p.signalGroup(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.signalGroup(syscall.SIGKILL)
		<-p.done
	}
}

// Kill9 kills the process group with SIGKILL (no chance to clean up) and
// waits for the exit.
func (p *Process) Kill9() {
	if !p.Running() {
		return
	}
	p.signalGroup(syscall.SIGKILL)
	<-p.done
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) {
	if p.Running() {
		p.signalGroup(sig)
	}
}

func (p *Process) signalGroup(sig syscall.Signal) {
	if err := syscall.Kill(-p.Pid(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Log returns what the process wrote to standard error so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Stdout returns what the process wrote to standard output so far.
func (p *Process) Stdout() string {
	b, _ := os.ReadFile(p.StdoutPath)
	return string(b)
}

// describeExit says how the process ended, for messages.
func (p *Process) describeExit() string {
	if p.Running() {
		return "still running"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waitErr == nil {
		return "exited with status 0"
	}
	return p.waitErr.Error()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
