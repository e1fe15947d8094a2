"""`itwinai-hpc profiles`: list, show, or write a starting site profile."""

from __future__ import annotations

import sys


def cmd_profiles(args) -> int:
    from itwinai_hpc.workflow import profiles
    if args.show:
        print(profiles.describe(profiles.load_profile(args.show)), end="")
        return 0
    if args.action == "init":
        from itwinai_hpc.workflow.profiles.detect import detect
        try:
            print(detect(), end="")
        except RuntimeError as exc:
            print(f"error: {exc} (is this a SLURM login node?)", file=sys.stderr)
            return 1
        return 0
    by_file: dict = {}
    for name, path in profiles.available().items():
        by_file.setdefault(path, []).append(name)
    for names in by_file.values():
        print(names[0])
    return 0
