# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts
# Pinned versions of everything the local cluster builds from source. Sourced by the
# cluster scripts. Changing a version here changes the cache key, so the next
# `make cluster-deps` rebuilds just that component.
K8S_VERSION=v1.34.12      # k8s.io/kubernetes; staging modules at v0.34.12 (build/k8s/go.mod)
ETCD_VERSION=v3.6.16      # go.etcd.io/etcd/server/v3 (build/etcd/go.mod)
HELM_VERSION=v3.19.5      # helm.sh/helm/v3 (build/helm/go.mod)
CADDY_VERSION=v2.11.9     # github.com/caddyserver/caddy/v2 (build/caddy/go.mod): the e2e suite's unmodified server
