"""The `train`, `predict` and `mlflow-ui` subcommands: parse arguments, call the ML steps.

Imports nothing heavy at module level (no torch, mlflow, h5py): `itwinai-hpc --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(subparsers) -> None:
    """Register `train`, `predict` and `mlflow-ui` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="DDP training over HDF5 shards; best model -> MLflow registry",
        description="Train the model named in the config on the shards in SHARDS_DIR. Runs "
                    "alone or under torchrun (one process per GPU, or gloo on CPU). Rank 0 logs "
                    "to MLflow ($MLFLOW_TRACKING_URI or --tracking-uri) and registers the best "
                    "model; the alias (default champion) moves to it when it beats the current "
                    "holder. Checkpoints go to --checkpoint-dir (default "
                    "$ITWINAI_HPC_RUN_DIR/checkpoints); a re-run with the same folder resumes "
                    "exactly where the last one stopped. SIGTERM, SIGUSR2 or a file "
                    "$ITWINAI_HPC_STOP_FILE (default $ITWINAI_HPC_RUN_DIR/STOP) make every rank "
                    "checkpoint and exit 0.")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="train YAML (sections: dataset, model, trainer, tracking, registry)")
    p.add_argument("--data", required=True, metavar="SHARDS_DIR",
                   help="folder with manifest.json written by `itwinai-hpc preprocess`")
    p.add_argument("--register-as", metavar="NAME",
                   help="registered model name (default: the config's registry.model_name)")
    p.add_argument("--epochs", type=int, metavar="N", help="override trainer.epochs")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="override trainer.batch_size (per process)")
    p.add_argument("--seed", type=int, help="override trainer.seed")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where checkpoint.pt lives (default: $ITWINAI_HPC_RUN_DIR/checkpoints; "
                        "without either, no checkpoints are written)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    p.add_argument("--stop-after-epochs", type=int, metavar="N",
                   help="train at most N epochs in this invocation, checkpoint and exit 0; "
                        "rerun to continue (e.g. to fit a short time limit)")
    p.set_defaults(func=run_train)

    q = subparsers.add_parser(
        "predict", help="registered model -> predictions file over the shards' test split",
        description="Load a model from MLflow and predict every image of a split (default "
                    "test). Writes a CSV (index, predicted, probability, label) atomically and "
                    "logs accuracy and the file to MLflow.")
    q.add_argument("--config", metavar="FILE",
                   help="inference YAML (keys: dataset, model_uri, batch_size, split, output, "
                        "tracking)")
    q.add_argument("--data", required=True, metavar="SHARDS_DIR")
    q.add_argument("--model", metavar="URI",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or "
                        "best:EXPERIMENT:METRIC (default: the config's model_uri)")
    q.add_argument("--output", required=True, metavar="FILE", help="predictions CSV to write")
    q.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns)")
    q.set_defaults(func=run_predict)

    u = subparsers.add_parser(
        "mlflow-ui", help="browse an MLflow file store (binds 127.0.0.1)",
        description="Serve the MLflow UI for a file store on 127.0.0.1 (reach it from elsewhere "
                    "with an SSH tunnel: ssh -L PORT:127.0.0.1:PORT host).")
    u.add_argument("--path", default="mlruns", help="the MLflow store folder (default: mlruns)")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=run_mlflow_ui)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from itwinai_hpc.train import distributed
    from itwinai_hpc.train.config import load_config
    from itwinai_hpc.train.trainer import TrainOptions, get_trainer

    config = load_config(args.config)
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            if value < (0 if key == "seed" else 1):
                from itwinai_hpc.errors import UserError
                raise UserError(f"must be >= 1, got {value}", field="--" + flag.replace("_", "-"))
            config["trainer"][key] = value
    trainer = get_trainer(config["trainer"]["name"])
    run_dir = os.environ.get("ITWINAI_HPC_RUN_DIR")
    checkpoint_dir = args.checkpoint_dir or (str(Path(run_dir) / "checkpoints") if run_dir
                                             else None)
    # The job script names the stop file (ITWINAI_HPC_STOP_FILE, one per step of a run).
    stop_file = os.environ.get("ITWINAI_HPC_STOP_FILE") or (str(Path(run_dir) / "STOP") if run_dir
                                                            else None)
    opts = TrainOptions(data=args.data, checkpoint_dir=checkpoint_dir, run_dir=run_dir,
                        register_as=args.register_as, tracking_uri=args.tracking_uri,
                        stop_after_epochs=getattr(args, "stop_after_epochs", None),
                        stop_file=stop_file)
    ctx = distributed.setup()
    try:
        if ctx.is_main and stop_file:
            # A STOP left by an earlier job would stop this one after its first steps.
            Path(stop_file).unlink(missing_ok=True)
        distributed.barrier(ctx)
        if ctx.is_main and not checkpoint_dir:
            print("note: no --checkpoint-dir and no $ITWINAI_HPC_RUN_DIR: this run cannot be "
                  "resumed", flush=True)
        trainer(config, opts, ctx)
    finally:
        distributed.teardown(ctx)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from itwinai_hpc.predict import predict
    from itwinai_hpc.train.config import INFERENCE_SCHEMA, load_config, make_config

    config = (load_config(args.config, INFERENCE_SCHEMA) if args.config
              else make_config(None, INFERENCE_SCHEMA))
    result = predict(config, args.data, args.model or config["model_uri"], args.output,
                     tracking_uri=args.tracking_uri)
    acc = "" if result.accuracy is None else f", accuracy {result.accuracy:.4f}"
    print(f"{result.rows} predictions -> {result.output}{acc} (model {result.model_uri}"
          f"{', version ' + result.model_version if result.model_version else ''}; "
          f"MLflow run {result.run_id})", flush=True)
    return 0


def run_mlflow_ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from itwinai_hpc.errors import UserError

    path = Path(args.path).resolve()
    if not path.is_dir():
        raise UserError(f"no MLflow store at {path}; pass the folder that "
                        "MLFLOW_TRACKING_URI=file:... points to", field="--path")
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"file:{path}",
           "--registry-store-uri", f"file:{path}", "--host", "127.0.0.1",
           "--port", str(args.port)]
    print(f"MLflow UI for {path} at http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    os.execve(sys.executable, cmd, env)   # the server replaces us: signals reach it directly

