# strata-snapshotter's image: a static binary on an empty base. Build it with
# `make image` (BuildKit from the integration tools, no Docker engine needed).
# No syntax directive: BuildKit's built-in Dockerfile frontend is used, so the
# build pulls nothing but GO_IMAGE.

# The Go toolchain to build with. `make image GO_FROM_HOST=1` replaces it with
# this machine's Go (for machines that cannot pull from Docker Hub).
ARG GO_IMAGE=docker.io/library/golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
ARG VERSION=dev
ARG GOPROXY=https://proxy.golang.org,direct
# Static (no cgo), paths not recorded, version stamped as the Makefile does.
ENV CGO_ENABLED=0 \
    GOFLAGS=-buildvcs=false \
    GOPROXY=${GOPROXY} \
    GOPATH=/go \
    GOCACHE=/root/.cache/go-build \
    PATH=/usr/local/go/bin:/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /src
COPY . .
# Module and build caches persist in BuildKit between builds.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/strata-snapshotter ./cmd/snapshotter

FROM scratch
COPY --from=build /out/strata-snapshotter /usr/local/bin/strata-snapshotter
ENTRYPOINT ["/usr/local/bin/strata-snapshotter"]
