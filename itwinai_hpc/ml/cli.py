"""The `train`, `predict` and `mlflow-ui` subcommands: parse arguments, call the ML steps.

Each flag also answers to the name itwinai's MNIST use case documents (`--train-dataset`,
`--input-dataset`, `--ml-logs`, `--predictions-location`), so its commands work verbatim.
Imports nothing heavy at module level (no torch, mlflow, h5py): `itwinai-hpc --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import itwinai_hpc.run.layout as layout
from itwinai_hpc.core import job_env, startup
from itwinai_hpc.ml.job_where import mark_stopped, stop_file

STORE_HELP = ("MLflow store: a folder, or a URI such as sqlite:///mlflow.db (default: "
              "$MLFLOW_TRACKING_URI, else ./mlruns)")


def add_parser(subparsers) -> None:
    """Register `train`, `predict` and `mlflow-ui` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="DDP training over HDF5 shards; best model -> MLflow registry",
        description="Train the model named in the config on the shards in SHARDS_DIR. Runs "
                    "alone or under torchrun (one process per GPU, or gloo on CPU). Rank 0 logs "
                    "to MLflow and registers the best model (raw uint8 pixels in, "
                    "probabilities out); the alias (default champion) moves to it when it beats "
                    "the current holder. Checkpoints go to --checkpoint-dir (default "
                    "$ITWINAI_HPC_RUN_DIR/checkpoints); a re-run with the same folder resumes "
                    "exactly where the last one stopped. SIGTERM, SIGUSR2 or the file "
                    "$ITWINAI_HPC_STOP_FILE make every rank checkpoint and exit 75 (stopped "
                    "early, to be resumed: SLURM requeues it, `itwinai-hpc resume` continues "
                    "it). A loss that "
                    "diverges (inf or NaN for trainer.nan_patience steps in a row) stops every "
                    "rank with exit 1 and registers nothing.")
    p.add_argument("--config", metavar="FILE",
                   help="train YAML (sections: dataset, model, trainer, tracking, registry); "
                        "defaults when absent")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="override a key of the config, e.g. trainer.max_lr=0.02 (repeatable; "
                        "VALUE is read as YAML): what a sweep's ${matrix.KEY} feeds")
    p.add_argument("--data", "--train-dataset", dest="data", required=True,
                   metavar="SHARDS_DIR",
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
    p.add_argument("--tracking-uri", "--ml-logs", dest="tracking_uri", metavar="STORE",
                   help=STORE_HELP)
    p.add_argument("--stop-after-epochs", type=int, metavar="N",
                   help="train at most N epochs in this invocation, checkpoint and exit 0; "
                        "rerun to continue (e.g. to fit a short time limit)")
    p.set_defaults(func=run_train)

    q = subparsers.add_parser(
        "predict", help="registered model -> predictions file over the shards' test split",
        description="Load a model from MLflow and predict every image of a split (default "
                    "test). Writes a CSV (index, predicted, probability, label) atomically and "
                    "logs accuracy, loss, the confusion matrix, per-class accuracy, the data "
                    "and the model used to an MLflow run.")
    q.add_argument("--config", metavar="FILE",
                   help="inference YAML (keys: dataset, model_uri, batch_size, split, output, "
                        "tracking)")
    q.add_argument("--data", "--input-dataset", dest="data", required=True,
                   metavar="SHARDS_DIR", help="folder with manifest.json")
    q.add_argument("--model", metavar="URI",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or "
                        "best:EXPERIMENT:METRIC (default: the config's model_uri)")
    q.add_argument("--output", "--predictions-location", dest="output", required=True,
                   metavar="PATH", help="predictions CSV to write, or a folder (existing, or "
                                        "ending in /) that gets predictions.csv")
    q.add_argument("--tracking-uri", "--ml-logs", dest="tracking_uri", metavar="STORE",
                   help=STORE_HELP)
    q.set_defaults(func=run_predict)

    u = subparsers.add_parser(
        "mlflow-ui", help="browse an MLflow store (binds 127.0.0.1)",
        description="Serve the MLflow UI for a store on this machine. It refuses a port that "
                    "is in use (on a shared login node that may be another user's UI). Reach "
                    "it from elsewhere with an SSH tunnel: ssh -L PORT:127.0.0.1:PORT host.")
    u.add_argument("--path", "--ml-logs", dest="path", default="mlruns", metavar="STORE",
                   help="the MLflow store: a folder, or an mlflow.db file (default: mlruns)")
    u.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: only this machine)")
    u.add_argument("--port", type=port_number, default=5000,
                   help="0-65535 (default 5000; 0: any free port)")
    u.add_argument("--workers", type=int, default=1,
                   help="server processes (default 1; each takes ~300 MB)")
    u.set_defaults(func=run_mlflow_ui)


