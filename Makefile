# strata-snapshotter. Tests that mount overlayfs or run the daemon need root.
GO      ?= go
# A release tag (vX.Y.Z), or v0.0.0-dev between releases; the commit goes
# beside it in --version, as containerd prints it.
VERSION  ?= $(shell git describe --tags --match 'v*' --dirty 2>/dev/null || echo v0.0.0-dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo .m)
LDFLAGS  := -X main.version=$(VERSION) -X main.revision=$(REVISION)
BINARY  := bin/strata-snapshotter

# Every package but the integration tests, which run after them.
PACKAGES = $(shell $(GO) list ./... | grep -v /integration$$)

FUZZTIME ?= 20s
PREFIX   ?= /usr/local
DESTDIR  ?=
BINDIR   := $(PREFIX)/bin
UNIT     := $(DESTDIR)/etc/systemd/system/strata.service
CONFIG   := $(DESTDIR)/etc/strata/config.toml
# The config as install wrote it, so uninstall can tell an unedited config
# (of whichever version installed it) from an edited one.
PRISTINE := $(DESTDIR)$(PREFIX)/share/strata/config.toml.installed

.PHONY: all build test check unit integration bench fuzz tools vet clean install uninstall image

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BINARY) ./cmd/snapshotter

# Everything: vet; every unit test with the race detector, including
# containerd's snapshotter suite in-process and over the socket and the
# 500-layer chain; then the integration tests under a real containerd.
test: vet
	$(GO) test -race -count=1 $(PACKAGES)
	$(MAKE) fuzz
	$(MAKE) integration

# Hostile input through the gRPC API; make fuzz FUZZTIME=10m for a longer run.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzSnapshotsAPI -fuzztime $(FUZZTIME) ./cmd/snapshotter

# strata under containerd, ctr, nerdctl, BuildKit, CRI and a real
# single-node Kubernetes. The first run builds the tools (the tests' TestMain
# runs integration/tools/install.sh, about 7 minutes, kubernetes.sh, about
# 12, and runc.sh; cached after).
integration:
	$(GO) test -count=1 -timeout 45m ./integration/

# strata against containerd's overlayfs, side by side (BENCHMARKS.md): the
# Snapshots API against bench/overlayref, then end to end through one
# containerd. Root; the integration tools; a 20 GB and a 40 GB sparse file
# in /var/tmp for the loop-device filesystems; about 8 minutes with the
# default 3 rounds (BENCH_ROUNDS), 12 with 5. Tables go to the output and
# to BENCH_OUT, which each run replaces.
BENCH_ROUNDS ?= 3
BENCH_OUT    ?= bench-results.md
bench: tools
	rm -f $(BENCH_OUT)
	STRATA_BENCH_ROUNDS=$(BENCH_ROUNDS) STRATA_BENCH_OUT=$(abspath $(BENCH_OUT)) \
		$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 150m ./integration/

tools:
	integration/tools/install.sh >/dev/null
	integration/tools/kubernetes.sh >/dev/null
	integration/tools/runc.sh >/dev/null

# The edit-test loop: every test but the integration tests and the fuzzing,
# with the race detector (containerd's suites and the 500-layer chain
# included; about a minute once built). Tests that need root skip without it,
# and the report says which and why.
check:
	bash -o pipefail -c '$(GO) test -race -count=1 -json $(PACKAGES) | $(GO) run ./internal/testreport'

# The fast subset of check: skips containerd's suites and the 500-layer
# chain too.
unit:
	bash -o pipefail -c '$(GO) test -race -short -count=1 -json $(PACKAGES) | $(GO) run ./internal/testreport'

vet:
	$(GO) vet ./...

clean:
	rm -rf bin _output

# The container image (Dockerfile), built with BuildKit from the integration
# tools, no Docker engine: an OCI archive in _output/ by default. Knobs
# (IMAGE_OUTPUT to push, GO_IMAGE, GO_FROM_HOST=1) are in deploy/build-image.sh.
image:
	VERSION=$(VERSION) deploy/build-image.sh

# The binary, a systemd unit, and config.toml.example as /etc/strata/config.toml
# unless a config is already there. Then: systemctl daemon-reload &&
# systemctl enable --now strata (before containerd).
install: build
	install -D -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/strata-snapshotter
	mkdir -p $(dir $(UNIT))
	sed 's|@BINDIR@|$(BINDIR)|' deploy/systemd/strata.service > $(UNIT)
	chmod 0644 $(UNIT)
	if [ ! -e $(CONFIG) ]; then install -D -m 0600 config.toml.example $(CONFIG) && install -D -m 0644 config.toml.example $(PRISTINE); fi

# Removes what install added; a config edited since install wrote it is
# kept. Refuses while the unit is enabled, the daemon runs, or containerd's
# config registers strata.
uninstall:
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet strata 2>/dev/null; then \
		echo "strata.service is enabled: run 'systemctl disable --now strata' first, and take strata out of containerd's config"; exit 1; fi
	@# The installed binary's processes only, not another build's (a test's).
	@pids=; if [ -z "$(DESTDIR)" ]; then for p in $$(pgrep -x strata-snapshot); do \
		[ "$$(readlink /proc/$$p/exe)" = "$(BINDIR)/strata-snapshotter" ] && pids="$$pids $$p"; done; fi; \
	if [ -n "$$pids" ]; then \
		echo "strata-snapshotter is running (pid$$pids): stop it first, and take strata out of containerd's config"; exit 1; fi
	@if [ -z "$(DESTDIR)" ] && grep -qs '^\[proxy_plugins\.strata\]' /etc/containerd/config.toml; then \
		echo "/etc/containerd/config.toml registers strata: put back the backup containerd-config kept (config.toml.strata-backup-TIME) or delete its entries, restart containerd, then uninstall"; exit 1; fi
	rm -f $(DESTDIR)$(BINDIR)/strata-snapshotter $(UNIT)
	@if [ -e $(PRISTINE) ] && cmp -s $(PRISTINE) $(CONFIG); then \
		echo "rm -f $(CONFIG)"; rm -f $(CONFIG); rmdir --ignore-fail-on-non-empty $(dir $(CONFIG)); \
	elif [ -e $(PRISTINE) ] && [ -e $(CONFIG) ]; then echo "kept $(CONFIG): edited since install wrote it"; \
	elif [ -e $(CONFIG) ]; then echo "kept $(CONFIG): installed by an older version, which kept no copy to compare with; remove it if you never edited it"; fi
	rm -f $(PRISTINE)
	-rmdir --ignore-fail-on-non-empty $(dir $(PRISTINE))
