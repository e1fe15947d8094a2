"""`itwinai-hpc report`: how well each step used what it asked for, from the scheduler's
accounting."""

from __future__ import annotations

import sys

from itwinai_hpc.commands.common import load_run


def cmd_report(args) -> int:
    """Usage against requests per job, from the backend's accounting (SLURM: sacct where
    slurmdbd runs); elsewhere the states and elapsed times the run recorded."""
    from itwinai_hpc.ops import operations, report
    manifest = load_run(args)
    operations.refresh(manifest)
    if manifest.backend:
        try:
            sacct, note = operations.backend_for(manifest).usage(manifest)
        except RuntimeError as exc:              # the accounting query itself failed
            print(f"error: {exc}", file=sys.stderr)
            return 1
    else:
        sacct, note = None, ("a not submitted run has no scheduler accounting; shown: states "
                             "and elapsed time")
    rows = report.usage_rows(manifest, sacct)
    print(report.to_json(manifest, rows, note) if args.json
          else report.format_report(manifest, rows, note))
    return 0
