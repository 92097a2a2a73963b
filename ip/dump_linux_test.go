//go:build linux

package ip

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// rawDumps are the netlink calls that dump, and so may be interrupted.
var rawDumps = map[string]bool{
	"LinkList": true, "AddrList": true, "RouteList": true, "RouteListFiltered": true,
	"RouteListFilteredIter": true, "NeighList": true, "NeighListExecute": true,
	"NeighProxyList": true, "RuleList": true, "RuleListFiltered": true,
}

// TestNoRawDumps: every netlink dump of the daemon goes through Dump, so
// that none can forget to retry an interrupted dump. (On 4308a5a three
// callers did.) Tests and the lab may dump as they like.
func TestNoRawDumps(t *testing.T) {
	root := ".."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "e2e" || rel == "bench" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || rel == filepath.Join("ip", "dump_linux.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if call, ok := n.(*ast.CallExpr); ok {
				if sel, ok := call.Fun.(*ast.SelectorExpr); ok && rawDumps[sel.Sel.Name] {
					t.Errorf("%s: a raw netlink %s; use ip.Dump, which retries an interrupted dump", rel, sel.Sel.Name)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRetryDump(t *testing.T) {
	calls := 0
	got, err := retryDump(func() (int, error) {
		calls++
		if calls < 3 {
			return 0, netlink.ErrDumpInterrupted
		}
		return 42, nil
	})
	if got != 42 || err != nil || calls != 3 {
		t.Errorf("retryDump = %d, %v after %d calls; want 42 after 3", got, err, calls)
	}
	calls = 0
	_, err = retryDump(func() (int, error) { calls++; return 7, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != dumpAttempts {
		t.Errorf("always interrupted: %v after %d calls, want ErrDumpInterrupted after %d", err, calls, dumpAttempts)
	}
}
