#!/usr/bin/env bash
# Installs the Debian packages flanneld's tests need, when missing.
# `install-deps.sh image`: only what `make image` needs.
set -euo pipefail
need=()
# The image (hack/build-image.sh): mmdebstrap builds the Debian root file
# system, umoci assembles the OCI image.
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v umoci >/dev/null || need+=(umoci)
if [ "${1:-}" != image ]; then
	command -v etcd >/dev/null || need+=(etcd-server)
	command -v etcdctl >/dev/null || need+=(etcd-client)
	command -v iptables >/dev/null || need+=(iptables)
	command -v nft >/dev/null || need+=(nftables)
	command -v ip >/dev/null || need+=(iproute2)
	command -v bridge >/dev/null || need+=(iproute2)
	command -v ping >/dev/null || need+=(iputils-ping)
	command -v tcpdump >/dev/null || need+=(tcpdump)
	command -v iperf3 >/dev/null || need+=(iperf3)
	command -v qperf >/dev/null || need+=(qperf)
	# The real-node lab: containerd and runc run the kubelets' pods; the
	# toolbox image is Debian's static busybox.
	[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static file)
	command -v containerd >/dev/null || need+=(containerd)
	command -v runc >/dev/null || need+=(runc)
	command -v nsenter >/dev/null || need+=(util-linux)
	# The wireguard backend's tests: `wg`.
	command -v wg >/dev/null || need+=(wireguard-tools)
fi
if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "missing packages ${need[*]}; run as root or install them" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
