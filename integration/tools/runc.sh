#!/usr/bin/env bash
# Builds runc, with seccomp, from the Go module proxy at the version in
# runc.env: the integration tests' containerd runs user-namespaced
# containers with it. Cached, so only the first run builds (about a
# minute). Prints the bin directory on the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=runc.env
. "$here/runc.env"
# shellcheck source=lib.sh
. "$here/lib.sh"
bin="$(tools_bin "$here/runc.env" "runc-")"

log() { echo "runc.sh: $*" >&2; }

apt_install $RUNC_APT_PACKAGES

exit_if_built "$bin"
log "building runc $RUNC_VERSION into $bin (first run only)"
rm -rf "$(dirname "$bin")"
mkdir -p "$bin"
GOBIN="$bin" GOFLAGS=-mod=mod go install -tags seccomp "github.com/opencontainers/runc@$RUNC_VERSION" >&2
touch "$bin/.complete"
log "done"
echo "$bin"
