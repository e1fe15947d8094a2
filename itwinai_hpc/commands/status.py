"""`itwinai-hpc status` and `itwinai-hpc logs`: what a run is doing, and its output."""

from __future__ import annotations

import sys

from itwinai_hpc.commands.common import load_run


def cmd_status(args) -> int:
    import time

    from itwinai_hpc.ops import operations
    from itwinai_hpc.ops.status_view import format_table, to_json
    manifest = load_run(args)
    while True:
        try:
            operations.refresh(manifest)
        except OSError as exc:          # full disk, quota, read-only folder: still show it
            print(f"warning: cannot update {manifest.run_dir} ({exc.strerror or exc}); "
                  "showing the last recorded state", file=sys.stderr)
        rc = operations.exit_code(manifest)
        text = to_json(manifest) if args.json else format_table(manifest)
        if args.watch and sys.stdout.isatty():
            print("\x1b[H\x1b[2J" + text, flush=True)
        else:
            print(text, flush=True)
        if not args.watch or rc != operations.EXIT_ACTIVE:
            return rc
        time.sleep(args.interval)


def cmd_logs(args) -> int:
    from itwinai_hpc.ops import logs
    return logs.show(load_run(args), args.step, follow=args.follow)
