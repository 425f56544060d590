#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, to try slurm/*.sbatch without a real cluster (and for
# tests/test_slurm.py). Debian/Ubuntu packages: apt-get install -y slurm-wlm munge.
#
#   slurm/local_cluster.sh [start] [DIR]   write the configuration, start munged, slurmctld and slurmd, wait until the
#                                          node is idle (idempotent: a running cluster is left as it is)
#   slurm/local_cluster.sh stop [DIR]      stop the three daemons started from DIR (by their pid files)
#   slurm/local_cluster.sh status [DIR]    print whether they run and what sinfo says
#
# DIR (default $CLEANHYPER_SLURM_DIR or /tmp/cleanhyper-slurm) holds everything: the munge key and socket, slurm.conf,
# cgroup.conf, state, spool, logs and pid files. Nothing under /etc is read or written, so Slurm's clients need
#   export SLURM_CONF=DIR/slurm.conf
# which the script prints when the node is up. The configuration is the smallest that runs job arrays and dependencies:
# select/cons_tres by core, ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no cgroups, which containers
# often lack), no accounting, one partition "local" with one node named `hostname -s` whose CPUs and memory are what
# `slurmd -C` reads from the machine. Runs as root (containers, CI) or as a plain user (the daemons then run as that
# user and run only that user's jobs). Ports: $SLURMCTLD_PORT (6817) and $SLURMD_PORT (6818).
set -euo pipefail

cmd=start
case "${1:-}" in
  start | stop | status) cmd=$1; shift ;;
esac
DIR=${1:-${CLEANHYPER_SLURM_DIR:-/tmp/cleanhyper-slurm}}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
export SLURM_CONF=$DIR/slurm.conf

say() { echo "local_cluster: $*"; }
die() { echo "local_cluster: error: $*" >&2; exit 1; }

# pid of a daemon we started from DIR, if it still runs (the name check guards against a recycled pid)
running() {
  local pidfile=$1 name=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$name" ]] || return 1
  local _pid _comm state
  read -r _pid _comm state _ <"/proc/$pid/stat" || return 1
  [[ $state != Z ]] || return 1 # exited, not yet reaped (containers without an init that reaps)
  echo "$pid"
}

stop_one() {
  local pidfile=$1 name=$2 pid
  if pid=$(running "$pidfile" "$name"); then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      running "$pidfile" "$name" >/dev/null || break
      sleep 0.2
    done
    if running "$pidfile" "$name" >/dev/null; then
      say "$name did not stop in 10 s; killing pid $pid"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop_all() {
  stop_one "$DIR/slurmd.pid" slurmd
  stop_one "$DIR/slurmctld.pid" slurmctld
  stop_one "$DIR/run/munged.pid" munged
}

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n1 || true; }

if [[ $cmd == stop ]]; then
  stop_all
  say "stopped (configuration and logs stay in $DIR)"
  exit 0
fi

missing=()
for exe in munged munge slurmctld slurmd sbatch sinfo scontrol; do
  command -v "$exe" >/dev/null || missing+=("$exe")
done
if ((${#missing[@]})); then
  echo "local_cluster: error: Slurm or munge is not installed (missing: ${missing[*]}); on Debian/Ubuntu: apt-get install -y slurm-wlm munge" >&2
  exit 2
fi

NODE=$(hostname -s)

if [[ $cmd == status ]]; then
  for d in "run/munged.pid munged" "slurmctld.pid slurmctld" "slurmd.pid slurmd"; do
    set -- $d
    if pid=$(running "$DIR/$1" "$2"); then say "$2 running (pid $pid)"; else say "$2 not running"; fi
  done
  sinfo 2>&1 || true
  exit 0
fi

if running "$DIR/run/munged.pid" munged >/dev/null && running "$DIR/slurmctld.pid" slurmctld >/dev/null &&
  running "$DIR/slurmd.pid" slurmd >/dev/null && [[ $(node_state) == idle || $(node_state) == mix || $(node_state) == alloc ]]; then
  say "already running from $DIR (node $NODE: $(node_state))"
  echo "export SLURM_CONF=$SLURM_CONF"
  exit 0
fi
stop_all # whatever half of it is left from an earlier start

say "configuring in $DIR"
mkdir -p "$DIR"/{munge,run,state,spool,log}
chmod 755 "$DIR"      # munged wants every directory above its socket searchable by all (so DIR's parents too)
chmod 700 "$DIR/munge" # the key: munged refuses a key that others can read
chmod 755 "$DIR/run"   # the socket: every user must reach it, but not write to the directory
if [[ ! -s $DIR/munge/munge.key ]]; then
  say "creating a munge key"
  (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
fi
chmod 400 "$DIR/munge/munge.key"
SOCKET=$DIR/run/munge.socket.2
USER_NAME=$(id -un)

# What slurmd finds on this machine: CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=...
HW=$(slurmd -C | head -n1 | sed 's/^NodeName=[^ ]* //')
[[ $HW == *CPUs=* ]] || die "slurmd -C did not report the machine's CPUs: $HW"

cat >"$DIR/slurm.conf" <<EOF
# Written by slurm/local_cluster.sh: a single-node cluster for trying the job-array templates.
ClusterName=cleanhyper
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$USER_NAME
SlurmdUser=$USER_NAME
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SwitchType=switch/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# a job whose afterok dependency failed is cancelled instead of pending for ever
DependencyParameters=kill_invalid_depend
# keep finished jobs visible to scontrol for 10 minutes (tests read their start and end times)
MinJobAge=600
SlurmdTimeout=300
InactiveLimit=0
KillWait=10
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$DIR/cgroup.conf" <<EOF
# Written by slurm/local_cluster.sh. No plugin in slurm.conf uses cgroups (proctrack/linuxproc, task/none).
CgroupPlugin=autodetect
EOF
: >"$DIR/plugstack.conf" # no SPANK plugins (and not the system's /etc/slurm/plugstack.conf)

say "starting munged"
munged --key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/run/munged.pid" \
  --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" ||
  die "munged did not start; see $DIR/log/munged.log: $(tail -n1 "$DIR/log/munged.log" 2>/dev/null)"
munge -S "$SOCKET" -n | unmunge -S "$SOCKET" >/dev/null || die "munge cannot encode and decode a credential"

say "starting slurmctld"
slurmctld -f "$SLURM_CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log: $(tail -n1 "$DIR/log/slurmctld.log")"
say "starting slurmd"
slurmd -f "$SLURM_CONF" || die "slurmd did not start; see $DIR/log/slurmd.log: $(tail -n1 "$DIR/log/slurmd.log")"

say "waiting for node $NODE to be idle"
state=
for _ in $(seq 60); do
  state=$(node_state)
  [[ $state == idle ]] && break
  sleep 1
done
if [[ $state != idle ]]; then
  scontrol show node "$NODE" 2>&1 | grep -E "State=|Reason=" >&2 || true
  die "node $NODE is '${state:-unknown}' after 60 s, not idle; logs: $DIR/log/slurmctld.log, $DIR/log/slurmd.log"
fi
sinfo
say "up; for Slurm's commands:"
echo "export SLURM_CONF=$SLURM_CONF"
