#!/usr/bin/env bash
# Stops the local cluster and removes everything it put on the machine: processes (daemons
# and containerd shims by their PID files, container processes by their cgroups),
# containerd tasks and containers, mounts under the cluster's directories, network
# namespaces, the cni0 bridge and its veths, iptables chains (KUBE-*, CNI-*, LAMEDUCK-*),
# the service route, pod cgroups and etcd data. Safe to run at any time, also after a killed or half-finished cluster-up.
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

# Only processes the cluster itself started are stopped, never one that merely names its
# directories (a `tail -f` of a log, a kubectl with the admin kubeconfig, another script):
#   - the daemons: the PID in $PIDS/NAME.pid (up.sh) while that process still runs the
#     daemon's binary (a stale file's PID may belong to anyone by now), and any process
#     running exactly that binary (a daemon whose PID file was lost). containerd is also a
#     system binary, so there the whole command line must be the one up.sh runs.
#   - containerd's shims: the PIDs in their shim.pid files under $SHIM_STATE, and any
#     process running exactly $SHIM_BIN with `-address $CONTAINERD_SOCK` (our containerd's
#     shims, whose files went with $RUN), never the shims of another containerd.

# exe_table: "PID EXECUTABLE" for every process (one pass over /proc, no fork per process);
# " (deleted)" dropped, so a daemon whose binary was rebuilt while it ran still matches.
exe_table() {
  find /proc -mindepth 2 -maxdepth 2 -name exe -printf '%h %l\n' 2>/dev/null \
    | sed -n 's|^/proc/\([0-9][0-9]*\) \(.*\)$|\1 \2|p' | sed 's/ (deleted)$//'
}

# argv_is PID ARG...: the process's command line is exactly ARG...
argv_is() {
  local pid="$1" want have; shift
  want="$(printf '%s\n' "$@")"
  have="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ "$have" == "$want" ]]
}

# is_daemon NAME PID: PID runs daemon NAME as up.sh started it.
is_daemon() {
  local name="$1" pid="$2" bin exe
  bin="$(daemon_binary "$name")"
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  [[ "${exe% (deleted)}" == "$bin" ]] || return 1
  [[ "$name" != containerd ]] || argv_is "$pid" "$bin" --config "$CONF/containerd.toml"
}

# daemon_pids NAME: the daemon's processes (see above), one per line.
daemon_pids() {
  local name="$1" bin pid exe f="$PIDS/$1.pid"
  bin="$(daemon_binary "$name")"
  {
    if [[ -f "$f" ]]; then
      pid="$(cat "$f")"
      if [[ "$pid" =~ ^[0-9]+$ ]] && is_daemon "$name" "$pid"; then echo "$pid"; fi
    fi
    while read -r pid exe; do
      if [[ "$exe" == "$bin" ]] && is_daemon "$name" "$pid"; then echo "$pid"; fi
    done < <(exe_table)
  } | sort -un
}

# is_shim PID: PID is a shim of the cluster's containerd.
is_shim() {
  local pid="$1" exe args
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  [[ "${exe% (deleted)}" == "$SHIM_BIN" ]] || return 1
  args="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  grep -A1 -x -- -address <<<"$args" | grep -xF -- "$CONTAINERD_SOCK" >/dev/null
}

# shim_pids: the cluster's containerd shims (see above), one per line.
shim_pids() {
  local f pid exe
  {
    for f in "$SHIM_STATE"/*/*/shim.pid; do
      [[ -f "$f" ]] || continue
      pid="$(cat "$f")"
      if [[ "$pid" =~ ^[0-9]+$ ]] && is_shim "$pid"; then echo "$pid"; fi
    done
    while read -r pid exe; do
      if [[ "$exe" == "$SHIM_BIN" ]] && is_shim "$pid"; then echo "$pid"; fi
    done < <(exe_table)
  } | sort -un
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

# 1. The Kubernetes daemons (daemon_pids). The node agents first, with SIGTERM (so that
#    the kubelet does not restart containers while they are being removed); then the
#    control plane at once with SIGKILL: its only state, etcd's data, is thrown away
#    below anyway, and a graceful stop costs ~2 s per daemon.
stop_daemons() {
  local wait="$1" d p pids=(); shift
  for d in "$@"; do
    while read -r p; do
      [[ -n "$p" ]] || continue
      pids+=("$p")
      say "stopping $d (pid $p)"
    done < <(daemon_pids "$d")
  done
  stop_pids "$wait" "${pids[@]}"
  for d in "$@"; do rm -f "$PIDS/$d.pid"; done
}
stop_daemons 10 kubelet kube-proxy
stop_daemons 0 kube-scheduler kube-controller-manager kube-apiserver etcd

# 2. Containers: kill every task, delete tasks and containers while containerd still runs.
mapfile -t containerd_pids < <(daemon_pids containerd)
if [[ ${#containerd_pids[@]} -gt 0 && -S "$CONTAINERD_SOCK" ]]; then
  mapfile -t tasks < <(ctr_k8s tasks ls -q 2>/dev/null || true)
  if [[ ${#tasks[@]} -gt 0 ]]; then
    say "removing ${#tasks[@]} containerd tasks"
    for t in "${tasks[@]}"; do ctr_k8s tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in "${tasks[@]}"; do ctr_k8s tasks delete -f "$t" >/dev/null 2>&1 || true; done
  fi
  mapfile -t ctrs < <(ctr_k8s containers ls -q 2>/dev/null || true)
  for c in "${ctrs[@]}"; do ctr_k8s containers delete "$c" >/dev/null 2>&1 || true; done
fi
stop_daemons 10 containerd
stop_daemons 0 registry

# 3. Shims that outlived their tasks or containerd.
mapfile -t left < <(shim_pids)
if [[ ${#left[@]} -gt 0 ]]; then
  say "stopping ${#left[@]} containerd shims: ${left[*]}"
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
