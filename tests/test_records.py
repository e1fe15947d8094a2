"""core/records.py: the workflow format's typed records, checked without pydantic. What a user
sees through them (located errors, the JSON Schema, the resolved workflow) is tested with the
commands; here: the rules the records promise, and that the login-node commands pay for none of
pydantic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import pytest

from itwinai_hpc.core.records import (
    Field,
    Record,
    RecordValidationError,
    StrictBool,
    StrictInt,
    check,
    serializer,
)

ROOT = Path(__file__).resolve().parent.parent
MNIST_TRAIN = ROOT / "use-cases/mnist/training-workflow.yml"


class Inner(Record):
    """An inner record."""

    size: Annotated[StrictInt, Field(ge=1)] = 1


class Outer(Record):
    name: Annotated[str, Field(pattern=r"^[a-z]+$")]
    count_per_node: StrictInt | None = None
    flag: StrictBool | Literal["auto"] | None = None
    inner: Inner = Inner()
    items: Annotated[list[str], Field(min_length=1)] | None = None
    tags: dict[str, str] = {}

    @check("name", before=True)
    def _lower(v):
        return v.lower() if isinstance(v, str) else v

    @check("tags")
    def _no_x(v):
        if "x" in v:
            raise ValueError("x is reserved")
        return v

    @serializer("tags")
    def _tags_out(v):
        return sorted(v)


def problems(data) -> list[tuple]:
    with pytest.raises(RecordValidationError) as exc:
        Outer.model_validate(data)
    return sorted((e["loc"], e["type"]) for e in exc.value.errors())


def test_keys_are_kebab_case_unknown_ones_and_missing_required_ones_are_all_reported():
    assert problems({"count_per_node": 2, "inner": {"sise": 2}}) == [
        (("count_per_node",), "extra_forbidden"),
        (("inner", "sise"), "extra_forbidden"),
        (("name",), "missing")]
    assert Outer.model_validate({"name": "a", "count-per-node": 2}).count_per_node == 2


@pytest.mark.parametrize("value", ["2", 2.0, True])
def test_ints_are_strict(value):
    assert problems({"name": "a", "count-per-node": value}) == [(("count-per-node",), "int_type")]


def test_constraints_and_the_end_of_a_pattern_is_the_end_of_the_text():
    assert problems({"name": "abc\n"}) == [(("name",), "string_pattern_mismatch")]
    assert problems({"name": "a", "inner": {"size": 0}}) == [(("inner", "size"),
                                                              "greater_than_equal")]
    assert problems({"name": "a", "items": []}) == [(("items",), "too_short")]


def test_a_union_says_every_type_it_takes_and_a_mapping_speaks_for_its_record():
    assert problems({"name": "a", "flag": "yes"}) == [(("flag",), "bool_type"),
                                                       (("flag",), "literal_error")]
    assert Outer.model_validate({"name": "a", "flag": "auto"}).flag == "auto"
    assert Outer.model_validate({"name": "a", "flag": False}).flag is False
    assert problems({"name": "a", "inner": {"size": "big"}}) == [(("inner", "size"), "int_type")]


def test_checks_run_before_and_after_the_type_and_their_value_error_is_located():
    assert Outer.model_validate({"name": "ABC"}).name == "abc"
    with pytest.raises(RecordValidationError) as exc:
        Outer.model_validate({"name": "a", "tags": {"x": "1"}})
    [err] = exc.value.errors()
    assert (err["loc"], err["msg"]) == (("tags",), "Value error, x is reserved")


def test_records_are_frozen_compared_by_value_and_dump_without_their_defaults():
    a = Outer.model_validate({"name": "a", "tags": {"b": "1", "a": "2"}})
    with pytest.raises(AttributeError):
        a.name = "b"        # type: ignore[misc]
    assert a == Outer.model_validate({"name": "a", "tags": {"b": "1", "a": "2"}})
    assert a.model_copy(update={"name": "b"}).name == "b" and a.name == "a"
    assert a.model_dump(exclude_none=True, exclude_defaults=True) == {"name": "a",
                                                                      "tags": ["a", "b"]}
    # a default that is a mutable mapping is not shared between records
    assert Outer.model_construct(name="a").tags is not Outer.model_construct(name="b").tags


def test_the_json_schema_refuses_unknown_keys_and_names_the_nested_record():
    schema = Outer.model_json_schema()
    assert schema["additionalProperties"] is False and schema["required"] == ["name"]
    assert schema["properties"]["inner"] == {"$ref": "#/$defs/Inner", "default": {"size": 1}}
    assert schema["$defs"]["Inner"]["description"] == "An inner record."
    assert schema["properties"]["count-per-node"]["anyOf"] == [{"type": "integer"},
                                                               {"type": "null"}]


@pytest.mark.parametrize("field, value, message", [
    ("container: {image: x.sif, gpu: 0}", "gpu",
     "container.gpu: expected a boolean or one of 'nvidia', 'amd', 'none', 'auto', got 0"),
    ("setup: [echo, 1]", "setup", "setup[1]: Input should be a valid string (got 1)"),
    ("env: {A: {b: 1}}", "env", "env.A: expected a boolean, an integer, a number or a string, "
                                "got {'b': 1}"),
])
def test_a_value_of_the_wrong_type_is_named_with_what_the_field_takes(tmp_path, capsys, field,
                                                                      value, message):
    from itwinai_hpc.cli import main

    wf = tmp_path / "wf.yml"
    wf.write_text(f"name: w\nsteps:\n  - name: a\n    command: echo\n    {field}\n")
    assert main(["validate", str(wf)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == \
        [f"error: {wf}:5: steps[0](a).{message}"], err


@pytest.mark.parametrize("argv", [["validate", str(MNIST_TRAIN)],
                                  ["render", str(MNIST_TRAIN), "-o", "{tmp}/r"],
                                  ["status", "{tmp}/r"]])
def test_the_login_node_commands_load_no_pydantic(argv, tmp_path):
    """pydantic alone costs more CPU than yaml and jinja2 together: validate, render and status
    check the workflow with the records instead (benchmarks/bench_startup.py --front-door)."""
    if argv[0] == "status":
        subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "render", str(MNIST_TRAIN),
                        "-o", str(tmp_path / "r")], check=True, capture_output=True, cwd=tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = ("import sys\nfrom itwinai_hpc.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('PYDANTIC', sorted(m for m in sys.modules if m.startswith('pydantic')), "
            "'RC', rc)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "PYDANTIC [] RC" in p.stdout, p.stdout + p.stderr
    if argv[0] == "status":                 # the rendered run, shown as not submitted
        assert "UNSUBMITTED" in p.stdout, p.stdout + p.stderr
    else:
        assert p.stdout.rstrip().endswith("RC 0"), p.stdout + p.stderr
