#!/usr/bin/env bash
# Stops the two-node cluster of .ci/slurm-up.sh: every process inside the node namespaces
# (slurmd, job steps), slurmctld and munged (by their pid files), then removes the namespaces,
# the veth pairs, the bridge and the /etc/hosts lines. Config, state and logs stay for reading.
# Idempotent; a cluster that is not there is fine. `source slurm-down.sh --definitions-only`
# only defines the names (slurm-up.sh uses them).

# shellcheck disable=SC2034   # the names slurm-up.sh shares
CONF=/etc/slurm-bench
RUN=/run/slurm-bench
SPOOL=/var/spool/slurm-bench
LOG=/var/log/slurm-bench
BRIDGE=benchbr0
NET=10.77.0
CTL_ADDR=$NET.1
HOSTS_BEGIN="# >>> slurm-bench (.ci/slurm-up.sh)"
HOSTS_END="# <<< slurm-bench"

_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

_stop_pids() {   # TERM, up to 10 s, then KILL
  local pid pids=("$@") left
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    left=0
    for pid in "${pids[@]}"; do _alive "$pid" && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.2
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

_pid_of() {   # the pid in file $1 if that process is still the program $2
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  if _alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then echo "$pid"; fi
}

bench_down() {
  local node pids=() pid i hosts
  for node in benchnode1 benchnode2; do   # slurmd, job steps, anything else started on a node
    if ip netns list 2>/dev/null | grep -qw "^$node"; then
      mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$node" 2>/dev/null || true)
    fi
  done
  for i in "slurmd.benchnode1.pid slurmd" "slurmd.benchnode2.pid slurmd" "slurmctld.pid slurmctld"; do
    pid=$(_pid_of "$RUN/${i% *}" "${i#* }")
    if [ -n "$pid" ]; then pids+=("$pid"); fi
  done
  _stop_pids "${pids[@]}"
  pid=$(_pid_of "$RUN/munge/munged.pid" munged)
  if [ -n "$pid" ]; then _stop_pids "$pid"; fi   # last: the others authenticate through it
  for i in 1 2; do
    ip netns del "benchnode$i" 2>/dev/null || true
    ip link del "benchveth$i" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  if command -v iptables >/dev/null; then
    while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
  fi
  if grep -qF "$HOSTS_BEGIN" /etc/hosts 2>/dev/null; then
    # rewrite in place (/etc/hosts may be a mount point that cannot be renamed over)
    hosts=$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' /etc/hosts)
    printf '%s\n' "$hosts" > /etc/hosts
  fi
  rm -f "$RUN"/slurmctld.pid "$RUN"/slurmd.*.pid "$RUN"/munge/munged.pid
}

if [ "${1:-}" != "--definitions-only" ]; then
  set -uo pipefail
  if [ "$(id -u)" != 0 ]; then echo "slurm-down: must run as root" >&2; exit 1; fi
  bench_down
  echo "slurm-down: two-node cluster stopped"
fi
