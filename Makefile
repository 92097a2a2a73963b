# flanneld: `make build` builds the binaries, `make test` installs what the
# tests need on a fresh Debian machine and runs every test (the end-to-end
# lab needs root; without root those tests skip).

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
TESTFLAGS ?=

.PHONY: all build test unit e2e deps vet fmt clean

all: build

build: bin/flanneld

bin/flanneld: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $@ ./cmd/flanneld

# The lab's kube-apiserver is built from source in a tools module of its own
# (e2e/tools), so the daemon's go.mod stays free of k8s.io/kubernetes. It
# takes about five minutes on two cores and is rebuilt only when its pinned
# version changes.
bin/kube-apiserver: e2e/tools/go.mod e2e/tools/go.sum
	cd e2e/tools && $(GO) build -o ../../bin/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver

# Debian packages the tests use (etcd, iptables, iproute2, ping, tcpdump).
deps:
	hack/install-deps.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

unit:
	$(GO) test $(TESTFLAGS) $$($(GO) list ./... | grep -v /e2e)

test: deps vet build bin/kube-apiserver
	$(GO) test -timeout 30m $(TESTFLAGS) ./...

e2e: build bin/kube-apiserver
	$(GO) test -timeout 30m -v $(TESTFLAGS) ./e2e/...

clean:
	rm -rf bin

FORCE:
