#!/usr/bin/env bash
# Installs the tools the integration tests drive strata with: containerd,
# ctr and the runc shim, a registry, nerdctl, crictl, buildkitd and buildctl,
# built from the Go module proxy at the versions in versions.env, plus
# Debian's runc, busybox-static and CNI plugins.
#
# The binaries are cached in a directory keyed on versions.env, so only the
# first run builds (about 7 minutes on 2 cores). A change to how a tool is
# built must bump BUILD_RECIPE there.
# Prints the bin directory on the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

# shellcheck source=lib.sh
. "$here/lib.sh"
bin="$(tools_bin "$here/versions.env" "")"

log() { echo "install.sh: $*" >&2; }

apt_install $APT_PACKAGES

exit_if_built "$bin"

log "building tools into $bin (first run only)"
rm -rf "$(dirname "$bin")"
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod
export GOBIN="$bin"


log "containerd $CONTAINERD_VERSION"
go install -tags no_btrfs \
	"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
	"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" >&2

log "registry $REGISTRY_VERSION"
go install "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION" >&2

log "nerdctl $NERDCTL_VERSION"
# go install refuses nerdctl's replace directives: build the downloaded
# module without its test-only helper and the tigron replacement.
fetch_module "github.com/containerd/nerdctl/v2@$NERDCTL_VERSION" "$work/nerdctl"
(
	cd "$work/nerdctl"
	rm -f cmd/nerdctl/helpers/testing_linux.go
	go mod edit -dropreplace=github.com/containerd/nerdctl/mod/tigron -droprequire=github.com/containerd/nerdctl/mod/tigron
	go build -o "$bin/nerdctl" ./cmd/nerdctl
) >&2

log "crictl $CRI_TOOLS_VERSION"
(
	export GONOSUMDB=sigs.k8s.io/cri-tools,k8s.io/cri-api,k8s.io/cri-client
	go mod download "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION"
	GOPROXY="file://$(go env GOMODCACHE)/cache/download,$(go env GOPROXY)" \
		go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
) >&2

log "buildkit $BUILDKIT_VERSION"
# go install refuses buildkit's exclude directives: build inside the module.
fetch_module "github.com/moby/buildkit@$BUILDKIT_VERSION" "$work/buildkit"
(
	cd "$work/buildkit"
	go build -o "$bin/buildkitd" ./cmd/buildkitd
	go build -o "$bin/buildctl" ./cmd/buildctl
) >&2

touch "$bin/.complete"
log "done"
echo "$bin"
