//go:build tools

// Package tools pins the versions of the test lab's binaries (kube-apiserver)
// that e2e builds from source. It is a separate module so the daemon's own
// go.mod stays free of k8s.io/kubernetes.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
