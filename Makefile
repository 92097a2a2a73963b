# flanneld: `make build` builds the binaries, `make test` installs what the
# tests need on a fresh Debian machine and runs every test (the end-to-end
# lab needs root; without root those tests skip).

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
TESTFLAGS ?=

.PHONY: all build test unit e2e deps vet fmt clean lab-binaries image demo

all: build

build: bin/flanneld bin/flannel

bin/flanneld: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $@ ./cmd/flanneld

# The flannel CNI plugin (installed on nodes as /opt/cni/bin/flannel).
bin/flannel: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.buildVersion=$(VERSION)" -o $@ ./cmd/flannel-cni

# The lab's kube-apiserver is built from source in a tools module of its own
# (e2e/tools), so the daemon's go.mod stays free of k8s.io/kubernetes. It
# takes about five minutes on two cores and is rebuilt only when its pinned
# version changes.
# The pinned version, stamped into the binaries as a release build would
# (kube-apiserver's admission needs the minor version when it is stamped).
KUBE_VERSION = $(shell cd e2e/tools && $(GO) list -m -f '{{.Version}}' k8s.io/kubernetes)
KUBE_VERSION_PARTS = $(subst ., ,$(patsubst v%,%,$(KUBE_VERSION)))
KUBE_LDFLAGS = -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=$(word 1,$(KUBE_VERSION_PARTS)) \
	-X k8s.io/component-base/version.gitMinor=$(word 2,$(KUBE_VERSION_PARTS))
bin/kube-apiserver: e2e/tools/go.mod e2e/tools/go.sum
	cd e2e/tools && $(GO) build -ldflags "$(KUBE_LDFLAGS)" -o ../../bin/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver

# The real-node lab (e2e/lab/kubenode.go): kubelet, kube-controller-manager,
# kube-scheduler and kubectl, from the same pinned k8s.io/kubernetes (a few
# more minutes on a fresh machine; the build cache is shared).
KUBE_BINARIES := bin/kubelet bin/kube-controller-manager bin/kube-scheduler bin/kubectl
$(KUBE_BINARIES) &: e2e/tools/go.mod e2e/tools/go.sum
	cd e2e/tools && $(GO) build -ldflags "-s -w $(KUBE_LDFLAGS)" -o ../../bin/ \
		k8s.io/kubernetes/cmd/kubelet \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubectl

# The CNI reference plugins and cnitool, for the lab's pods.
CNI_PLUGINS := bin/cni/bridge bin/cni/host-local bin/cni/portmap bin/cni/loopback
$(CNI_PLUGINS) bin/cnitool &: e2e/tools/go.mod e2e/tools/go.sum
	mkdir -p bin/cni
	cd e2e/tools && $(GO) build -o ../../bin/cni/ \
		github.com/containernetworking/plugins/plugins/main/bridge \
		github.com/containernetworking/plugins/plugins/ipam/host-local \
		github.com/containernetworking/plugins/plugins/meta/portmap \
		github.com/containernetworking/plugins/plugins/main/loopback
	cd e2e/tools && $(GO) build -o ../../bin/cnitool github.com/containernetworking/cni/cnitool

# The real-node lab's pause and toolbox images (OCI archives in bin/image).
LAB_IMAGES := bin/image/lab-pause-oci.tar bin/image/lab-toolbox-oci.tar
bin/lab-pause: e2e/lab/pause/main.go
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $@ ./e2e/lab/pause
$(LAB_IMAGES) &: bin/lab-pause hack/build-lab-images.sh
	hack/build-lab-images.sh

# The reference wireguard-go (the wireguard interop test's upstream-style
# node), the version go.mod pins.
bin/wireguard-go: go.mod go.sum
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ golang.zx2c4.com/wireguard

lab-binaries: bin/kube-apiserver $(KUBE_BINARIES) $(CNI_PLUGINS) bin/cnitool $(LAB_IMAGES) bin/wireguard-go

# Debian packages the tests use (etcd, iptables, iproute2, ping, tcpdump).
deps:
	hack/install-deps.sh

# golangci-lint (.golangci.yml) enforces what the code relies on by
# convention; it is built from its Go module once, into bin/.
GOLANGCI_LINT_VERSION := v2.15.0
bin/golangci-lint:
	GOBIN=$(CURDIR)/bin $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

vet: bin/golangci-lint
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	bin/golangci-lint run ./...

unit:
	$(GO) test $(TESTFLAGS) $$($(GO) list ./... | grep -v /e2e)

test: deps vet build lab-binaries
	$(GO) test -timeout 30m $(TESTFLAGS) ./...

e2e: build lab-binaries
	$(GO) test -timeout 30m -v $(TESTFLAGS) ./e2e/...

# Datapath benchmark (as root): pod-to-pod TCP throughput (iperf3) and
# latency (qperf) per backend against the underlay, on the lab; see
# bench/datapath/README.md. FLANNELD_BENCH_BACKENDS and
# FLANNELD_BENCH_SECONDS tune it. Never part of `make test`.
.PHONY: bench-datapath
bench-datapath: deps build lab-binaries
	FLANNELD_BENCH=1 $(GO) test -count=1 -timeout 30m -v -run '^TestDatapath$$' ./bench/datapath

# Scale benchmark (as root): flanneld (vxlan) on one node against the lab's
# kube-apiserver with N = 1,000, 5,000 and 10,000 kubelet-sized peer Nodes;
# start-to-programmed time against the floor (one protobuf LIST + one
# ip/bridge -batch), 100 peers added and removed, peak RSS, CPU; see
# Documentation/scale.md. FLANNELD_BENCH_SCALE_N (e.g. 1000) picks the
# sizes. Never part of `make test`.
.PHONY: bench-scale
bench-scale: deps build lab-binaries
	FLANNELD_BENCH=1 $(GO) test -count=1 -timeout 90m -v -run '^TestScale$$' ./bench/scale

BACKEND ?= vxlan
KUBELET ?=

# A three-node cluster in network namespaces, shown and torn down. With
# KUBELET=1 the nodes run containerd and kubelets, and flanneld is installed
# with `kubectl apply` of its DaemonSet (the image is built first).
demo: deps build lab-binaries
	FLANNELD_DEMO=1 BACKEND=$(BACKEND) FLANNELD_DEMO_KUBELET=$(KUBELET) $(GO) test -count=1 -timeout 15m -v -run '^TestDemo$$' ./e2e/demo/

# The image reference (`make image IMAGE=registry.example/flanneld:v1`).
IMAGE ?= ghcr.io/flanneld/flanneld:$(VERSION)
IMAGE_OUT ?= bin/image/flanneld-oci.tar

# The image without docker or a registry: a Debian rootfs from Debian's
# packages (mmdebstrap) and our binaries, assembled by umoci into an OCI
# archive (IMAGE_OUT) for `ctr -n k8s.io images import` or skopeo; see
# hack/build-image.sh and Documentation/kubernetes.md.
image: build
	hack/install-deps.sh image
	IMAGE=$(IMAGE) IMAGE_OUT=$(IMAGE_OUT) VERSION=$(VERSION) hack/build-image.sh

# The same image with a container engine, from the Dockerfile.
.PHONY: docker-image
docker-image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

clean:
	rm -rf bin

FORCE:
