"""Run a rendered sbatch script as a site would, with stand-ins for what cannot exist here: srun
(runs its `bash -c` task once per node, as that node), scontrol (the node list), the container
runtimes, torchrun, python -m torch.distributed.run and `module`. Each stand-in appends one JSON
line to $STUB_LOG: what it was called with and the environment the launch saw. Tests assert on
what was launched, not on the script's text."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

RECORD = r'''
record() {  # record NAME ARGS...: one JSON line with the arguments and the environment
  python3 - "$@" <<'PY' >> "$STUB_LOG"
import json, os, sys
keep = ("SLURMD_NODENAME", "SLURM_NODEID", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME",
        "OMP_NUM_THREADS", "SRUN_CPUS_PER_TASK", "MIOPEN_USER_DB_PATH", "HEAD", "PORT",
        "MASTER_ADDR", "RANK", "WORLD_SIZE", "NCCL_IB_DISABLE")
env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("SINGULARITYENV_")}
print(json.dumps({"tool": sys.argv[1], "args": sys.argv[2:], "cwd": os.getcwd(), "env": env}))
PY
}
'''

STUBS = {
    # srun: record; a `bash -c SCRIPT` task runs once per node (SLURMD_NODENAME, SLURM_NODEID),
    # anything else (a container-engine or pyxis launch of the command itself) is only recorded.
    "srun": RECORD + r'''
record srun "$@"
while (($#)) && [[ $1 == -* ]]; do shift; done
if [[ ${1:-} == bash && ${2:-} == -c ]]; then
  id=0
  for node in $STUB_NODES; do
    SLURMD_NODENAME=$node SLURM_NODEID=$id SLURM_PROCID=$id SLURM_LOCALID=0 \
      bash -c "$3" "${@:4}" || exit $?
    id=$((id + 1))
  done
fi
''',
    "scontrol": r'''
if [[ $1 == show && $2 == hostnames ]]; then printf '%s\n' $STUB_NODES; exit 0; fi
echo "stub scontrol: $*" >&2; exit 1
''',
    # runtimes that wrap a command: record, drop their own options and the image, run the rest
    "apptainer": RECORD + r'''
record apptainer "$@"
shift   # exec | run
while (($#)) && [[ $1 == -* ]]; do case $1 in --bind|--env) shift 2 ;; *) shift ;; esac; done
shift   # the image
exec "$@"
''',
    "shifter": RECORD + r'''
record shifter "$@"
while (($#)) && [[ $1 == -* ]]; do shift; done
exec "$@"
''',
    "podman-hpc": RECORD + r'''
record podman-hpc "$@"
shift   # run
while (($#)) && [[ $1 == -* ]]; do case $1 in -v|-w|--env) shift 2 ;; *) shift ;; esac; done
shift   # the image
exec "$@"
''',
    "torchrun": RECORD + 'record torchrun "$@"\n',
    "python": RECORD + 'record python "$@"\n',
    "module": RECORD + 'record module "$@"\n',
    "itwinai-hpc": RECORD + 'record itwinai-hpc "$@"\n',
}
STUBS["singularity"] = STUBS["apptainer"].replace("record apptainer", "record singularity")


def install(folder: Path, without: tuple[str, ...] = ()) -> Path:
    """The stand-ins in `folder`/bin, but those named in `without` (a node that lacks them);
    returns that folder (put it first on PATH)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in STUBS.items():
        if name in without:
            (bin_dir / name).unlink(missing_ok=True)
            continue
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    return bin_dir


def run_sbatch_script(script: Path, folder: Path, nodes: list[str], job_id: int = 1234,
                      fake_paths: list[str] = (), without: tuple[str, ...] = ()
                      ) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run `script` as the batch shell of job `job_id` on `nodes`. `fake_paths` (site files a
    bind names, e.g. /opt/cray) are made to exist for this run only, in a private mount
    namespace (overlays over their parent folders). `without`: stand-ins left out."""
    log = folder / f"stub-{script.stem}.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{install(folder, without)}:{os.environ['PATH']}",
           "STUB_LOG": str(log), "STUB_NODES": " ".join(nodes), "SLURM_JOB_ID": str(job_id),
           "SLURM_JOB_NODELIST": ",".join(nodes), "SLURM_NNODES": str(len(nodes)),
           "SLURM_NODEID": "0", "SLURMD_NODENAME": nodes[0],   # the batch shell: first node
           "USER": "alice"}
    command = ["bash", str(script)]
    if fake_paths:
        mounts = []
        for i, parent in enumerate(sorted({str(Path(p).parent) for p in fake_paths})):
            upper, work = folder / f"ov{i}-upper", folder / f"ov{i}-work"
            upper.mkdir(exist_ok=True)
            work.mkdir(exist_ok=True)
            mounts.append(f"mount -t overlay overlay -o lowerdir={parent},upperdir={upper},"
                          f"workdir={work} {parent}")
        makes = [f"mkdir -p {p}" if not Path(p).suffix else f"touch {p}" for p in fake_paths]
        command = ["unshare", "-m", "bash", "-c",
                   " && ".join(mounts + makes + [f"exec bash {script}"])]
    p = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder,
                       timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return p, calls
