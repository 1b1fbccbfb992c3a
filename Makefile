# chatworkspace-operator: the commands a developer and CI use.
# `make test` builds everything it needs from scratch (the Kubernetes test bed
# from its Go modules, then the Rust workspace) and runs every test.

CARGO ?= cargo

.PHONY: all tools build test test-coder crds check-crds lint fmt demo bench clean-tools

all: build

## tools: build kube-apiserver, kubectl, etcd and helm into .tools/bin (pinned in tools/versions.env)
tools:
	@bash tools/build.sh

build:
	$(CARGO) build --workspace --all-targets

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

## test: every test, against the real control plane, the Coder simulator and a real coderd
test: tools
	$(CARGO) test --workspace --no-fail-fast

## test-coder: only the end-to-end tests against a real coderd (docs/testing.md)
test-coder: tools
	$(CARGO) test --test real_coderd -- --nocapture

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## demo: a local control plane, the simulator and the operator, showing a lifecycle and a recovery
demo: tools
	$(CARGO) build --quiet --bin chatworkspace-operator
	$(CARGO) run --quiet --example demo

## bench: the scale benchmark (docs/performance.md); e.g. make bench BENCH_ARGS="--resources 300 --window 30s"
BENCH_ARGS ?=
bench: tools
	$(CARGO) build --release --bin chatworkspace-operator
	$(CARGO) bench --bench scale -- $(BENCH_ARGS)

clean-tools:
	rm -rf .tools
