//go:build tools

// Package tools pins the versions of the test lab's binaries that e2e
// builds from source: kube-apiserver, kube-controller-manager,
// kube-scheduler, kubelet and kubectl (the real-node lab), the CNI
// reference plugins and cnitool. It is a separate module so the daemon's go.mod stays free of
// k8s.io/kubernetes.
package tools

import (
	_ "github.com/containernetworking/cni/cnitool"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
