# ewgate: make run (the gateway on the embedded example config), make test (everything).
SHELL := /bin/bash
GO ?= go
BIN := bin
# The version as `git describe --tags --dirty` gives it (v1.2.0, v1.2.0-3-gabc123def456-dirty);
# before the first tag v0.0.0-<commits>-g<hash>[-dirty]; outside a git checkout "dev". The
# revision is the full commit; SOURCE_DATE_EPOCH its time (the image's date). All three are
# stamped into the binary and shown by `ewgate version` and ewgate_build_info.
VERSION ?= $(shell git describe --tags --match 'v[0-9]*' --dirty --abbrev=12 2>/dev/null || \
	{ n=$$(git rev-list --count HEAD 2>/dev/null) && h=$$(git rev-parse --short=12 HEAD) && \
	  d=$$(git diff --quiet HEAD -- 2>/dev/null || echo -dirty) && echo "v0.0.0-$$n-g$$h$$d"; } || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)
# grpcnotrace: gRPC without golang.org/x/net/trace (its /debug/requests pages on the default
# mux, which ewgate never serves). Those pages run html/template, and a linked template
# executor keeps every exported method of every type in the binary (the linker cannot tell
# which it may call by name), megabytes of generated protobuf code resident in every gateway
# (docs/operations.md, "Memory"). A build without the tag works the same, only larger.
TAGS := grpcnotrace

.PHONY: all build run test unit vet fuzz tools browser e2e bench flood image clean

all: build

build:
	$(GO) build -trimpath -tags $(TAGS) -ldflags '$(LDFLAGS)' -o $(BIN)/ewgate ./cmd/ewgate
	$(GO) build -trimpath -o $(BIN)/ewgate-demo ./cmd/ewgate-demo

# The gateway on deploy/local/ewgate.yaml, loopback only, with a demo TLS backend behind it.
run: build
	./deploy/local/run.sh $(BIN)

# Installs the real clients and servers the tests drive (openssl s_client/s_server, curl, and
# Chromium for the status page) when a machine lacks them (as root, through apt). Captured
# ClientHellos of other clients are in sni/testdata.
tools:
	@missing=""; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "tools: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "tools: all present"; fi

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# The quick inner loop: unit and loopback tests of the main module.
unit:
	$(GO) test -count=1 ./...

# Everything: tools, vet, race-enabled tests, fuzz smoke runs, the real-peer suite.
test: tools vet
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) browser
	cd bench && $(GO) test -count=1 ./...
	$(MAKE) fuzz
	$(MAKE) e2e

# The status page rendered by a real headless Chromium (build tag browser: `make unit` leaves it out).
browser:
	$(GO) vet -tags browser ./cmd/ewgate
	$(GO) test -tags browser -count=1 -run '^TestStatusPageInChromium$$' ./cmd/ewgate

# The real-peer suite (its own Go module under e2e/; builds and caches the peers first).
e2e:
	cd e2e && $(GO) run ./cmd/peers
	cd e2e && $(GO) test -trimpath -count=1 -timeout 45m ./...

# Each fuzz target also runs as a unit test on its seeds; here each gets a short real fuzzing run.
# The budgets are counts of inputs (about 10-20 s each here), not durations: Go 1.26's fuzzing
# coordinator can report a spurious "context deadline exceeded" failure when a duration budget
# ends while a worker is busy (go.dev/issue/75804, fixed in Go 1.27); a count has no deadline.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseClientHello$$' -fuzztime 1000000x ./sni
	$(GO) test -run '^$$' -fuzz '^FuzzRead$$' -fuzztime 500000x ./gateway/proxyproto
	$(GO) test -run '^$$' -fuzz '^FuzzEntryName$$' -fuzztime 300000x ./registrar

# Side-by-side benchmark (bench/, its own Go module): ewgate against HAProxy, nginx and a direct
# connection; installs the peers it lacks; writes bench/results/. QUICK=1: a short pass (< 3 min).
bench:
	cd bench && $(GO) build -trimpath -o .work/ewbench ./cmd/ewbench && ./.work/ewbench

# The flood and fault suite (issue 17; bench/flood*.go): ewgate standalone on loopback, its fd
# limit lowered, under each flood (garbage, slowloris, hellos to a slow backend, half-open and
# 15 MB-header floods and bad tokens on 15012) and fault (reload storm, xDS upstream lost,
# SIGKILL during registrations, full store), while a mesh and a VM client measure success and
# p99; the store is checked for leaked WorkloadEntries. Needs root (a tmpfs for the store).
# A few minutes; writes bench/results/<date>-flood.md and .json. `make test` runs a short form.
flood:
	cd bench && $(GO) build -trimpath -o .work/ewbench ./cmd/ewbench && ./.work/ewbench flood

# An OCI image of the static binary as an image-layout tarball (bin/ewgate-image.tar), without a
# Docker daemon or a base image; the same commit gives the same digest. `docker load -i` it, or
# push it with skopeo/crane. deploy/image/Dockerfile builds an equivalent image with Docker.
IMAGE_ARCH ?= $(shell $(GO) env GOARCH)
image:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath -tags $(TAGS) -buildvcs=false -ldflags '$(LDFLAGS) -buildid=' -o $(BIN)/ewgate-linux-$(IMAGE_ARCH) ./cmd/ewgate
	$(GO) run ./deploy/image -binary $(BIN)/ewgate-linux-$(IMAGE_ARCH) -arch $(IMAGE_ARCH) -tag $(VERSION) \
		-revision $(REVISION) -created $(SOURCE_DATE_EPOCH) -out $(BIN)/ewgate-image.tar

clean:
	rm -rf $(BIN)
