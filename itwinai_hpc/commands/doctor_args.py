"""The `doctor` subcommand's arguments (cli.py calls add_parser; the command is doctor.py).
Imports nothing heavy: `itwinai-hpc --help` stays fast."""

from __future__ import annotations


def register(parts: tuple) -> None:
    """cli.py's one line (it is at the 300-line limit): `_command("doctor_args", "register")`
    imports this module lazily and calls this with (sub, workflow_args, run_folder_args,
    _command)."""
    add_parser(*parts)


def add_parser(sub, workflow_args, run_folder_args, command) -> None:
    """Register `doctor` on cli.py's subparsers, with its shared argument groups."""
    p = sub.add_parser("doctor", help="a short smoke job as training gets it: ranks, GPUs, "
                                      "all-reduce bandwidth, data, MLflow",
                       description="Submit a short smoke job with the resources, container "
                                   "and launch lines the workflow's training step gets (a "
                                   "default torchrun step without WORKFLOW), wait for it, and "
                                   "report per check pass / warn / fail with advice: every "
                                   "rank on its node and GPU; an all-reduce's bus bandwidth "
                                   "and the transport NCCL/RCCL picked; a read of the data "
                                   "folder; a write and read of the MLflow store.",
                       epilog="exit status: 0 no check failed; 1 a check failed; 2 bad input")
    workflow_args(p, "the workflow YAML file (default: one torchrun step and the profile's "
                     "defaults)")
    p.add_argument("--step", help="the step to stand in for (default: the first torchrun step)")
    p.add_argument("--nodes", type=int, metavar="N", help="nodes (default: the step's)")
    p.add_argument("--gpus-per-node", type=int, metavar="G",
                   help="GPUs per node (default: the step's)")
    p.add_argument("--backend", default="auto", choices=["auto", "slurm", "local", "submitit"],
                   help="auto (default): slurm where sbatch works, else local")
    p.add_argument("--allreduce-mb", type=float, metavar="MB",
                   help="all-reduce size in MiB (default: 256 on GPUs, 16 with gloo)")
    p.add_argument("--data", metavar="DIR",
                   help="the data folder to read (default: the step's --data argument)")
    p.add_argument("--time", default="00:05:00", help="the job's time limit (default 00:05:00)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip `sbatch --test-only` before the job is queued")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop waiting after SECONDS: cancel the job, exit 1")
    run_folder_args(p)
    p.set_defaults(func=command("doctor", "cmd_doctor"))
