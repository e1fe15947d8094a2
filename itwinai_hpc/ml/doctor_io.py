"""The storage half of the doctor's in-job checks (ml/doctor.py): a timed read of the data
folder (each node's first rank) and a write + read-back of the MLflow store (rank 0). Each
returns facts, errors included as text; nothing here raises for what it finds."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

CHUNK = 8 * 2**20
READ_SECONDS = 10.0
EXPERIMENT = "itwinai-hpc-doctor"


def read_folder(folder: str | None, limit_mb: float) -> dict | None:
    """Read the files under `folder` (sorted, whole files in 8 MiB chunks) until `limit_mb`
    MiB or 10 s: bytes, files, seconds. None without a folder. The page cache may serve part
    of it (a file written on this node moments ago): a first read of cold data is slower."""
    if not folder:
        return None
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    out: dict = {"node": node, "path": folder, "exists": os.path.isdir(folder), "files": 0,
                 "bytes": 0, "seconds": 0.0, "error": None}
    if not out["exists"]:
        out["error"] = ("no such folder" if not os.path.exists(folder) else "not a folder")
        return out
    limit = int(limit_mb * 2**20)
    began = time.perf_counter()
    try:
        for path in _files(Path(folder)):
            with open(path, "rb", buffering=0) as f:
                out["files"] += 1
                while chunk := f.read(CHUNK):
                    out["bytes"] += len(chunk)
                    if out["bytes"] >= limit or time.perf_counter() - began > READ_SECONDS:
                        break
            if out["bytes"] >= limit or time.perf_counter() - began > READ_SECONDS:
                break
    except OSError as exc:
        out["error"] = f"{exc.strerror or exc}: {exc.filename or folder}"
    out["seconds"] = time.perf_counter() - began
    return out


def _files(folder: Path):
    for root, dirs, names in os.walk(folder, onerror=_raise):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file():
                yield path


def _raise(exc: OSError) -> None:
    raise exc


def mlflow_round_trip(result: dict) -> dict:
    """Rank 0: create a run in experiment itwinai-hpc-doctor of the step's store
    ($MLFLOW_TRACKING_URI), log the all-reduce and read numbers as metrics and a small
    artifact, read them back. The run stays (FINISHED): the store keeps a history of what each
    doctor measured."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    out: dict = {"uri": uri, "ok": False, "seconds": None, "run_id": None, "error": None}
    if not uri:
        out["error"] = "MLFLOW_TRACKING_URI is not set in the step's environment"
        return out
    try:
        import mlflow  # noqa: F401  (imported before the clock starts: the store is timed)
        began = time.perf_counter()
        out.update(_round_trip(uri, result))
        out["seconds"] = time.perf_counter() - began
    except Exception as exc:          # any failure of the store is the check's finding
        out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
    return out


def _round_trip(uri: str, result: dict) -> dict:
    from mlflow import MlflowClient

    from itwinai_hpc.ml.tracking import store_uri

    uri = store_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None and found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    exp = found.experiment_id if found is not None else client.create_experiment(EXPERIMENT)
    tags = {"itwinai_hpc.kind": "doctor",
            "itwinai_hpc.run_id": os.environ.get("ITWINAI_HPC_RUN_ID", "")}
    run = client.create_run(exp, run_name=f"doctor {tags['itwinai_hpc.run_id']}".strip(),
                            tags=tags)
    run_id = run.info.run_id
    metrics = {"world_size": float(result["world_size"])}
    ar = result.get("allreduce") or {}
    if ar.get("seconds"):
        metrics["allreduce_seconds"] = float(ar["seconds"])
    for r in result.get("data") or []:
        if r.get("seconds") and r.get("bytes"):
            metrics.setdefault("data_read_mb_s", r["bytes"] / 1e6 / r["seconds"])
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_param(run_id, "allreduce_backend", ar.get("backend", ""))
    text = f"itwinai-hpc doctor of run {tags['itwinai_hpc.run_id']}\n"
    client.log_text(run_id, text, "doctor.txt")
    client.set_terminated(run_id)
    back = client.get_run(run_id)
    if back.data.metrics.get("world_size") != metrics["world_size"]:
        raise RuntimeError(f"run {run_id} read back without the metric just logged")
    with tempfile.TemporaryDirectory(prefix="itwinai-hpc-doctor-") as tmp:
        read = Path(client.download_artifacts(run_id, "doctor.txt", tmp)).read_text()
    if read != text:
        raise RuntimeError(f"run {run_id}: the artifact read back differs from what was "
                           "written")
    return {"ok": True, "run_id": run_id, "experiment": EXPERIMENT,
            "store": uri}
