package lab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// execTimeout bounds every helper command, so a wedged tool cannot hang a test.
const execTimeout = 30 * time.Second

// Exec runs argv inside the named network namespace (ip netns exec) and
// returns its standard output. The error carries the standard error.
func Exec(ns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	args := append([]string{"netns", "exec", ns}, argv...)
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("in netns %s: %s: %w: %s", ns, strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// runIP runs the host's ip command with args (used for "ip netns ..." and
// "ip -n NS ..."; it never changes the host namespace itself).
func runIP(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// createNetns adds a named namespace and brings its loopback up.
func createNetns(name string) error {
	if _, err := runIP("netns", "add", name); err != nil {
		return err
	}
	_, err := runIP("-n", name, "link", "set", "lo", "up")
	return err
}

// deleteNetns kills what still runs inside the namespace (only processes of
// this lab can be there) and deletes it.
func deleteNetns(name string) error {
	if out, err := runIP("netns", "pids", name); err == nil {
		for _, field := range strings.Fields(out) {
			if pid, err := strconv.Atoi(field); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	_, err := runIP("netns", "del", name)
	return err
}

// listNetnsWithPrefix returns the named namespaces whose name starts with prefix.
func listNetnsWithPrefix(prefix string) ([]string, error) {
	out, err := runIP("netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) > 0 && strings.HasPrefix(fields[0], prefix) {
			names = append(names, fields[0])
		}
	}
	return names, nil
}

// DialContextIn returns a dial function whose sockets are created inside the
// named namespace. A socket keeps the namespace it was created in, so the
// returned connection can be used from any goroutine; the test process itself
// stays in the host namespace.
func DialContextIn(ns string) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		return dialInNetns(ctx, ns, network, address)
	}
}

func dialInNetns(ctx context.Context, ns, network, address string) (conn net.Conn, err error) {
	err = InNetns(ns, func() error {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// ListenIn opens a listener inside the named namespace; it serves there
// whichever goroutine accepts on it.
func ListenIn(ns, network, address string) (ln net.Listener, err error) {
	err = InNetns(ns, func() error {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// InNetns runs fn on a thread switched into the named namespace. Sockets
// fn opens stay in that namespace; fn must not start goroutines that
// expect to run there.
func InNetns(ns string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("reading the thread's netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("opening netns %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("entering netns %s: %w", ns, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// The thread is stuck in the lab namespace: leave it locked so
			// the runtime discards it when this goroutine ends.
			ch <- fmt.Errorf("restoring the thread's netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		ch <- fnErr
	}()
	return <-ch
}

// HTTPClientIn returns a plain HTTP client whose connections are made from
// inside the named namespace (e.g. to probe a daemon's /readyz there).
func HTTPClientIn(ns string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:       DialContextIn(ns),
			DisableKeepAlives: true,
		},
	}
}
