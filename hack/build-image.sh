#!/usr/bin/env bash
# Builds the flanneld image without docker or a registry (`make image`):
#
#   1. a Debian root file system (mmdebstrap, variant minbase, from Debian's
#      packages: iptables, which has both iptables-legacy and iptables-nft,
#      nftables, ca-certificates), with images/iptables-wrapper installed as
#      the iptables alternatives; turned into the base layer with umoci and
#      cached under bin/image/cache/ (keyed by everything it is made from),
#   2. a layer with our static binaries and scripts at upstream's paths
#      (/opt/bin/flanneld, /opt/bin/install-conf, /flannel) and our older
#      ones (/opt/flanneld/{flanneld,flannel,install-cni-conf}, symlinks),
#   3. the image configuration (entrypoint /opt/bin/flanneld),
#
# written as an OCI image archive (IMAGE_OUT, an OCI layout in a tar) whose
# one manifest is named IMAGE, for `ctr -n k8s.io images import` or
# `skopeo copy oci-archive:...`.
#
# Environment: IMAGE (the reference), IMAGE_OUT, VERSION, FLANNELD_BIN,
# FLANNEL_CNI_BIN, DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (a URL or an apt
# sources file; default: the host's Debian sources when they are for
# DEBIAN_SUITE, else http://deb.debian.org/debian), SOURCE_DATE_EPOCH.
#
# Exit status 77: the base is not cached and the Debian mirror cannot be
# reached (the image test skips on it).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD

VERSION=${VERSION:-dev}
IMAGE=${IMAGE:-ghcr.io/flanneld/flanneld:$VERSION}
IMAGE_OUT=${IMAGE_OUT:-bin/image/flanneld-oci.tar}
FLANNELD_BIN=${FLANNELD_BIN:-bin/flanneld}
FLANNEL_CNI_BIN=${FLANNEL_CNI_BIN:-bin/flannel}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
PACKAGES=iptables,nftables,ca-certificates
CACHE=bin/image/cache

log() { echo "build-image: $*" >&2; }
die() {
	log "$*"
	exit 1
}

for tool in mmdebstrap umoci tar sha256sum; do
	command -v "$tool" >/dev/null || die "$tool is missing: run hack/install-deps.sh (Debian packages mmdebstrap, umoci)"
done
for f in "$FLANNELD_BIN" "$FLANNEL_CNI_BIN"; do
	[ -x "$f" ] || die "$f is missing: run make build"
done
[ "$(id -u)" -eq 0 ] || log "not root: mmdebstrap may need root (or unprivileged user namespaces)"

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

