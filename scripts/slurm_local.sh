#!/usr/bin/env bash
# A single-node Slurm on localhost, to try `ls-bench -m hydra/launcher=slurm ...` on one machine
# (root, Debian or Ubuntu). Not a cluster set-up: no cgroups, no accounting, one partition.
#
#   scripts/slurm_local.sh install   apt-get the packages (munge, slurmctld, slurmd, slurm-client)
#   scripts/slurm_local.sh start     munged, slurmctld, slurmd; returns once sinfo shows the node idle
#   scripts/slurm_local.sh status    the daemons and sinfo; exit status 0 only when all three run
#   scripts/slurm_local.sh stop      cancels the jobs, stops the daemons, removes spool and state
#   scripts/slurm_local.sh conf      writes slurm.conf (if needed) and prints its path
#
# Everything lives in $SLURM_LOCAL_DIR (default /tmp/ls-bench-slurm): slurm.conf, its own munge key
# and munged socket, state, spool, logs. /etc is never written, so a machine's real Slurm or munge
# configuration is left alone, and several of these can exist (the tests use their own folder).
# The price: Slurm's commands (sinfo, sbatch, squeue, and ls-bench's submitit launcher) find this
# cluster through SLURM_CONF, in every shell that uses it:
#   export SLURM_CONF=$(scripts/slurm_local.sh conf)
# Ports: slurmctld 6817, slurmd 6818 (Slurm's defaults; a second local cluster cannot run at once).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/ls-bench-slurm}
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket
PACKAGES=(munge slurmctld slurmd slurm-client)
export SLURM_CONF=$CONF

die() { echo "slurm_local.sh: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (slurmd starts jobs as their users)"; }
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
pid_of() { local f=$DIR/run/$1.pid; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }
PATH=$PATH:/usr/sbin:/sbin

install_packages() {
  need_root install
  if have munged && have slurmctld && have slurmd && have sbatch; then return 0; fi
  have apt-get || die "no apt-get: install munge and Slurm (slurmctld, slurmd, client commands) yourself"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } >"${TMPDIR:-/tmp}/slurm_local-apt.log" 2>&1 \
    || die "apt-get install ${PACKAGES[*]} failed (log: ${TMPDIR:-/tmp}/slurm_local-apt.log)"
}

write_conf() {
  have slurmd || die "slurmd not found: run '$0 install' first"
  mkdir -p "$DIR"/{munge,state,spool,log,run}
  chmod 755 "$DIR/munge"  # the key file itself is 0600; the socket must be reachable by job users
  # The machine's real CPU count and memory, as slurmd itself measures them (so it registers).
  local hw cpus mem
  hw=$(slurmd -C 2>/dev/null | head -1) || die "slurmd -C failed"
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs and RealMemory from 'slurmd -C': $hw"
  cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm_local.sh: a single-node Slurm on localhost (no cgroups, no accounting).
ClusterName=ls-bench-local
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
AuthType=auth/munge
# cred_expire also delays a requeued job's restart (Slurm's default: 120 s); 10 s is plenty on localhost.
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
KillWait=10
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

start_munge() {
  [ -n "$(pid_of munged)" ] && return 0
  local key=$DIR/munge/munge.key
  if [ ! -s "$key" ]; then
    (umask 077; dd if=/dev/urandom of="$key" bs=1024 count=1 status=none) || die "cannot write $key"
  fi
  munged --force --key-file="$key" --socket="$SOCKET" --pid-file="$DIR/run/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die "munged did not start (log: $DIR/log/munged.log)"
}

wait_idle() {
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -N -n localhost -o %T 2>/dev/null | head -1) || true
    [ "$state" = idle ] && return 0
    if [ "$state" = down ] || [ "$state" = drained ]; then scontrol update nodename=localhost state=resume 2>/dev/null || true; fi
    sleep 1
  done
  die "the node is not idle after 60 s (sinfo: '${state:-no answer}'; logs: $DIR/log)"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  need_root start
  write_conf
  if [ -z "$(pid_of slurmctld)" ] && ! port_free 6817; then die "port 6817 is in use (another slurmctld?)"; fi
  if [ -z "$(pid_of slurmd)" ] && ! port_free 6818; then die "port 6818 is in use (another slurmd?)"; fi
  start_munge
  [ -n "$(pid_of slurmctld)" ] || slurmctld || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
  [ -n "$(pid_of slurmd)" ] || slurmd -N localhost || die "slurmd did not start (log: $DIR/log/slurmd.log)"
  wait_idle
  echo "slurm_local.sh: node localhost idle, partition debug; in your shell: export SLURM_CONF=$CONF"
}

stop_daemon() {
  local pid
  pid=$(pid_of "$1") || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  if [ -n "$(pid_of slurmctld)" ]; then  # jobs first: their slurmstepd outlive slurmd
    scancel --quiet --partition=debug 2>/dev/null || true
    for _ in $(seq 30); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 1; done
  fi
  stop_daemon slurmd
  stop_daemon slurmctld
  stop_daemon munged
  rm -rf "$DIR/spool" "$DIR/state" "$DIR/run"
}

status() {
  local ok=0 name pid
  for name in munged slurmctld slurmd; do
    if pid=$(pid_of $name); then echo "$name: running (pid $pid)"; else echo "$name: not running"; ok=1; fi
  done
  [ $ok = 0 ] && sinfo
  echo "SLURM_CONF=$CONF"
  return $ok
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  conf) [ -f "$CONF" ] || write_conf; echo "$CONF" ;;
  *) die "usage: $0 install|start|stop|status|conf" ;;
esac
