# strata-snapshotter. Tests that mount overlayfs or run the daemon need root.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BINARY  := bin/strata-snapshotter

.PHONY: all build test unit vet clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BINARY) ./cmd/snapshotter

# Everything: vet, then every test with the race detector, including
# containerd's snapshotter suite in-process and over the socket and the
# 500-layer chain.
test: vet
	$(GO) test -race -count=1 ./...

# The fast subset: skips containerd's suites and the 500-layer chain.
unit:
	$(GO) test -short -count=1 ./...

vet:
	$(GO) vet ./...

clean:
	rm -rf bin
