#!/usr/bin/env bash
# A two-node SLURM cluster on this one host, for the integration tests (tests/test_slurm.py,
# tests/test_multinode.py). As root: installs Debian's slurmctld, slurmd and munge if missing,
# then builds
#   - a bridge benchbr0 at 10.77.0.1/24 (the controller, "benchctl"), private and unrouted;
#   - two network namespaces, benchnode1 (10.77.0.11) and benchnode2 (10.77.0.12), each joined
#     to the bridge by a veth pair and with no route beyond 10.77.0.0/24;
#   - /etc/hosts lines for the three names (between "slurm-bench" markers);
#   - one munged (its own key and socket), one slurmctld (host name benchctl) and, inside each
#     namespace with its own host name (unshare --uts), one `slurmd -N benchnodeN`.
# Everything is the cluster's own: ClusterName=bench2, config in /etc/slurm-bench, state, pid
# files, logs under */slurm-bench, ports 6917/6918, so a SLURM already set up here is not touched.
# Reach it with SLURM_CONF=/etc/slurm-bench/slurm.conf. Idempotent: a cluster whose two nodes
# answer is left as it is; anything else is torn down (.ci/slurm-down.sh) and built again.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then echo "slurm-up: must run as root" >&2; exit 1; fi
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=.ci/slurm-down.sh
source "$here/slurm-down.sh" --definitions-only

need=(slurmctld slurmd munged sbatch srun ip unshare)
for cmd in "${need[@]}"; do
  if ! command -v "$cmd" >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
    break
  fi
done

export SLURM_CONF="$CONF/slurm.conf"
daemons_alive() {   # munged, slurmctld and both slurmd running from this cluster's pid files
  [ -n "$(_pid_of "$RUN/munge/munged.pid" munged)" ] && [ -n "$(_pid_of "$RUN/slurmctld.pid" slurmctld)" ] \
    && [ -n "$(_pid_of "$RUN/slurmd.benchnode1.pid" slurmd)" ] && [ -n "$(_pid_of "$RUN/slurmd.benchnode2.pid" slurmd)" ]
}
nodes_idle() {   # both nodes answer (idle, mixed, allocated or completing; no "*": not responding)
  [ -s "$SLURM_CONF" ] || return 1
  local n
  n=$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE "^benchnode[12] (idle|mixed|allocated|completing)$" || true)
  [ "$n" = 2 ]
}
show_logs() {
  sinfo -N >&2 || true
  tail -n 20 "$LOG"/slurmctld.log "$LOG"/slurmd.*.log "$LOG"/munge/munged.log >&2 || true
}
if daemons_alive && nodes_idle; then echo "slurm-up: cluster already up (SLURM_CONF=$SLURM_CONF)"; exit 0; fi
bench_down >/dev/null 2>&1 || true
trap 'echo "slurm-up: failed at line $LINENO; see $LOG/" >&2; show_logs' ERR

# ---- network: a bridge in this namespace, a namespace per node -----------------------------
ip link add "$BRIDGE" type bridge
ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
# where bridged frames pass through iptables (br_netfilter, e.g. beside Docker, whose FORWARD
# policy drops them), let the nodes reach each other across the bridge, and only there
if [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" = 1 ] && command -v iptables >/dev/null; then
  iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
fi
for i in 1 2; do
  node=benchnode$i
  ip netns add "$node"
  ip link add "benchveth$i" type veth peer name "benchveth${i}n"
  ip link set "benchveth${i}n" netns "$node"
  ip link set "benchveth$i" master "$BRIDGE"
  ip link set "benchveth$i" up
  ip netns exec "$node" ip link set lo up
  ip netns exec "$node" ip addr add "$NET.1$i/24" dev "benchveth${i}n"
  ip netns exec "$node" ip link set "benchveth${i}n" up
done
{
  echo "$HOSTS_BEGIN"
  echo "$CTL_ADDR benchctl"
  echo "$NET.11 benchnode1"
  echo "$NET.12 benchnode2"
  echo "$HOSTS_END"
} >> /etc/hosts

# ---- configuration --------------------------------------------------------------------------
mkdir -p "$CONF/munge" "$RUN/munge" "$SPOOL/ctld" "$SPOOL/d.benchnode1" "$SPOOL/d.benchnode2" "$SPOOL/munge" "$LOG/munge"
cat > "$SLURM_CONF" <<CONF
# written by .ci/slurm-up.sh: two nodes in network namespaces on one host
ClusterName=bench2
SlurmctldHost=benchctl($CTL_ADDR)
SlurmctldPort=6917
SlurmdPort=6918
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$RUN/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d.%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=2
MinJobAge=600
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=benchnode1 NodeHostname=benchnode1 NodeAddr=$NET.11 CPUs=1 RealMemory=1024 State=UNKNOWN
NodeName=benchnode2 NodeHostname=benchnode2 NodeAddr=$NET.12 CPUs=1 RealMemory=1024 State=UNKNOWN
PartitionName=bench Nodes=benchnode[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
echo "CgroupPlugin=cgroup/v1" > "$CONF/cgroup.conf"
if [ ! -s "$CONF/munge/munge.key" ]; then
  dd if=/dev/urandom bs=1 count=1024 of="$CONF/munge/munge.key" status=none
fi
chown -R munge:munge "$CONF/munge" "$RUN/munge" "$SPOOL/munge" "$LOG/munge"
chmod 0700 "$CONF/munge" "$SPOOL/munge" "$LOG/munge"; chmod 0755 "$RUN/munge"; chmod 0400 "$CONF/munge/munge.key"

# ---- daemons ---------------------------------------------------------------------------------
runuser -u munge -- munged --socket="$RUN/munge/munge.socket" --key-file="$CONF/munge/munge.key" \
    --pid-file="$RUN/munge/munged.pid" --log-file="$LOG/munge/munged.log" --seed-file="$SPOOL/munge/munged.seed"
# slurmctld finds itself in SlurmctldHost by host name: give it its own UTS namespace
# shellcheck disable=SC2016   # "$0", "$1" expand in the inner shell
unshare --uts sh -c 'hostname benchctl && exec slurmctld -c -f "$0"' "$SLURM_CONF"
for i in 1 2; do   # shellcheck disable=SC2016
  ip netns exec "benchnode$i" unshare --uts sh -c 'hostname "$0" && exec slurmd -N "$0" -f "$1"' "benchnode$i" "$SLURM_CONF"
done

for _ in $(seq 90); do
  if daemons_alive && nodes_idle; then
    sinfo -N -o '%N %T %c' | sed 's/^/slurm-up: /'
    echo "slurm-up: two nodes up; use SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  for i in 1 2; do scontrol update NodeName="benchnode$i" State=RESUME >/dev/null 2>&1 || true; done
  sleep 1
done
echo "slurm-up: the nodes did not become idle; see $LOG/" >&2
show_logs
exit 1
