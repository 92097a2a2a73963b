// Command pause is the lab's pod sandbox ("infra") container: it holds the
// pod's namespaces, reaps orphaned children and exits on SIGINT or SIGTERM.
// It is built statically into the lab's pause image (hack/build-lab-images.sh),
// so the real-node lab needs no registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
