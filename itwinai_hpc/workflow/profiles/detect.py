"""`itwinai-hpc profiles init`: a starting profile for the cluster you are on, from
`scontrol show config`, `sinfo` and `scontrol show node`. The parse_* functions are pure;
detect() runs the three commands once each. Nothing is submitted."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable

from itwinai_hpc.core.yamlsrc import parse_value

SINFO_FORMAT = "%P|%c|%G"


def parse_config(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", text, flags=re.M))


def parse_partitions(text: str) -> tuple[list[str], str | None]:
    """`sinfo -h -o %P|%c|%G` -> (partitions, the default one)."""
    names, default = [], None
    for line in text.splitlines():
        name = line.split("|", 1)[0].strip()
        if not name:
            continue
        if name.endswith("*"):
            name = name[:-1]
            default = name
        if name not in names:
            names.append(name)
    return names, default


def parse_nodes(text: str) -> tuple[int | None, int | None, str | None]:
    """`scontrol show node -o` -> (most CPUs of a node, most GPUs of a node, GPU type seen)."""
    cores = gpus = None
    gpu_type = None
    for line in text.splitlines():
        if m := re.search(r"\bCPUTot=(\d+)", line):
            cores = max(cores or 0, int(m.group(1)))
        if m := re.search(r"\bGres=(\S+)", line):
            for item in m.group(1).split(","):
                g = re.fullmatch(r"gpu(?::([A-Za-z0-9_.-]+))?:(\d+)(?:\(.*\))?", item)
                if g:
                    gpus = max(gpus or 0, int(g.group(2)))
                    gpu_type = gpu_type or g.group(1)
    return cores, gpus, gpu_type


def srun_drops_cpus_per_task(version: str) -> bool:
    """SLURM 22.05 to 23.02 do not pass the job's --cpus-per-task on to srun."""
    m = re.match(r"(\d+)\.(\d+)", version)
    return m is not None and (22, 5) <= (int(m.group(1)), int(m.group(2))) < (23, 11)


def yaml_word(text: str) -> str:
    """`text` as a YAML value that reads back as this same string: a plain word where it is one,
    else quoted (a partition named `1`, `007` or `true` is a name, not a number or a boolean)."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", text) and \
            parse_value(text, keep_number_text=False) == text:
        return text
    return json.dumps(text, ensure_ascii=False)


def profile_text(config: dict[str, str], partitions: list[str], default: str | None,
                 cores: int | None, gpus: int | None, gpu_type: str | None,
                 runtime: str | None, host: str) -> str:
    version = config.get("SLURM_VERSION", "?")
    vendor = "amd" if gpu_type and re.search(r"mi\d|amd|rocm", gpu_type, re.I) else \
        ("nvidia" if gpus else "none")
    gres_only = "cons_tres" not in config.get("SelectType", "")
    if config.get("AccountingStorageType", "").endswith("slurmdbd"):
        accounting = "slurmdbd (full sacct)"
    elif config.get("JobCompType") == "jobcomp/filetxt":
        accounting = "a job completion log (sacct -c, finished jobs only)"
    else:
        accounting = "none (status reads the exit status each job leaves in the run folder)"
    node = {k: v for k, v in (("cores", cores), ("gpus", gpus)) if v is not None}
    node_text = ", ".join(f"{k}: {v}" for k, v in node.items())
    resources = [f"partition: {yaml_word(default)}"] if default else []
    if gpus and gres_only:
        resources.append("gpu-flag: gres")
    lines = [
        f"# Written by `itwinai-hpc profiles init` on {host} from scontrol and sinfo",
        f"# (SLURM {version}). Review it, then save it as",
        "# ~/.config/itwinai-hpc/profiles/NAME.yml (or in $ITWINAI_HPC_PROFILES).",
        f"# Accounting: {accounting}.",
        f"# Task binding: {config.get('TaskPlugin', '?')}; select: {config.get('SelectType', '?')}"
        + (" (no --gpus-per-node: GPUs are asked for as --gres=gpu:N)" if gpus and gres_only
           else "") + ".",
        (f"# srun: SLURM {version} does not pass --cpus-per-task on to srun; itwinai-hpc "
         "restates it (SRUN_CPUS_PER_TASK)." if srun_drops_cpus_per_task(version) else
         f"# srun: SLURM {version} passes --cpus-per-task on to srun."),
        "# Not detectable here, check and add: network interfaces (NCCL_SOCKET_IFNAME), modules",
        "# to load (setup), the rendezvous host name rule (launch.rdzv-host), site binds.",
        f"description: detected on {host}",
        f"partitions: [{', '.join(map(yaml_word, partitions))}]",
        f"node: {{{node_text}{', ' if node_text else ''}gpu-vendor: {vendor}}}",
        "defaults:",
    ]
    if resources:
        lines.append(f"  resources: {{{', '.join(resources)}}}")
    lines.append(f"  container: {{runtime: {runtime or 'apptainer'}}}"
                 + ("" if runtime else "   # no apptainer/singularity on PATH here"))
    return "\n".join(lines) + "\n"


def detect(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str:
    def out(cmd: list[str]) -> str:
        try:
            p = run(cmd, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {exc}") from None
        if p.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {_text(p.stderr).strip()}")
        return _text(p.stdout)

    config = parse_config(out(["scontrol", "show", "config"]))
    partitions, default = parse_partitions(out(["sinfo", "-h", "-o", SINFO_FORMAT]))
    cores, gpus, gpu_type = parse_nodes(out(["scontrol", "show", "node", "-o"]))
    runtime = next((r for r in ("apptainer", "singularity") if shutil.which(r)), None)
    return profile_text(config, partitions, default, cores, gpus, gpu_type, runtime,
                        socket.gethostname())


def _text(output: bytes | str | None) -> str:
    """A command's output as text: a site's names and features need not be UTF-8 (a byte that
    is not becomes U+FFFD; the rest is read as it is)."""
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output or ""
