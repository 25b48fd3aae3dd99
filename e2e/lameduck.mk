# lameduck on the local cluster: images, the chart's lint, and the end-to-end suite
# (e2e/tests/lameduck.rs). Include from the top-level Makefile, after cluster.mk:
#   include $(ROOT)/e2e/lameduck.mk
# Uses ROOT, CACHE_DIR, STATE_DIR, STATIC_DIR, CLUSTER_DIR, and the static (Makefile),
# go-build (sdk/go/go.mk) and cluster-up (cluster.mk) targets of the including Makefile.

VEGETA_VERSION ?= v12.12.0
VEGETA := $(CACHE_DIR)/bin/vegeta
E2E_THREADS ?= 1
E2E_CHART := $(ROOT)/charts/lameduck

.PHONY: images lameduck-images lameduck-install publish publish-examples vegeta chart-lint e2e-test e2e-drills

##@ Cluster

# Every image the local cluster runs. lameduck's own (operator, sidecar, chart) and the
# images the demo and the suites deploy (example apps, load generator) go through the
# cluster's registry, as on any cluster: pushed (publish, publish-examples), then pulled by
# the kubelet. Only the node's own images (pause, the smoke suite's testapp: images.sh) are
# imported into containerd, each only when its binary changed (IMAGE_SKIP_UNCHANGED), as
# a node image would carry them.
images: cluster-up static go-build ## publish lameduck's images, chart and the demo's images to the local registry; import the node's own images
	@$(MAKE) --no-print-directory publish publish-examples REGISTRY=localhost:5000
	@IMAGE_SKIP_UNCHANGED=1 $(CLUSTER_DIR)/images.sh

# The name this target had while it built only lameduck's images; kept for the scripts
# and habits that still call it.
lameduck-images: images ## same as images (its former name)

lameduck-install: images ## helm upgrade --install lameduck on the local cluster from its registry (chart and images)
	$(ROOT)/hack/install-local.sh

# REGISTRY: where to (default: the local cluster's registry, localhost:5000, which needs
# make cluster-up). Credentials: `skopeo login` and `helm registry login`.
publish: static ## push the operator and sidecar images and the chart (OCI) to REGISTRY (default: the local cluster's)
	$(ROOT)/hack/publish.sh

publish-examples: static go-build ## push the demo's images (example apps, load generator) to REGISTRY (default: the local cluster's)
	$(ROOT)/hack/publish.sh examples

##@ Setup

vegeta: $(VEGETA) ## the load tool of the e2e suite, into $(CACHE_DIR)/bin (idempotent)
$(VEGETA):
	@mkdir -p $(CACHE_DIR)/bin
	GOBIN=$(CACHE_DIR)/bin go install github.com/tsenart/vegeta/v12@$(VEGETA_VERSION)

##@ Test

# The dry-run renders into `default`, which exists on every cluster.
chart-lint: ## helm lint + server-side dry-run of the rendered chart (needs the cluster)
	@source <($(CLUSTER_DIR)/env.sh) && \
	helm lint $(E2E_CHART) && \
	kube_version="$$(kubectl version -o json | sed -n 's/.*"gitVersion": *"\(v[^"]*\)".*/\1/p' | tail -1)" && \
	helm template lameduck $(E2E_CHART) -n default --kube-version "$$kube_version" --include-crds | \
	  kubectl apply --dry-run=server -n default -f - >/dev/null && \
	echo "chart-lint: helm lint and server-side dry-run clean"

##@ End-to-end

e2e-test: images vegeta ## the end-to-end suite: helm install + scenarios (brings the cluster up if needed)
	@source <($(CLUSTER_DIR)/env.sh) && \
	KUBECONFIG=$(STATE_DIR)/kubeconfig VEGETA=$(VEGETA) \
	  cargo test --locked -p lameduck-e2e --features cluster --test lameduck -- \
	  --test-threads=$(E2E_THREADS) --nocapture

e2e-drills: images vegeta ## reliability drills: leader failover, cert rotation, sidecar kill, 200-pod burst, node view (brings the cluster up if needed)
	@source <($(CLUSTER_DIR)/env.sh) && \
	KUBECONFIG=$(STATE_DIR)/kubeconfig VEGETA=$(VEGETA) \
	  cargo test --locked -p lameduck-e2e --features cluster --test drills -- \
	  --test-threads=1 --nocapture
