#!/usr/bin/env bash
# Builds a single-node Kubernetes for the cluster tests from the Go module
# proxy: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet and kubectl, at the versions in kubernetes.env.
#
# k8s.io/kubernetes's go.mod points its staging modules at ./staging/...,
# which its module zip does not hold; each of those replaces is rewritten
# to the released module of the same release. The binaries are cached in a
# directory keyed on kubernetes.env, so only the first run builds (about
# 12 minutes on 2 cores). Prints the bin directory on the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=kubernetes.env
. "$here/kubernetes.env"

# shellcheck source=lib.sh
. "$here/lib.sh"
bin="$(tools_bin "$here/kubernetes.env" "k8s-")"

log() { echo "kubernetes.sh: $*" >&2; }

exit_if_built "$bin"

log "building kubernetes $KUBERNETES_VERSION and etcd $ETCD_VERSION into $bin (first run only)"
rm -rf "$(dirname "$bin")"
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod
# k8s.io/kubernetes ships a go.work over its staging tree, absent from the zip.
export GOWORK=off


log "etcd $ETCD_VERSION"
fetch_module "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$work/etcd"
(
	cd "$work/etcd"
	# Its go.mod points its sibling modules at ../...; use the released ones.
	for m in $(sed -n 's|^[[:space:]]*\([^ ]*\) => \.\./.*|\1|p' go.mod); do
		go mod edit "-dropreplace=$m"
	done
	go build -trimpath -o "$bin/etcd" .
) >&2

log "kubernetes $KUBERNETES_VERSION"
fetch_module "k8s.io/kubernetes@$KUBERNETES_VERSION" "$work/kubernetes"
(
	cd "$work/kubernetes"
	edits=()
	for m in $(sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*|\1|p' go.mod); do
		case "$m" in
		# Not served by the proxy, and nothing built here needs them.
		k8s.io/sample-cli-plugin | k8s.io/sample-controller)
			edits+=("-dropreplace=$m") ;;
		*)
			edits+=("-replace=$m=$m@$KUBERNETES_STAGING_VERSION") ;;
		esac
	done
	go mod edit "${edits[@]}"
	# The version the binaries report (nodes, kubectl version, skew checks),
	# as Kubernetes' own release build stamps it.
	minor="${KUBERNETES_VERSION#v1.}"
	minor="${minor%%.*}"
	ldflags=""
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags="$ldflags -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
	done
	go build -trimpath -ldflags "$ldflags" -o "$bin/" ./cmd/kube-apiserver ./cmd/kube-controller-manager \
		./cmd/kube-scheduler ./cmd/kubelet ./cmd/kubectl
) >&2

touch "$bin/.complete"
log "done"
echo "$bin"
