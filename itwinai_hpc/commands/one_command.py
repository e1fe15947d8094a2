"""Only the parser of the command about to run: `itwinai-hpc validate FILE` has no use for the
parsers of the other twenty commands, nor for the modules that define them (ml/cli.py,
data/cli.py), and building them cost every command about a tenth of the plain
`import yaml, jinja2` (benchmarks/bench_startup.py --front-door).

cli.build_parser(only=NAME) hands the functions that register commands this object instead of
argparse's subparsers action: the command named NAME gets its real parser, every other one a
stand-in that accepts every call and keeps nothing. The command's parser is the same object the
full parser holds (same arguments, help and errors); `itwinai-hpc --help`, and any name that is
not a command, still get the full parser.
"""

from __future__ import annotations


class OneCommand:
    """Wraps an argparse subparsers action; registers the command `name` only."""

    def __init__(self, subparsers, name: str):
        self.subparsers = subparsers
        self.name = name
        self.found = False

    def add_parser(self, name: str, **kwargs):
        if name != self.name and self.name not in kwargs.get("aliases", ()):
            return _Ignored()
        self.found = True
        return self.subparsers.add_parser(name, **kwargs)


class _Ignored:
    """A parser that no command line reaches: every call is accepted and does nothing (it
    returns itself, so `p.add_argument_group(...).add_argument(...)` works too)."""

    def __getattr__(self, name: str):
        return self._ignore

    def _ignore(self, *args, **kwargs):
        return self
