# flanneld image: flanneld, the flannel CNI plugin, the conflist installer
# and iptables. Build with `make image`.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN make build VERSION=${VERSION}

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/bin/flanneld /src/bin/flannel /opt/flanneld/
COPY images/install-cni-conf /opt/flanneld/install-cni-conf
ENTRYPOINT ["/opt/flanneld/flanneld"]
