#!/usr/bin/env bash
# Build the image that the MNIST workflows name (container/itwinai-hpc.sif) from apptainer.def.
# Needs apptainer (or singularity) on this machine; run it on a login or build node.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runtime=$(command -v apptainer || command -v singularity || true)
if [[ -z $runtime ]]; then
  echo "build.sh: neither apptainer nor singularity is installed here; build on a machine that has one" >&2
  exit 1
fi
exec "$runtime" build "${@:---force}" container/itwinai-hpc.sif apptainer.def
