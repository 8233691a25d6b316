#!/usr/bin/env bash
# Install and start a single-node SLURM (Debian slurm-wlm) on this machine, for the `slurm` tests.
#
# Usage: sudo bash scripts/start_slurm.sh        (as root; no systemd needed)
#
# Idempotent: exits 0 at once when `sinfo` already shows an idle/mixed/allocated node.
# Fails quickly (exit 2) with a message when not root or when apt-get is absent.
# Recipe: ../shared/research/ecosystem.md ("SLURM on one machine"): munge + slurmctld + slurmd,
# ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, no accounting (qtoolkit uses scontrol).
# Environment: SLURM_START_TIMEOUT (s, default 60) bounds the wait for the node to become idle.
set -euo pipefail

TIMEOUT="${SLURM_START_TIMEOUT:-60}"
log() { echo "[start_slurm] $*" >&2; }

node_ready() {
  command -v sinfo >/dev/null 2>&1 || return 1
  local states
  states="$(timeout 10 sinfo -h -o %T 2>/dev/null || true)"
  grep -Eq '^(idle|mixed|allocated|completing)' <<<"$states"
}

if node_ready; then
  log "SLURM already running: $(sinfo -h -o '%N %T' | tr '\n' ' ')"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  log "not root: cannot install or start SLURM (run as root, or start SLURM yourself)"
  exit 2
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
  || ! command -v munged >/dev/null 2>&1 || ! command -v sinfo >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    log "SLURM is not installed and apt-get is absent: install slurm-wlm and munge yourself"
    exit 2
  fi
  log "installing slurm-wlm, slurmctld, slurmd, slurm-client, munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    slurm-wlm slurmctld slurmd slurm-client munge >/dev/null
fi

HOST="$(hostname -s)"
NCPU="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
REAL_MEM=$(( MEM_MB > 4096 ? MEM_MB - 2048 : MEM_MB / 2 ))

id slurm >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin slurm
id munge >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin munge

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge \
  /var/lib/munge /var/log/munge /etc/munge
chown slurm:slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
chmod 0755 /run/munge

CONF=/etc/slurm/slurm.conf
NEW_CONF="$(cat <<EOF
# written by xtalforge scripts/start_slurm.sh: single-node SLURM for CI
ClusterName=ci
SlurmctldHost=${HOST}
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${REAL_MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)"
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  printf '%s\n' "$NEW_CONF" > "$CONF"
  log "wrote $CONF (node ${HOST}, ${NCPU} CPUs, ${REAL_MEM} MB)"
fi

# munge: key, then daemon
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 || true
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
if ! munge -n >/dev/null 2>&1; then
  stale_munge_pid="$(cat /run/munge/munged.pid 2>/dev/null || true)"
  if [ -n "$stale_munge_pid" ] && ! kill -0 "$stale_munge_pid" 2>/dev/null; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
  fi
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
  munge -n >/dev/null 2>&1 || { log "munged did not start"; exit 1; }
fi

# SLURM daemons: stop stale ones we can identify by their pid files, wait for them to exit
for d in slurmctld slurmd; do
  pidf="/run/${d}.pid"
  if [ -f "$pidf" ]; then
    pid="$(cat "$pidf")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$pidf"
  fi
done
/usr/sbin/slurmctld
/usr/sbin/slurmd

deadline=$(( $(date +%s) + TIMEOUT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if node_ready; then
    log "SLURM ready: $(sinfo -h -o '%N %T %c CPUs' | tr '\n' ' ')"
    exit 0
  fi
  state="$(timeout 5 sinfo -h -o %T 2>/dev/null || true)"
  case "$state" in
    down*|drain*|unk*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
log "SLURM node did not become idle within ${TIMEOUT}s: $(sinfo 2>&1 | tail -n +2 | tr '\n' ' ')"
log "see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log"
exit 1
