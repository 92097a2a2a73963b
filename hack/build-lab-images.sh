#!/usr/bin/env bash
# Builds the two small images the real-node lab's pods run, without a
# registry or a container engine (umoci), as OCI image archives:
#
#   bin/image/lab-pause-oci.tar    lab.invalid/pause:1    the pod sandbox
#                                  (bin/lab-pause, from e2e/lab/pause)
#   bin/image/lab-toolbox-oci.tar  lab.invalid/toolbox:1  Debian's static
#                                  busybox (sh, sleep, ping, ip, wget, ...)
#
# The lab imports them into each node's containerd with `ctr images import`.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bin/image}
PAUSE_BIN=${PAUSE_BIN:-bin/lab-pause}
BUSYBOX=${BUSYBOX:-/bin/busybox}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

for tool in umoci tar; do
	command -v "$tool" >/dev/null || { echo "build-lab-images: $tool is missing: run hack/install-deps.sh" >&2; exit 1; }
done
[ -x "$PAUSE_BIN" ] || { echo "build-lab-images: $PAUSE_BIN is missing: run make lab-binaries" >&2; exit 1; }
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || [ ! -x /usr/bin/file ] ||
	{ echo "build-lab-images: $BUSYBOX is not static: install busybox-static" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lab-images.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"

# image NAME REF ROOTFS ENTRYPOINT...: writes $OUT/lab-NAME-oci.tar.
image() {
	local name=$1 ref=$2 rootfs=$3
	shift 3
	local layout=$tmp/$name-layout args=()
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
		-C "$rootfs" -cf "$tmp/$name.tar" .
	umoci init --layout "$layout"
	umoci new --image "$layout:new"
	umoci raw add-layer --image "$layout:new" --tag build "$tmp/$name.tar"
	for a in "$@"; do
		args+=(--config.entrypoint "$a")
	done
	umoci config --image "$layout:build" --tag "$ref" --os linux --architecture amd64 \
		--config.env PATH=/bin "${args[@]}"
	umoci rm --image "$layout:new"
	umoci rm --image "$layout:build"
	umoci gc --layout "$layout"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
		-C "$layout" -cf "$OUT/lab-$name-oci.tar.tmp" oci-layout index.json blobs
	mv -f "$OUT/lab-$name-oci.tar.tmp" "$OUT/lab-$name-oci.tar"
}

mkdir -p "$tmp/pause"
install -m 0755 "$PAUSE_BIN" "$tmp/pause/pause"
image pause lab.invalid/pause:1 "$tmp/pause" /pause

mkdir -p "$tmp/toolbox/bin" "$tmp/toolbox/tmp" "$tmp/toolbox/etc"
install -m 0755 "$BUSYBOX" "$tmp/toolbox/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$tmp/toolbox/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' >"$tmp/toolbox/etc/passwd"
image toolbox lab.invalid/toolbox:1 "$tmp/toolbox" /bin/sh
echo "build-lab-images: wrote $OUT/lab-pause-oci.tar and $OUT/lab-toolbox-oci.tar" >&2
