# lameduck — entry points. `make test` and `make demo` work on a fresh machine: they
# install what they need (idempotently) and reuse caches.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# Machine-wide cache shared by every checkout (CI runs in a fresh clone).
CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/lameduck
STATE_DIR := $(ROOT)/.state
TARGET := x86_64-unknown-linux-gnu
# Static binaries: the explicit --target keeps +crt-static away from build scripts and
# proc-macros, which must stay dynamic.
STATIC_DIR := $(ROOT)/target/$(TARGET)/release
CARGO_STATIC := RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target $(TARGET)

export CACHE_DIR STATE_DIR

include $(ROOT)/sdk/go/go.mk
include $(ROOT)/e2e/cluster/cluster.mk
include $(ROOT)/e2e/lameduck.mk

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

.PHONY: deps
deps: ## install build and test dependencies (idempotent)
	@$(ROOT)/hack/deps.sh

.PHONY: fmt
fmt: ## format Rust and Go code
	cargo fmt --all
	cd sdk/go && gofmt -w .

.PHONY: lint
lint: deps ## cargo fmt --check, clippy -D warnings, go vet
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked -p lameduck-e2e --features cluster --all-targets -- -D warnings
	cargo clippy --locked -p lameduck-operator --features cluster-tests --all-targets -- -D warnings

.PHONY: build
build: ## debug build of every workspace binary (the process-level tests exec them)
	cargo build --locked --workspace --bins

.PHONY: static
static: ## static release binaries (the sidecar and the example web app)
	$(CARGO_STATIC) -p lameduck-sidecar -p lameduck-example-web
	@ls -l $(STATIC_DIR)/lameduck-sidecar $(STATIC_DIR)/lameduck-example-web

.PHONY: unit
unit: build ## Rust unit and process-level tests (no cluster needed)
	cargo test --locked --workspace

.PHONY: test
test: lint unit go-test ## everything: lint, unit, process-level, SDK and cluster tests
	$(MAKE) --no-print-directory cluster-test

.PHONY: cluster-test
cluster-test: ## the suites that need the local cluster (brings it up if needed)
	$(MAKE) --no-print-directory images
	$(MAKE) --no-print-directory cluster-smoke
	$(MAKE) --no-print-directory webhook-cluster-test
	$(MAKE) --no-print-directory chart-lint
	$(MAKE) --no-print-directory e2e-test
	$(MAKE) --no-print-directory e2e-drills

.PHONY: webhook-cluster-test
webhook-cluster-test: ## the webhook and the ShutdownPolicy CRD against the local cluster's API server (needs make cluster-up)
	KUBECONFIG=$(STATE_DIR)/kubeconfig cargo test --locked -p lameduck-operator \
	  --features cluster-tests --test apiserver --test cluster

.PHONY: bench-webhook
bench-webhook: ## webhook handler latency, HTTPS throughput on one core (wrk), idle RSS
	$(ROOT)/operator/bench/webhook.sh

.PHONY: bench-operator-scale
bench-operator-scale: ## operator RSS (leader, follower) with 5,000 injected pods in 500 workloads (local cluster)
	$(ROOT)/hack/bench-operator-scale.sh

.PHONY: bench
bench: static ## benchmarks; figures go to README.md / docs/
	$(ROOT)/hack/bench.sh

.PHONY: demo
demo: ## the main job: local cluster, lameduck, rollouts under load side by side (out/demo/)
	@MAKE="$(MAKE)" $(ROOT)/hack/demo/demo.sh
