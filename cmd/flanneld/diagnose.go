package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/flanneld/flanneld/pkg/daemon"
	"github.com/flanneld/flanneld/pkg/diagnose"
)

// Exit statuses of `flanneld diagnose`.
const (
	diagnoseOK        = 0 // everything matches
	diagnoseDiffers   = 1 // something differs: see the report
	diagnoseCannotRun = 2 // the diagnosis could not be made
)

// noEnv annotates the flags that are not read from FLANNELD_* variables.
const noEnv = "flanneld/no-env"

// runDiagnose is `flanneld diagnose [daemon flags] [--json] [--probe]`: it
// takes the daemon's flags (and FLANNELD_* variables), so it expects what
// the daemon run with the same flags would program.
func runDiagnose(args, environ []string, stdout, stderr io.Writer) int {
	o := daemon.DefaultOptions()
	o.Version = version
	fs, showVersion := newFlagSet("flanneld diagnose", &o, stderr)
	var f diagnose.Flags
	fs.BoolVar(&f.JSON, "json", false, "print the report as JSON")
	fs.BoolVar(&f.Probe, "probe", false, "ping each peer's VTEP (vxlan) or public IP (host-gw) once, in each address family")
	for _, name := range []string{"json", "probe"} {
		_ = fs.SetAnnotation(name, noEnv, []string{"true"})
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: flanneld diagnose [flags]\n\n"+
			"Compares what flanneld with these flags would program on this node with what the\n"+
			"kernel, the firewall and the subnet file hold. Exit status: 0 all matches, 1 something\n"+
			"differs, 2 the diagnosis could not be made.\n\nFlags:\n%s", fs.FlagUsages())
	}
	err := parseFlags(fs, args, environ)
	if errors.Is(err, pflag.ErrHelp) {
		return diagnoseOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "flanneld diagnose: %v\n", err)
		return diagnoseCannotRun
	}
	if *showVersion {
		fmt.Fprintln(stdout, version)
		return diagnoseOK
	}
	defer klog.Flush()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ok, err := diagnose.Run(ctx, o, f, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "flanneld diagnose: %v\n", err)
		return diagnoseCannotRun
	}
	if !ok {
		return diagnoseDiffers
	}
	return diagnoseOK
}
