#!/usr/bin/env bash
# stop-slurm.sh - stop the cluster that start-slurm.sh started in $SLURM_CI_DIR.
# Kills only processes it can prove are that cluster's: PIDs from $DIR's pid files (checked
# against their command name), plus slurmstepd processes whose environment carries
# SLURM_CI_OWNER=$DIR (inherited from our slurmd). Never pkill/killall by name.
# SLURM_CI_PURGE=1 also deletes $DIR (logs included). Safe to run when nothing is running.
# No -e on purpose: one daemon that will not stop must not keep the others running.
set -uo pipefail
DIR=${SLURM_CI_DIR:-/tmp/itwinai-hpc-slurm}
export SLURM_CONF=$DIR/slurm.conf
log() { echo "[stop-slurm] $*" >&2; }

pid_ok() {   # pid_ok PID NAME: live, non-zombie process whose comm starts with NAME
  local p=$1 st
  [[ $p =~ ^[0-9]+$ && -r /proc/$p/stat ]] || return 1
  st=$(sed 's/.*) //' "/proc/$p/stat" | cut -d' ' -f1)
  [[ $st != Z && $(<"/proc/$p/comm") == "$2"* ]]
}
stop_pid() { # stop_pid PID NAME: TERM, wait up to 10 s, then KILL
  local p=$1 i
  pid_ok "$p" "$2" || return 0
  log "stopping $2 (pid $p)"
  kill -TERM "$p" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do pid_ok "$p" "$2" || return 0; sleep 0.2; done
  log "$2 (pid $p) ignored TERM: KILL"
  kill -KILL "$p" 2>/dev/null || true
}
owned_stepds() {  # slurmstepd processes spawned by our slurmd(s)
  local e p
  for e in /proc/[0-9]*/environ; do
    p=${e#/proc/}; p=${p%/environ}
    pid_ok "$p" slurmstepd || continue
    tr '\0' '\n' <"$e" 2>/dev/null | grep -qxF "SLURM_CI_OWNER=$DIR" && echo "$p"
  done
}

# 1. cancel every job of this (private) cluster and give them a moment to finish
if [[ -s $DIR/slurmctld.pid ]] && pid_ok "$(<"$DIR/slurmctld.pid")" slurmctld; then
  mapfile -t jobs < <(squeue -h -o '%A' 2>/dev/null | sort -u)
  if ((${#jobs[@]})); then
    log "cancelling jobs: ${jobs[*]}"
    scancel "${jobs[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      [[ -z $(squeue -h -t PD,R,CG,CF,S -o '%A' 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
fi
# 2. daemons, compute side first
for f in "$DIR"/slurmd-*.pid; do [[ -s $f ]] && stop_pid "$(<"$f")" slurmd; rm -f "$f"; done
for p in $(owned_stepds); do stop_pid "$p" slurmstepd; done
[[ -s $DIR/slurmctld.pid ]] && stop_pid "$(<"$DIR/slurmctld.pid")" slurmctld
rm -f "$DIR/slurmctld.pid"
[[ -s $DIR/slurmdbd.pid ]] && stop_pid "$(<"$DIR/slurmdbd.pid")" slurmdbd
rm -f "$DIR/slurmdbd.pid"
[[ -s $DIR/mysql/mysqld.pid ]] && stop_pid "$(<"$DIR/mysql/mysqld.pid")" mariadbd
rm -f "$DIR/mysql/mysqld.pid"
[[ -s $DIR/munge/munged.pid ]] && stop_pid "$(<"$DIR/munge/munged.pid")" munged
rm -f "$DIR/munge/munged.pid"
# 3. undo the global edits start-slurm.sh made
if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$SLURM_CONF" ]]; then
  rm -f /etc/slurm/slurm.conf
fi
if grep -q "# slurm-ci:$DIR\$" /etc/hosts 2>/dev/null; then
  # rewrite in place (/etc/hosts may be a bind mount: no sed -i / rename)
  hosts=$(grep -v "# slurm-ci:$DIR\$" /etc/hosts); printf '%s\n' "$hosts" >/etc/hosts
fi
[[ ${SLURM_CI_PURGE:-0} == 1 ]] && rm -rf "$DIR"
log "stopped ($DIR)"
exit 0