# The Debian sources: an explicit DEBIAN_MIRROR, the host's own Debian
# sources for this suite (the mirror apt already reaches), or Debian's CDN.
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
	for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
		if [ -s "$f" ] && grep -qE "^[^#]*\b$DEBIAN_SUITE\b" "$f"; then
			mirror=$f
			break
		fi
	done
	mirror=${mirror:-http://deb.debian.org/debian}
fi
mirror_text=$mirror
[ -f "$mirror" ] && mirror_text=$(grep -v '^[[:space:]]*#' "$mirror")

# Everything the base layer is made from.
dpkgopts=(
	'path-exclude=/usr/share/man/*'
	'path-exclude=/usr/share/info/*'
	'path-exclude=/usr/share/locale/*'
	'path-exclude=/usr/share/doc/*'
	'path-include=/usr/share/doc/*/copyright'
)
key=$({
	echo "$DEBIAN_SUITE $arch $PACKAGES minbase"
	printf '%s\n' "${dpkgopts[@]}" "$mirror_text"
	cat images/iptables-wrapper images/install-iptables-wrapper
	sed -n '/^# --- base/,/^# --- end base/p' "$0"
} | sha256sum | cut -c1-16)
base=$CACHE/base-$key

tmp=$(mktemp -d "${TMPDIR:-/tmp}/flanneld-image.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# probe_mirror: fails when no host of the Debian sources answers HTTP.
probe_mirror() {
	local uri
	for uri in $(printf '%s\n' "$mirror_text" | grep -oE 'https?://[^ ]+' | sort -u); do
		if perl -MHTTP::Tiny -e 'exit(HTTP::Tiny->new(timeout => 15)->head($ARGV[0])->{status} == 599 ? 1 : 0)' "$uri"; then
			return 0
		fi
	done
	return 1
}

# --- base (changes here change the cache key)
if [ ! -f "$base/index.json" ]; then
	if ! probe_mirror; then
		log "the Debian mirror ($mirror) cannot be reached; cannot build the base"
		exit 77
	fi
	log "building the Debian $DEBIAN_SUITE base (mmdebstrap, $mirror)"
	mm=(mmdebstrap --variant=minbase --include="$PACKAGES" --architectures="$arch"
		--skip=output/dev --aptopt='Acquire::Retries "3"' --quiet)
	for o in "${dpkgopts[@]}"; do
		mm+=(--dpkgopt="$o")
	done
	mm+=(--customize-hook="copy-in images/iptables-wrapper images/install-iptables-wrapper /tmp"
		--customize-hook='chroot "$1" /tmp/install-iptables-wrapper /tmp/iptables-wrapper'
		--customize-hook='rm -f "$1"/tmp/iptables-wrapper "$1"/tmp/install-iptables-wrapper'
		"$DEBIAN_SUITE" "$tmp/rootfs.tar" "$mirror")
	if ! "${mm[@]}" >"$tmp/mmdebstrap.log" 2>&1; then
		if ! probe_mirror || grep -qE "apt-get update .*failed|Failed to fetch|Could not resolve|Unable to connect|Temporary failure resolving" "$tmp/mmdebstrap.log"; then
			grep -E '^(E|W):' "$tmp/mmdebstrap.log" | head -5 >&2 || true
			log "the Debian mirror ($mirror) does not serve $DEBIAN_SUITE; cannot build the base"
			exit 77
		fi
		cat "$tmp/mmdebstrap.log" >&2
		die "mmdebstrap failed"
	fi
	umoci init --layout "$tmp/base"
	umoci new --image "$tmp/base:base"
	umoci raw add-layer --image "$tmp/base:base" \
		--history.created "$created" --history.author flanneld \
		--history.created_by "mmdebstrap --variant=minbase --include=$PACKAGES $DEBIAN_SUITE (+ iptables-wrapper)" \
		"$tmp/rootfs.tar"
	rm -f "$tmp/rootfs.tar"
	mkdir -p "$CACHE"
	rm -rf "$base"
	mv "$tmp/base" "$base"
	find "$CACHE" -mindepth 1 -maxdepth 1 -name 'base-*' ! -name "base-$key" -exec rm -rf {} +
	log "cached the base as $base"
fi
# --- end base

# Our layer: the binaries at upstream's paths, our older paths as symlinks.
top=$tmp/top
install -d -m 0755 "$top/opt/bin" "$top/opt/flanneld" "$top/dev" # /dev: a mount point (the base has none)
install -m 0755 "$FLANNELD_BIN" "$top/opt/bin/flanneld"
install -m 0755 images/install-conf "$top/opt/bin/install-conf"
install -m 0755 "$FLANNEL_CNI_BIN" "$top/flannel"
ln -s ../bin/flanneld "$top/opt/flanneld/flanneld"
ln -s ../../flannel "$top/opt/flanneld/flannel"
ln -s ../bin/install-conf "$top/opt/flanneld/install-cni-conf"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
	-C "$top" -cf "$tmp/top.tar" dev flannel opt

oci=$tmp/oci
cp -a "$base" "$oci"
umoci raw add-layer --image "$oci:base" --tag build \
	--history.created "$created" --history.author flanneld \
	--history.created_by "flanneld $VERSION: /opt/bin/flanneld /opt/bin/install-conf /flannel" \
	"$tmp/top.tar"
umoci config --image "$oci:build" --tag "$IMAGE" \
	--created "$created" --author flanneld --os linux --architecture "$arch" \
	--config.entrypoint /opt/bin/flanneld \
	--config.env PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	--config.workingdir / \
	--config.label org.opencontainers.image.title=flanneld \
	--config.label org.opencontainers.image.version="$VERSION" \
	--config.label org.opencontainers.image.source=https://github.com/flanneld/flanneld \
	--history.created "$created" --history.author flanneld \
	--history.created_by "entrypoint /opt/bin/flanneld"
umoci rm --image "$oci:base"
umoci rm --image "$oci:build"
umoci gc --layout "$oci"

mkdir -p "$(dirname "$IMAGE_OUT")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
	-C "$oci" -cf "$IMAGE_OUT.tmp" oci-layout index.json blobs
mv -f "$IMAGE_OUT.tmp" "$IMAGE_OUT"
log "wrote $IMAGE_OUT ($IMAGE, $(du -h "$IMAGE_OUT" | cut -f1))"
