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

# The areas `make help` groups the targets by, in the order it prints them. Every target,
# in this file or an included one, sits under a `##@ Area` header naming one of them
# (hack/check-help.sh, run by `make lint`, fails otherwise).
HELP_AREAS := Setup Build Test Cluster End-to-end Benchmarks Demo

include $(ROOT)/sdk/go/go.mk
include $(ROOT)/e2e/cluster/cluster.mk
include $(ROOT)/e2e/lameduck.mk

##@ Setup

.PHONY: help
help: ## list the targets by area
	@awk -v order="$(HELP_AREAS)" -f $(ROOT)/hack/help.awk $(MAKEFILE_LIST)

# The build and test toolchain only; the cluster's packages and binaries are cluster-deps.
.PHONY: deps
deps: ## check the Rust and Go toolchains, add clippy and rustfmt; iproute2 for the network-namespace tests (idempotent)
	@$(ROOT)/hack/toolchain-deps.sh iproute2 util-linux python3

##@ Build

.PHONY: build
build: ## debug build of every workspace binary (the process-level tests exec them)
	cargo build --locked --workspace --bins

# Always into $(ROOT)/target (STATIC_DIR), whatever CARGO_TARGET_DIR the caller uses: the
# images and the benchmarks take the binaries from there.
.PHONY: static
static: ## static release binaries (sidecar, operator, Rust example) into target/$(TARGET)/release
	CARGO_TARGET_DIR=$(ROOT)/target $(CARGO_STATIC) -p lameduck-sidecar -p lameduck-operator -p lameduck-example-web
	@ls -l $(STATIC_DIR)/lameduck-sidecar $(STATIC_DIR)/lameduck-operator $(STATIC_DIR)/lameduck-example-web

.PHONY: fmt
fmt: ## format Rust and Go code
	cargo fmt --all
	cd sdk/go && gofmt -w .

##@ Test

.PHONY: lint
lint: deps ## make help lists every target; cargo fmt --check, clippy -D warnings
	$(ROOT)/hack/check-help.sh
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked -p lameduck-e2e --features cluster --all-targets -- -D warnings
	cargo clippy --locked -p lameduck-operator --features cluster-tests --all-targets -- -D warnings

.PHONY: unit
unit: build ## Rust unit and process-level tests (no cluster needed)
	cargo test --locked --workspace

.PHONY: alerts-test
alerts-test: ## the chart's alert rules: promtool check + unit tests (test/alerts/), as rendered by the chart
	$(ROOT)/hack/alerts-test.sh

.PHONY: package-check
package-check: ## cargo package of the publishable crates (lameduck-proto, the Rust SDK): metadata, README, license, and a build from the packaged sources
	cargo package --locked --allow-dirty -p lameduck-proto -p lameduck
	@for crate in lameduck-proto lameduck; do \
	  files="$$(cargo package --locked --allow-dirty -p $$crate --list)"; \
	  for f in LICENSE README.md Cargo.toml; do \
	    grep -qx "$$f" <<<"$$files" || { echo "package-check: $$crate lacks $$f" >&2; exit 1; }; \
	  done; \
	done
	@echo "package-check: lameduck-proto and lameduck package and build"

.PHONY: test
test: lint unit go-test alerts-test package-check ## everything: lint, unit, process-level, SDK, alert-rule, packaging and cluster tests
	$(MAKE) --no-print-directory cluster-test

.PHONY: cluster-test
cluster-test: ## the suites that need the local cluster (brings it up if needed)
	$(MAKE) --no-print-directory images
	$(MAKE) --no-print-directory cluster-smoke
	$(MAKE) --no-print-directory webhook-cluster-test
	$(MAKE) --no-print-directory chart-lint
	$(MAKE) --no-print-directory e2e-test
	$(MAKE) --no-print-directory e2e-drills
	$(MAKE) --no-print-directory demo-external-check
	$(MAKE) --no-print-directory bench-rollout-smoke

.PHONY: webhook-cluster-test
webhook-cluster-test: ## the webhook and the ShutdownPolicy CRD against the local cluster's API server (needs make cluster-up)
	KUBECONFIG=$(STATE_DIR)/kubeconfig cargo test --locked -p lameduck-operator \
	  --features cluster-tests --test apiserver --test cluster

##@ Benchmarks

.PHONY: bench
bench: static ## sidecar size, idle RSS, start-to-probe and shutdown overhead (figures in README.md)
	$(ROOT)/bench/run.sh

.PHONY: bench-webhook
bench-webhook: ## webhook handler latency, HTTPS throughput on one core (wrk), idle RSS
	$(ROOT)/bench/webhook.sh

.PHONY: bench-rollout
bench-rollout: images ## no preStop, preStop sleep 5 / 15, lameduck without and with the SDK: failed requests and rollout time, ≥ 100k requests each (local cluster, ~15 min; out/bench-rollout/)
	$(ROOT)/bench/rollout.sh

# The same harness, one rollout per variant at a low rate: it runs and its figures hold
# together (make test). The figures themselves are make bench-rollout's.
.PHONY: bench-rollout-smoke
bench-rollout-smoke: images ## bench-rollout in miniature (one rollout per variant, a few hundred requests), its result checked
	BENCH_SMOKE=1 BENCH_OUT=$(ROOT)/out/bench-rollout-smoke $(ROOT)/bench/rollout.sh
	$(ROOT)/hack/demo/rollout_check.py $(ROOT)/out/bench-rollout-smoke/table.json

.PHONY: bench-operator-scale
bench-operator-scale: ## operator RSS (leader, follower) with 5,000 injected pods in 500 workloads (local cluster)
	$(ROOT)/bench/operator-scale.sh

##@ Demo

.PHONY: demo
demo: ## the main job: local cluster, lameduck, rollouts under load side by side (out/demo/); REGISTRY + KUBECONFIG: on that cluster instead
	@MAKE="$(MAKE)" $(ROOT)/hack/demo/demo.sh

# As a user runs it against another cluster, pointed at the local one: nothing of the local
# cluster's shortcuts is used (registry by name, kubeconfig given, load and records read
# in the cluster). Part of make test.
.PHONY: demo-external-check
demo-external-check: ## make demo with REGISTRY and KUBECONFIG pointed at the local cluster as if it were another, then its result checked (hack/demo/check.py)
	@$(MAKE) --no-print-directory cluster-up
	@MAKE="$(MAKE)" REGISTRY=localhost:5000 KUBECONFIG=$(STATE_DIR)/kubeconfig $(ROOT)/hack/demo/demo.sh
	$(ROOT)/hack/demo/check.py $(ROOT)/out/demo/table.json
