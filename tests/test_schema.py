"""`itwinai-hpc schema`: the JSON Schema an editor checks workflow (and config) files with as they
are typed. It must accept what the loader accepts (every shipped workflow, ${var} where a number
goes) and refuse what a typo makes of a file, as the loader does. Real files, the real CLI, the
jsonschema library as an editor's language server would use it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from itwinai_hpc.commands.schema import models_in
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.yamlsrc import load_yaml, parse_yaml
from itwinai_hpc.workflow.load import load_workflow
from itwinai_hpc.workflow.schema import Workflow

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_WORKFLOWS = sorted(ROOT.glob("use-cases/**/*workflow*.yml"))
GOLDEN_WORKFLOWS = sorted([*ROOT.glob("tests/golden_inputs/*.yml"),
                           *ROOT.glob("tests/golden/*/workflow.yml")])
CONFIGS = {"train": sorted(ROOT.glob("use-cases/**/*-train*.yml")),
           "inference": sorted(ROOT.glob("use-cases/**/*-inference.yml")),
           "preprocess": sorted(ROOT.glob("use-cases/**/*-preprocess.yml"))}


def schema(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "schema", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def workflow_validator() -> jsonschema.Draft202012Validator:
    s = schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def problems(validator, data) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(data)]


def test_every_shipped_and_golden_workflow_validates(workflow_validator):
    assert len(SHIPPED_WORKFLOWS) >= 3 and GOLDEN_WORKFLOWS
    for path in SHIPPED_WORKFLOWS:
        load_workflow(path)                                   # the loader takes it ...
    for path in [*SHIPPED_WORKFLOWS, *GOLDEN_WORKFLOWS]:      # (goldens: resolved by render)
        data = load_yaml(path, keep_number_text=True).data
        assert problems(workflow_validator, data) == [], path   # ... and so does the schema


# (where in the file, the misspelt key): each is a typo a person makes
TYPOS = [((), "step"), ((), "default"),
         (("defaults",), "resource"), (("defaults", "resources"), "gpus_per_node"),
         (("defaults", "container"), "bind"),
         (("steps", 0), "need"), (("steps", 0), "comand"), (("steps", -1), "luncher"),
         (("steps", -1), "nproc_per_node")]


def at(data, where):
    for key in where:
        data = data[key]
    return data


def test_a_misspelt_key_anywhere_is_refused_by_the_schema_as_by_the_loader(
        workflow_validator, tmp_path):
    for path in SHIPPED_WORKFLOWS:
        original = load_yaml(path, keep_number_text=True).data
        for where, typo in TYPOS:
            data = copy.deepcopy(original)
            node = at(data, where)
            if not isinstance(node, dict):
                continue
            node[typo] = 1
            found = problems(workflow_validator, data)
            assert found and any(typo in p for p in found), (path, where, typo, found)
            bad = tmp_path / f"{typo}.yml"
            bad.write_text(json.dumps(data))                  # JSON is YAML
            with pytest.raises(UserError):
                load_workflow(bad)


@pytest.mark.parametrize("name", ["01-unknown-top-key", "02-unknown-step-key",
                                  "03-underscore-resource-key", "04-nodes-zero",
                                  "05-nodes-string", "14-bad-launcher",
                                  "34-requeue-unknown-key", "44-gpu-flag-unknown"])
def test_the_bad_workflows_a_schema_can_see_are_refused(workflow_validator, name):
    path = ROOT / "tests/bad_workflows" / f"{name}.yml"
    assert problems(workflow_validator, load_yaml(path, keep_number_text=True).data)
    with pytest.raises(UserError):
        load_workflow(path)


VARIABLES = """name: vars
vars: {n: 2, gpus: 4, lr: 0.1, part: booster, launcher: torchrun}
defaults: {container: none}
steps:
  - name: train
    command: python train.py
    launcher: ${launcher}
    args: [--lr, "${lr}"]
    nproc-per-node: ${gpus}
    resources: {nodes: "${n}", gpus-per-node: "${gpus}", partition: "${part}", mem: 1024}
    needs: prep
    array: 3
  - {name: prep, command: 'true'}
  - name: sweep
    needs: {prep: any}
    matrix: {nodes: [1, 2]}
    command: 'true'
    resources: {nodes: "${matrix.nodes}"}
"""


def test_a_variable_where_a_number_or_choice_goes_is_accepted_as_the_loader_accepts_it(
        workflow_validator, tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text(VARIABLES)
    load_workflow(wf)
    assert problems(workflow_validator, parse_yaml(VARIABLES, "wf.yml").data) == []
    # a plain word where a number goes is still refused, by both
    wrong = VARIABLES.replace('nodes: "${n}"', "nodes: two")
    wf.write_text(wrong)
    with pytest.raises(UserError):
        load_workflow(wf)
    assert any("nodes" in p for p in problems(workflow_validator,
                                              parse_yaml(wrong, "wf.yml").data))


def test_config_schemas_take_the_shipped_configs_and_refuse_a_typo():
    for kind, paths in CONFIGS.items():
        s = schema("--config", kind)
        jsonschema.Draft202012Validator.check_schema(s)
        validator = jsonschema.Draft202012Validator(s)
        assert paths, kind
        for path in paths:
            data = load_yaml(path).data
            assert problems(validator, data) == [], path
            assert problems(validator, {**data, "epoch": 2}), path
    train = jsonschema.Draft202012Validator(schema("--config", "train"))
    assert problems(train, {"trainer": {"epochs": 2, "batch_sise": 64}})
    assert problems(train, {"trainer": {"epochs": "2"}})       # strict, as the loader


def test_the_schema_in_the_docs_is_what_the_command_prints():
    """docs/schema/*.schema.json is the stable path an editor's `$schema=` line names."""
    assert json.loads((ROOT / "docs/schema/workflow.schema.json").read_text()) == schema()
    for kind in CONFIGS:
        assert json.loads((ROOT / f"docs/schema/{kind}.schema.json").read_text()) == \
            schema("--config", kind), f"run .venv/bin/python docs/gen_reference.py ({kind})"


def test_every_workflow_field_has_a_description_an_editor_shows_on_hover():
    s = schema()
    for name, model in models_in(Workflow).items():
        node = s if model is Workflow else s["$defs"][name]
        for field, info in model.model_fields.items():
            prop = node["properties"][info.alias or field]
            assert prop.get("description"), \
                f"{name}.{info.alias or field}: write a comment above the field in its model " \
                "(or a line in FIELD_HELP, itwinai_hpc/commands/schema.py)"


def test_the_workflow_schema_needs_nothing_a_login_node_lacks():
    """`itwinai-hpc schema` runs where only the base package is installed: no torch, mlflow,
    numpy or h5py is imported (as for validate and render)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "itwinai_hpc.cli", "schema"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["title"] == "itwinai-hpc workflow"
    imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines()}
    assert not imported & {"torch", "mlflow", "numpy", "h5py"}, imported & {"torch", "numpy"}
