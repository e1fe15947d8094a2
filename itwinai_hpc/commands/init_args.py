"""The `init` subcommand's arguments (the command is init.py). Imports nothing heavy."""

from __future__ import annotations

TEMPLATES = ("classification", "regression", "script")


def register(parts: tuple) -> None:
    """Add `init` to cli.py's subparsers; parts = (sub, workflow_args, run_folder_args,
    _command), as extra_args passes them."""
    sub, _, _, command = parts
    p = sub.add_parser("init", help="write a new use case's folder: workflow, configs, model, "
                                    "preprocessing, container recipe",
                       description="Write a use-case folder (default use-cases/NAME) that runs "
                                   "at once: workflow.yml (preprocess -> train -> predict), the "
                                   "train and inference configs, a model module NAME/model.py, "
                                   "preprocess.py (synthetic data through write_shards: replace "
                                   "it with your reading), apptainer.def + requirements.txt "
                                   "(the project's image plus your packages) and a README. "
                                   "Refuses a folder that exists and is not empty; writes all "
                                   "or nothing.",
                       epilog="then: itwinai-hpc submit DIR/workflow.yml --backend local "
                              "--wait --set defaults.container=none")
    p.add_argument("name", metavar="NAME",
                   help="the use case's name: lower-case letters, digits, - and _ (also its "
                        "Python package, data set and registered model name)")
    p.add_argument("--dir", metavar="DIR", help="the folder to write (default: use-cases/NAME)")
    p.add_argument("--template", choices=TEMPLATES, default="regression",
                   help="classification or regression: the built-in trainer on your model; "
                        "script: your own train.py with `from itwinai_hpc import job` "
                        "(default: regression)")
    p.set_defaults(func=command("init", "cmd_init"))
