"""The `schema` subcommand's arguments (the command is schema.py). Imports nothing heavy."""

from __future__ import annotations


def register(parts: tuple) -> None:
    """Add `schema` to cli.py's subparsers; parts as extra_args passes them."""
    sub, _, _, command = parts
    p = sub.add_parser("schema", help="print the JSON Schema of workflow (or config) files",
                       description="Print a JSON Schema (draft 2020-12) of the workflow format, "
                                   "or with --config of a train, inference or preprocess "
                                   "config, generated from the models that check them. Point "
                                   "your editor at it: a first line `# yaml-language-server: "
                                   "$schema=PATH` in the YAML file.")
    p.add_argument("--config", choices=["train", "inference", "preprocess"],
                   help="the schema of that config file instead of a workflow's")
    p.set_defaults(func=command("schema", "cmd_schema"))
