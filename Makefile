# chatworkspace-operator: the commands a developer and CI use.
# `make test` builds everything it needs from scratch (the Kubernetes test bed
# from its Go modules, then the Rust workspace) and runs every test.

CARGO ?= cargo

.PHONY: all tools build image demo-cluster test test-builds test-coder crds check-crds lint fmt demo bench clean-tools

all: build

## tools: build the test bed (kube-apiserver, kubectl, etcd, helm, coderd, the node's components) into .tools/bin (pinned in tools/versions.env)
tools:
	@bash tools/build.sh

build:
	$(CARGO) build --workspace --all-targets

# The release image (docs/operations.md, "Install"): a static binary (glibc,
# linked statically: it needs no loader and resolves names from /etc/hosts
# and /etc/resolv.conf itself), the machine's CA bundle (Debian's
# ca-certificates), user 65532, nothing else. Written as an OCI archive by
# tools/image.sh, without a daemon or registry; the same binary and bundle
# give the same digest, printed and written to $(IMAGE_ARCHIVE).digest.
VERSION := $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*/\1/p' charts/chatworkspace-operator/Chart.yaml)
IMAGE ?= chatworkspace-operator:$(VERSION)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
STATIC_TARGET := x86_64-unknown-linux-gnu
IMAGE_BINARY := $(TARGET_DIR)/$(STATIC_TARGET)/release/chatworkspace-operator
IMAGE_ARCHIVE := $(TARGET_DIR)/image/chatworkspace-operator.oci.tar
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt

## image: the operator's release image as an OCI archive in target/image (push it with skopeo, crane, docker load or podman load)
image:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --target $(STATIC_TARGET) --bin chatworkspace-operator
	@bash tools/image.sh --binary $(IMAGE_BINARY) --path /usr/local/bin/chatworkspace-operator \
		--name $(IMAGE) --out $(IMAGE_ARCHIVE) --ca-bundle $(CA_BUNDLE) --user 65532:65532 --port 8080 --cmd run
	@echo "image: $(IMAGE) ($$(cat $(IMAGE_ARCHIVE).digest)) in $(IMAGE_ARCHIVE)"

CRD_FILE := chat.coder.com_chatworkspaces.yaml
CHART_CRDS := charts/chatworkspace-operator/crds

## crds: regenerate crds/ from the Rust types (and the chart's copy of it)
crds:
	$(CARGO) run --quiet --bin chatworkspace-operator -- crd > crds/$(CRD_FILE)
	cp crds/$(CRD_FILE) $(CHART_CRDS)/$(CRD_FILE)

## check-crds: fail when crds/ (or the chart's copy) differs from what the code generates
check-crds:
	@$(CARGO) run --quiet --bin chatworkspace-operator -- crd | diff -u crds/$(CRD_FILE) - \
		|| { echo "crds/ is out of date: run 'make crds' and commit the result" >&2; exit 1; }
	@diff -u crds/$(CRD_FILE) $(CHART_CRDS)/$(CRD_FILE) \
		|| { echo "the chart's CRD differs from crds/: run 'make crds' and commit the result" >&2; exit 1; }

## test: every test, against the real control plane, the Coder simulator, a real coderd and the image on a real node
# The Go tools and the Rust builds go side by side: each leaves a core idle
# at times (linking, the last crates), which the other takes.
test:
	$(MAKE) -j2 tools test-builds
	$(CARGO) test --workspace --no-fail-fast

# The release image, then the tests' own build.
test-builds: image
	$(CARGO) test --workspace --no-run

## test-coder: only the end-to-end tests against a real coderd (docs/testing.md)
test-coder: tools
	$(CARGO) test --test real_coderd --test real_coderd_chats -- --nocapture

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## demo: a local control plane, the simulator and the operator, showing a lifecycle and a recovery
# Only what the demo starts: no coderd, no node.
demo:
	@bash tools/build.sh etcd
	@bash tools/build.sh kube-apiserver
	@bash tools/build.sh kubectl
	$(CARGO) build --quiet --bin chatworkspace-operator
	$(CARGO) run --quiet --example demo

## demo-cluster: the same story with the operator as a pod: make image, a node in the test bed, helm install (needs root)
demo-cluster: tools image
	$(CARGO) run --quiet --example demo_cluster

## bench: the scale benchmark (docs/performance.md); e.g. make bench BENCH_ARGS="--resources 300 --window 30s"
BENCH_ARGS ?=
bench: tools
	$(CARGO) build --release --bin chatworkspace-operator
	$(CARGO) bench --bench scale -- $(BENCH_ARGS)

clean-tools:
	rm -rf .tools
