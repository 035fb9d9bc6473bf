#!/usr/bin/env bash
# A throwaway single-node Slurm cluster for the tests (recipe: shared/docs/test-services.md).
#   slurm.sh start DIR   starts munged, slurmctld and slurmd with every path under DIR; prints the
#                        path of its slurm.conf (export it as SLURM_CONF and ECOQ_TEST_SLURM_CONF)
#   slurm.sh stop DIR    cancels every job, then stops the daemons by their pid files
# Needs the Debian packages slurmctld, slurmd, slurm-client and munge, and root (slurmd runs jobs
# as their submitters). Starting takes about 1-2 s.
set -euo pipefail
cmd=${1:?start|stop}
sb=${2:?directory}
here=$(cd "$(dirname "$0")" && pwd)
export SLURM_CONF="$sb/etc/slurm.conf"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
stop_pid() {  # SIGTERM the process named in pid file $1, then wait up to 10 s for it to exit
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "slurm.sh: process $pid ($1) did not stop after SIGTERM" >&2
}

case $cmd in
start)
  for bin in munged slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || {
      echo "slurm.sh: $bin is missing (apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge)" >&2
      exit 3
    }
  done
  mkdir -p "$sb"/{etc,munge,state,spool,run,log}
  # munged refuses a socket directory that others cannot enter, parents included (mktemp -d
  # makes a 0700 folder): open the path for execute (traversal) only.
  chmod 0755 "$sb" "$sb/munge"
  chmod a+x "$(dirname "$sb")" 2>/dev/null || true
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ { m = int($2 / 1024 / 2); print (m > 4000 ? 4000 : m) }' /proc/meminfo)
  sed -e "s|@SB@|$sb|g" -e "s|@USER@|$(id -un)|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
      -e "s|@CTLD_PORT@|$(free_port)|g" -e "s|@SLURMD_PORT@|$(free_port)|g" \
      "$here/slurm.conf.in" >"$SLURM_CONF"
  dd if=/dev/urandom of="$sb/munge/munge.key" bs=1 count=1024 status=none
  chmod 0400 "$sb/munge/munge.key"
  munged --key-file="$sb/munge/munge.key" --socket="$sb/munge/munge.socket.2" \
    --pid-file="$sb/run/munged.pid" --log-file="$sb/log/munged.log" --seed-file="$sb/munge/seed"
  slurmctld -c
  slurmd -N localhost
  for _ in $(seq 300); do
    [ "$(sinfo -h -n localhost -o %T 2>/dev/null)" = idle ] && { echo "$SLURM_CONF"; exit 0; }
    sleep 0.1
  done
  echo "slurm.sh: the node did not become idle within 30 s; see $sb/log/" >&2
  exit 1
  ;;
stop)
  [ -f "$SLURM_CONF" ] || exit 0
  # Cancel every job first: an orphaned slurmstepd ignores SIGTERM.
  if [ -f "$sb/run/slurmctld.pid" ] && kill -0 "$(cat "$sb/run/slurmctld.pid")" 2>/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086  # one job id per word
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 150); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
    fi
  fi
  stop_pid "$sb/run/slurmd.pid"
  stop_pid "$sb/run/slurmctld.pid"
  stop_pid "$sb/run/munged.pid"
  ;;
*) echo "usage: slurm.sh start DIR | stop DIR" >&2; exit 2 ;;
esac