def port_number(text: str) -> int:
    """`--port`: a TCP port, 0-65535 (0: any free one); anything else is a usage error (exit 2)
    before the server is started, not a socket's OverflowError."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: use 0-65535 (0: any "
                                         "free port)")
    return port




def run_train(args: argparse.Namespace) -> int:
    startup.hold_collector()   # until the trainer's loop starts (Trainer.fit)
    from itwinai_hpc.core.errors import UserError
    from itwinai_hpc.ml import distributed
    from itwinai_hpc.ml.config import TrainConfig, load_config
    from itwinai_hpc.ml.sweep import SweepTask
    from itwinai_hpc.ml.trainer import TrainingFailed, TrainOptions, get_trainer

    SweepTask.from_env()   # a malformed sweep variable fails here, before any rank starts
    config = load_config(TrainConfig, args.config, args.overrides)
    for flag in ("epochs", "batch_size", "seed"):
        value = getattr(args, flag, None)
        if value is not None:
            if value < (0 if flag == "seed" else 1):
                raise UserError(f"must be >= {0 if flag == 'seed' else 1}, got {value}",
                                field="--" + flag.replace("_", "-"))
            setattr(config.trainer, flag, value)
    trainer = get_trainer(config.trainer.name)
    from itwinai_hpc.ml.tasks import preflight

    preflight(config)   # the config's import paths, before any process group or GPU
    run_dir = os.environ.get(job_env.RUN_DIR)
    checkpoint_dir = args.checkpoint_dir or (
        layout.checkpoint_dir(run_dir, os.environ.get(job_env.SWEEP),
                              os.environ.get(job_env.SWEEP_TASK)) if run_dir else None)
    stop = stop_file()
    opts = TrainOptions(data=args.data, checkpoint_dir=checkpoint_dir, run_dir=run_dir,
                        register_as=args.register_as, tracking_uri=args.tracking_uri,
                        stop_after_epochs=getattr(args, "stop_after_epochs", None),
                        stop_file=stop)
    ctx = distributed.setup()
    done = False
    try:
        if ctx.is_main and stop:
            # A stop file left by an earlier job would stop this one after its first steps.
            Path(stop).unlink(missing_ok=True)
        distributed.barrier(ctx)
        if ctx.is_main and not checkpoint_dir:
            print("note: no --checkpoint-dir and no $ITWINAI_HPC_RUN_DIR: this run cannot be "
                  "resumed", flush=True)
        result = trainer(config, opts, ctx)
        done = True
        if result.status == "stopped" and opts.stop_after_epochs is None:
            # Asked to stop (stop file, SIGTERM, SIGUSR2), checkpointed: the stop contract's
            # status, and the mark that keeps it 75 through torchrun (core/job_env.STOP_EXIT).
            mark_stopped()
            return job_env.STOP_EXIT
    except TrainingFailed as e:
        # Every rank raised it at the same point (they agreed), so they leave together; one
        # line for the whole job, no traceback: exit 1, a runtime failure.
        if ctx.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        done = True
        return 1
    finally:
        distributed.teardown(ctx, together=done)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    startup.hold_collector()   # until the model is loaded (predict)
    from itwinai_hpc.ml.config import InferenceConfig, load_config
    from itwinai_hpc.ml.predict import PredictionsNotWritten, predict
    from itwinai_hpc.ml.sweep import SweepTask

    SweepTask.from_env()   # a malformed sweep variable fails before the model loads
    config = load_config(InferenceConfig, args.config)
    try:
        result = predict(config, args.data, args.model or config.model_uri, args.output,
                         tracking_uri=args.tracking_uri)
    except PredictionsNotWritten as e:   # a runtime failure (full disk, quota): exit 1
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    acc = "" if result.accuracy is None else f", accuracy {result.accuracy:.4f}"
    print(f"{result.rows} predictions -> {result.output}{acc} (model {result.model_uri}"
          f"{', version ' + result.model_version if result.model_version else ''}; "
          f"MLflow run {result.run_id})", flush=True)
    return 0


def run_mlflow_ui(args: argparse.Namespace) -> int:
    from itwinai_hpc.ml.mlflow_ui import serve

    serve(args.path, args.host, args.port, args.workers)
    return 0
