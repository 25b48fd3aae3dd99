# Go SDK and Go example services. Included from the top-level Makefile, which defines ROOT:
#   include $(ROOT)/sdk/go/go.mk

GO ?= go
# Each is its own module; the examples use the SDK through a replace directive.
GO_MODULES := $(ROOT)/sdk/go $(ROOT)/examples/go-web $(ROOT)/examples/go-naive $(ROOT)/e2e/loadgen
GO_EXAMPLES := go-web go-naive
GO_BIN_DIR := $(ROOT)/target/go
# The process-level tests run the real sidecar (debug build).
GO_SIDECAR_BIN := $(or $(CARGO_TARGET_DIR),$(ROOT)/target)/debug/lameduck-sidecar

##@ Test

.PHONY: go-test
go-test: ## Go SDK and examples: go vet, go test -race (process tests run the real sidecar)
	cd $(ROOT) && cargo build --locked -p lameduck-sidecar
	@for module in $(GO_MODULES); do \
		echo "== $$module"; \
		( cd "$$module" && $(GO) vet ./... && \
		  LAMEDUCK_SIDECAR_BIN=$(GO_SIDECAR_BIN) $(GO) test -race -count=1 ./... ) || exit 1; \
	done

##@ Build

.PHONY: go-build
go-build: ## static binaries of the Go examples and of the in-cluster load generator (e2e/loadgen) into target/go/
	@mkdir -p $(GO_BIN_DIR)
	@for example in $(GO_EXAMPLES); do \
		( cd $(ROOT)/examples/$$example && \
		  CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(GO_BIN_DIR)/$$example . ) || exit 1; \
		echo "$(GO_BIN_DIR)/$$example"; \
	done
	@cd $(ROOT)/e2e/loadgen && CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(GO_BIN_DIR)/loadgen .
	@echo "$(GO_BIN_DIR)/loadgen"
