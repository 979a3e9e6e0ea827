#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm tests (as root):
# munge, slurmctld and slurmd from Debian's slurmctld/slurmd/slurm-client/
# munge packages, select/cons_tres over this machine's CPUs,
# proctrack/linuxproc, task/none, no accounting, jobcomp/filetxt.
#
#   scripts/slurm-cluster.sh start   # writes /etc/slurm/slurm.conf, starts the daemons, waits for the node
#   scripts/slurm-cluster.sh stop    # stops what `start` started (by PID)
#
# Daemons, their PIDs and logs live under $BABELFLOW_SLURM_DIR (default
# /tmp/babelflow-slurm). Nothing else on the machine is touched but
# /etc/slurm/slurm.conf (an existing one is kept as slurm.conf.before-babelflow).
set -euo pipefail
dir="${BABELFLOW_SLURM_DIR:-/tmp/babelflow-slurm}"
conf=/etc/slurm/slurm.conf

stop() {
  for name in slurmd slurmctld munged; do
    pidfile="$dir/$name.pid"
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  if [ -f "$conf.before-babelflow" ]; then mv "$conf.before-babelflow" "$conf"; fi
}

start() {
  if [ "$(id -u)" != 0 ]; then echo "slurm-cluster.sh: run as root (it starts munged, slurmctld and slurmd)" >&2; exit 1; fi
  for cmd in munged slurmctld slurmd sbatch; do
    command -v "$cmd" >/dev/null || { echo "slurm-cluster.sh: $cmd is not installed (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 1; }
  done
  stop
  mkdir -p "$dir"/{state,spool,munge} /etc/slurm
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"

  # munge: its key (Debian's postinst makes one; make one if not), a socket of our own.
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown root:root /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  munged --force --key-file=/etc/munge/munge.key --pid-file="$dir/munged.pid" \
         --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done

  [ -f "$conf" ] && [ ! -f "$conf.before-babelflow" ] && cp "$conf" "$conf.before-babelflow"
  cat > "$conf" <<CONF
# Written by babelflow's scripts/slurm-cluster.sh: a one-node test cluster.
ClusterName=babelflow
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SchedulerType=sched/backfill
# A test cluster runs many second-long jobs: look for pending work every
# second (backfill) instead of every 30.
SchedulerParameters=bf_interval=1,batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=10
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  slurmctld -i
  slurmd
  # Ready when the node takes jobs.
  for _ in $(seq 100); do
    state="$(sinfo -h -n "$host" -o %T 2>/dev/null || true)"
    case "$state" in idle*|mixed*|allocated*) echo "slurm-cluster.sh: node $host $state ($cpus CPUs, $mem_mb MB)"; return 0;; esac
    sleep 0.3
  done
  echo "slurm-cluster.sh: the node did not come up (state: ${state:-none}); logs in $dir" >&2
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
