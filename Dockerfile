# flanneld image, with a container engine (`make docker-image`). Without one,
# `make image` builds the same layout with mmdebstrap and umoci
# (hack/build-image.sh); keep the two in step.
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
# iptables, iptables-save, iptables-restore and ip6tables* pick legacy or nft
# at first use, by the rules the host already has.
COPY images/iptables-wrapper images/install-iptables-wrapper /tmp/
RUN /tmp/install-iptables-wrapper /tmp/iptables-wrapper \
 && rm /tmp/iptables-wrapper /tmp/install-iptables-wrapper
# Upstream's paths, and this project's older ones.
COPY --from=build /src/bin/flanneld /opt/bin/flanneld
COPY --from=build /src/bin/flannel /flannel
COPY images/install-conf /opt/bin/install-conf
RUN mkdir -p /opt/flanneld \
 && ln -s ../bin/flanneld /opt/flanneld/flanneld \
 && ln -s ../../flannel /opt/flanneld/flannel \
 && ln -s ../bin/install-conf /opt/flanneld/install-cni-conf
ENV PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/opt/bin/flanneld"]
