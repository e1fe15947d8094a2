"""The command line builds only the parser of the command it runs (commands/one_command.py):
each command must parse, help and fail exactly as in the full parser, and `validate` must not
load the modules that only other commands' parsers need."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from golden_cases import MNIST_TRAIN

from itwinai_hpc.cli import build_parser, main


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


FULL = commands(build_parser())


@pytest.mark.parametrize("name", sorted(FULL))
def test_each_command_alone_has_the_same_arguments_help_and_defaults(name):
    alone = commands(build_parser(only=name))
    assert set(alone) == {name}
    assert alone[name].format_help() == FULL[name].format_help()
    assert alone[name].format_usage() == FULL[name].format_usage()
    defaults = {a.dest: a.default for a in alone[name]._actions}
    assert defaults == {a.dest: a.default for a in FULL[name]._actions}
    assert alone[name]._defaults.keys() == FULL[name]._defaults.keys()


def test_a_name_that_is_no_command_gets_the_full_parser_and_its_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["valdate", str(MNIST_TRAIN)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'valdate'" in err
    for name in ("validate", "render", "train", "preprocess", "doctor"):
        assert f"'{name}'" in err


def test_a_bad_argument_of_one_command_is_reported_as_before(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(MNIST_TRAIN), "--no-such-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["validate", str(MNIST_TRAIN)], ["status", "--help"]])
def test_login_node_commands_do_not_load_the_ml_and_data_parsers(argv, tmp_path):
    code = ("import sys\nfrom itwinai_hpc.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('LOADED', sorted(m for m in sys.modules if m in "
            "('itwinai_hpc.ml.cli', 'itwinai_hpc.data.cli')), 'RC', rc)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "LOADED [] RC 0" in p.stdout, p.stdout + p.stderr


def test_commands_registered_outside_cli_py_still_run_alone(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "--data" in capsys.readouterr().out
