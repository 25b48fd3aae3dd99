#!/usr/bin/env bash
# Stops the local cluster and removes everything it put on the machine: processes
# (daemons, containerd shims, container processes), containerd tasks and containers,
# mounts under the cluster's directories, network namespaces, the cni0 bridge and its
# veths, iptables chains (KUBE-*, CNI-*, LAMEDUCK-*), the service route, pod cgroups and
# etcd data. Safe to run at any time, also after a killed or half-finished cluster-up.
# Images (containerd content), certificates and built binaries are kept; --purge removes
# all of /var/lib/lameduck-cluster too.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
lock_cluster

quiet=0 purge=0
for a in "$@"; do
  case "$a" in
    --quiet) quiet=1 ;;
    --purge) purge=1 ;;
    *) die "usage: down.sh [--quiet] [--purge]" ;;
  esac
done
say() { ((quiet)) || log "$@"; }

# PIDs of processes whose command line mentions the cluster's own directories: daemons
# whose PID file was lost, and the containerd shims (they name our socket).
own_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
    [[ "${p#/proc/}" == "$$" || "${p#/proc/}" == "$BASHPID" ]] && continue
    [[ "$cmd" == *"$BASE/"* || "$cmd" == *"$RUN/"* ]] && echo "${p#/proc/}"
  done
  return 0
}

# stop_pids WAIT_SECONDS PID...: SIGTERM, wait, then SIGKILL what is left (WAIT_SECONDS 0:
# SIGKILL at once).
stop_pids() {
  local wait="$1"; shift
  [[ $# -gt 0 ]] || return 0
  if ((wait == 0)); then
    kill -KILL "$@" 2>/dev/null || true
    wait_gone "$@"
    return 0
  fi
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$((SECONDS + wait)) p alive
  while ((SECONDS < deadline)); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.2
  done
  kill -KILL "$@" 2>/dev/null || true
  wait_gone "$@"
}

# wait_gone PID...: until the processes have exited (at most 5 s).
wait_gone() {
  local p i alive
  for ((i = 0; i < 50; i++)); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
}

# 1. The Kubernetes daemons by their PID files. The node agents first, with SIGTERM (so
#    that the kubelet does not restart containers while they are being removed); then the
#    control plane at once with SIGKILL: its only state, etcd's data, is thrown away
#    below anyway, and a graceful stop costs ~2 s per daemon.
stop_daemons() {
  local wait="$1" d pids=(); shift
  for d in "$@"; do
    if pid_alive "$d"; then
      pids+=("$(cat "$PIDS/$d.pid")")
      say "stopping $d"
    fi
  done
  stop_pids "$wait" "${pids[@]}"
  for d in "$@"; do rm -f "$PIDS/$d.pid"; done
}
stop_daemons 10 kubelet kube-proxy
stop_daemons 0 kube-scheduler kube-controller-manager kube-apiserver etcd

# 2. Containers: kill every task, delete tasks and containers while containerd still runs.
if pid_alive containerd && [[ -S "$CONTAINERD_SOCK" ]]; then
  mapfile -t tasks < <(ctr_k8s tasks ls -q 2>/dev/null || true)
  if [[ ${#tasks[@]} -gt 0 ]]; then
    say "removing ${#tasks[@]} containerd tasks"
    for t in "${tasks[@]}"; do ctr_k8s tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in "${tasks[@]}"; do ctr_k8s tasks delete -f "$t" >/dev/null 2>&1 || true; done
  fi
  mapfile -t ctrs < <(ctr_k8s containers ls -q 2>/dev/null || true)
  for c in "${ctrs[@]}"; do ctr_k8s containers delete "$c" >/dev/null 2>&1 || true; done
  say "stopping containerd"
  stop_pids 10 "$(cat "$PIDS/containerd.pid")"
fi
rm -f "$PIDS/containerd.pid"

# 3. Anything else of ours still running (shims, daemons without a PID file).
mapfile -t left < <(own_pids)
if [[ ${#left[@]} -gt 0 ]]; then
  say "stopping ${#left[@]} leftover processes: ${left[*]}"
  stop_pids 5 "${left[@]}"
fi

# 4. Container processes that outlived their shim: everything in the pods' cgroups.
for ctl in /sys/fs/cgroup/*/; do
  root="$ctl$CGROUP_ROOT"
  [[ -d "$root" ]] || continue
  while read -r procs; do
    while read -r pid; do
      if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done <"$procs"
  done < <(find "$root" -name cgroup.procs 2>/dev/null)
done
sleep 0.2
for ctl in /sys/fs/cgroup/*/; do
  root="$ctl$CGROUP_ROOT"
  [[ -d "$root" ]] || continue
  # Children first (deepest paths first); a cgroup is removed with rmdir.
  find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

# 5. Mounts under our directories (overlay rootfs, shm, volumes, netns), deepest first.
mapfile -t mounts < <(awk '{print $5}' /proc/self/mountinfo | grep -E "^($BASE|$RUN)(/|$)" | sort -r || true)
for m in "${mounts[@]}"; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
done
[[ ${#mounts[@]} -eq 0 ]] || say "unmounted ${#mounts[@]} mounts"

# 6. Network: veths on the bridge, the bridge, the service route, iptables chains.
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  for veth in $(ip -o link show master "$BRIDGE" | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$veth" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  say "removed bridge $BRIDGE"
fi
ip route del "$SERVICE_CIDR" 2>/dev/null || true

# remove_chains IPTABLES: drop every rule that jumps to, and every chain named, KUBE-*,
# CNI-* or LAMEDUCK-* in every table.
remove_chains() {
  local ipt="$1" save="$1-save" table chain
  command -v "$save" >/dev/null || return 0
  for table in filter nat mangle raw; do
    "$save" -t "$table" >/dev/null 2>&1 || continue
    # Rules in built-in chains that jump to our chains (delete by spec, as saved).
    { "$save" -t "$table" | grep -E '^-A [A-Z]+ .*-j (KUBE-|CNI-|LAMEDUCK-)' \
      | grep -Ev '^-A (KUBE-|CNI-|LAMEDUCK-)' || true; } | while read -r rule; do
      # shellcheck disable=SC2086  # the saved rule is word-split back into arguments
      eval "$ipt -t $table -D ${rule#-A }" 2>/dev/null || true
    done
    for chain in $("$save" -t "$table" | awk '/^:(KUBE-|CNI-|LAMEDUCK-)/ {print substr($1, 2)}'); do
      "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$save" -t "$table" | awk '/^:(KUBE-|CNI-|LAMEDUCK-)/ {print substr($1, 2)}'); do
      "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}
remove_chains iptables
remove_chains ip6tables
# kube-proxy's nftables tables, should any exist.
if command -v nft >/dev/null; then
  for fam in ip ip6; do nft delete table "$fam" kube-proxy 2>/dev/null || true; done
fi
conntrack -D -d "$SERVICE_CIDR" >/dev/null 2>&1 || true

# 7. State that must not survive into the next cluster.
rm -rf "$ETCD_DATA" "$CNI_IPAM_DIR" "$KUBELET_ROOT" "$POD_LOGS" "$RUN"
if ((purge)); then
  rm -rf "$BASE"
  for ctl in /sys/fs/cgroup/*/; do rmdir "$ctl$CGROUP_ROOT" 2>/dev/null || true; done
  say "purged $BASE"
fi
say "cluster down"
