#!/usr/bin/env bash
# Builds strata's container image from the Dockerfile with BuildKit, without
# a Docker engine: buildctl and buildkitd come from the integration tools
# (integration/tools/install.sh), and a private buildkitd runs for the build
# and stops after it. Run as root (buildkitd is rootful). `make image` runs it.
#
# Environment:
#   VERSION        version stamped into the binary (default: git describe)
#   IMAGE_NAME     the image's name (default strata-snapshotter:$VERSION)
#   IMAGE_OUTPUT   buildctl's --output (default: an OCI archive at
#                  _output/strata-snapshotter.oci.tar, for `ctr images import`);
#                  push with e.g. type=image,name=REGISTRY/strata-snapshotter:TAG,push=true
#   GO_IMAGE       the builder stage's Go image (default: the Dockerfile's)
#   GO_FROM_HOST=1 build with this machine's Go toolchain instead of pulling
#                  GO_IMAGE (for machines that cannot reach Docker Hub)
#   BUILDKIT_HOST  use this buildkitd instead of starting one
#   STRATA_BUILDKIT_ROOT  the private buildkitd's state, caches included
#                  (default /var/lib/strata-image-buildkit)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "build-image.sh: $*" >&2; }

tools="$(integration/tools/install.sh | tail -n1)"
version="${VERSION:-$(git describe --tags --match 'v*' --dirty 2>/dev/null || echo v0.0.0-dev)}"
name="${IMAGE_NAME:-strata-snapshotter:$version}"
output="${IMAGE_OUTPUT:-type=oci,dest=_output/strata-snapshotter.oci.tar,name=$name}"
root="${STRATA_BUILDKIT_ROOT:-/var/lib/strata-image-buildkit}"
mkdir -p _output "$root"

args=(build --frontend dockerfile.v0 --local context=. --local dockerfile=.
	--opt "build-arg:VERSION=$version" --output "$output" --progress plain)
if command -v go >/dev/null; then
	args+=(--opt "build-arg:GOPROXY=$(go env GOPROXY)")
fi
if [ -n "${GO_IMAGE:-}" ]; then
	args+=(--opt "build-arg:GO_IMAGE=$GO_IMAGE")
fi

if [ "${GO_FROM_HOST:-}" = 1 ]; then
	# A root filesystem with this machine's Go, a static busybox for RUN's
	# shell and the CA bundle for the module proxy, given to BuildKit as a
	# named context that stands in for the Dockerfile's GO_IMAGE. It lives in
	# buildkitd's root so that BuildKit only syncs what changed since the
	# last build.
	goroot="$(go env GOROOT)"
	rootfs="$root/go-from-host"
	stamp="$goroot $(cat "$goroot/VERSION" 2>/dev/null | head -n1)"
	if [ "$(cat "$rootfs.stamp" 2>/dev/null)" != "$stamp" ]; then
		log "preparing the builder's root filesystem from $goroot"
		rm -rf "$rootfs"
		mkdir -p "$rootfs/usr/local" "$rootfs/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
		chmod 1777 "$rootfs/tmp"
		cp -a "$goroot" "$rootfs/usr/local/go"
		cp /bin/busybox "$rootfs/bin/busybox"
		ln -s busybox "$rootfs/bin/sh"
		cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
		echo "$stamp" >"$rootfs.stamp"
	fi
	go_image="${GO_IMAGE:-$(sed -n 's/^ARG GO_IMAGE=//p' Dockerfile)}"
	# BuildKit names contexts by an image's short form (golang:1.26-bookworm).
	go_image="${go_image#docker.io/}"
	go_image="${go_image#library/}"
	args+=(--local "gofromhost=$rootfs" --opt "context:$go_image=local:gofromhost")
fi

if [ -n "${BUILDKIT_HOST:-}" ]; then
	exec "$tools/buildctl" --addr "$BUILDKIT_HOST" "${args[@]}"
fi

# A private buildkitd, a child of this script: waited for, and stopped and
# reaped on exit.
sockdir="$(mktemp -d /tmp/strata-buildkit-XXXXXX)"
addr="unix://$sockdir/buildkitd.sock"
PATH="$tools:$PATH" "$tools/buildkitd" --root "$root" --addr "$addr" \
	--oci-worker=true --containerd-worker=false --oci-worker-net=host \
	>"$sockdir/buildkitd.log" 2>&1 &
bk=$!
cleanup() {
	kill "$bk" 2>/dev/null || true
	wait "$bk" 2>/dev/null || true
	rm -rf "$sockdir"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
	if "$tools/buildctl" --addr "$addr" debug workers >/dev/null 2>&1; then
		break
	fi
	if ! kill -0 "$bk" 2>/dev/null; then
		cat "$sockdir/buildkitd.log" >&2
		log "buildkitd exited"
		exit 1
	fi
	sleep 0.2
done
log "building $name ($output)"
"$tools/buildctl" --addr "$addr" "${args[@]}"
