"""`itwinai-hpc mlflow-ui`: serve the MLflow UI for a store on this machine, safely on a shared
login node: localhost by default, few workers, and a port that is really ours (MLflow itself
prints "Address already in use" and exits 0, and the browser then shows someone else's runs).

Imports nothing heavy: the server is `python -m mlflow server`, which replaces this process.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

from itwinai_hpc.core.errors import UserError

BANNER = ("note: MLflow 3 opens in its GenAI view; click \"Model training\" (top left) once to "
          "see runs, metrics and the model registry; it remembers the choice.")


def store_uri(path: str) -> str:
    """The store behind `--path`: a folder (file store) or an sqlite .db file; URIs pass."""
    if "://" in path or path.startswith("file:"):
        return path
    p = Path(path).resolve()
    if p.is_file() and p.suffix == ".db":
        return f"sqlite:///{p}"
    if not p.is_dir():
        raise UserError(f"no MLflow store at {p}; pass the folder that MLFLOW_TRACKING_URI="
                        "file:... points to (or an mlflow.db file)", field="--path")
    return f"file:{p}"


def claim_port(host: str, port: int) -> int:
    """`port` if nothing listens on it at `host` (0: any free port), else a UserError that
    names a free one. Binds the way the server will (SO_REUSEADDR), so a port in TIME_WAIT
    is not called busy."""
    if not 0 <= port <= 65535:   # what bind() would refuse with an OverflowError
        raise UserError(f"{port} is not a port number: use 0-65535 (0: any free port)",
                        field="--port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise UserError(f"cannot listen on {host}:{port}: {e.strerror}",
                                field="--host") from None
            raise UserError(f"port {port} on {host} is already in use (another MLflow UI, "
                            "maybe another user's: the browser would show their runs); choose "
                            f"another, e.g. --port {claim_port(host, 0)}, or --port 0 for any "
                            "free port", field="--port") from None
        return s.getsockname()[1]


def serve(path: str, host: str, port: int, workers: int) -> None:
    """Check the store and the port, print where to look, then become the MLflow server."""
    if workers < 1:
        raise UserError(f"must be >= 1, got {workers}", field="--workers")
    uri = store_uri(path)
    port = claim_port(host, port)
    env = {**os.environ}
    if uri.startswith("file:"):
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--registry-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    print(f"MLflow UI for {uri} at http://{host}:{port} ({workers} worker"
          f"{'s' if workers > 1 else ''}; Ctrl-C stops it)", flush=True)
    if host in ("127.0.0.1", "localhost", "::1"):
        print(f"from your laptop: ssh -L {port}:127.0.0.1:{port} {socket.gethostname()}, then "
              f"open http://127.0.0.1:{port}", flush=True)
    else:
        print(f"warning: listening on {host}: anyone who reaches this machine can read and "
              "change these runs (MLflow has no login here)", flush=True)
    print(BANNER, flush=True)
    os.execve(sys.executable, cmd, env)   # the server replaces us: signals reach it directly
