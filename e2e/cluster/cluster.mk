# Local single-node Kubernetes cluster (e2e/cluster/): include from the top-level Makefile
#   include e2e/cluster/cluster.mk
# Uses ROOT, CACHE_DIR and STATE_DIR from the including Makefile.

CLUSTER_DIR := $(ROOT)/e2e/cluster
# The smoke suite runs a few tests at once: each waits on grace periods, not on CPU.
CLUSTER_SMOKE_THREADS ?= 3

.PHONY: cluster-deps cluster-up cluster-down cluster-status cluster-smoke

##@ Cluster

cluster-deps: ## install the cluster's Debian packages and build/cache k8s, etcd, helm (idempotent)
	@$(CLUSTER_DIR)/cluster-deps.sh

cluster-up: cluster-deps ## start the local cluster (idempotent; prints the KUBECONFIG line)
	@$(CLUSTER_DIR)/up.sh

cluster-down: ## stop the local cluster, leaving no process, mount, veth or iptables rule
	@$(CLUSTER_DIR)/down.sh

cluster-status: ## show the local cluster's daemons, node and pods
	@$(CLUSTER_DIR)/status.sh

##@ Test

cluster-smoke: ## the cluster smoke suite (needs make cluster-up)
	KUBECONFIG=$(STATE_DIR)/kubeconfig cargo test --locked -p lameduck-e2e --features cluster \
	  --test cluster_smoke -- --test-threads=$(CLUSTER_SMOKE_THREADS)
