"""Site profiles the user keeps (and the one `profiles init` writes): a broken or odd file among
them must not stop the others, nor hang; a broken one is reported when it is the one asked for.
`profiles init` runs against stub scontrol/sinfo scripts standing for a site's SLURM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.core.validation import validate_model
from itwinai_hpc.core.yamlsrc import parse_yaml
from itwinai_hpc.workflow.profiles import Profile
from itwinai_hpc.workflow.profiles.detect import (
    parse_config,
    parse_nodes,
    parse_partitions,
    profile_text,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["cscs", "generic", "jsc", "lumi", "nersc", "vega"]
GOOD = "description: mine\naliases: [mine]\ndefaults:\n  resources: {partition: gpu}\n"


def cli(*args: str, tmp_path: Path, profiles: Path | None = None, path_first: Path | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess:
    """The real command, with HOME in tmp_path (so ~/.config is the test's) and
    $ITWINAI_HPC_PROFILES set to `profiles`; a FIFO it opened would hang it: the timeout fails
    the test instead."""
    env = {k: v for k, v in os.environ.items() if k != "ITWINAI_HPC_PROFILES"}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    if profiles is not None:
        env["ITWINAI_HPC_PROFILES"] = str(profiles)
    if path_first is not None:
        env["PATH"] = f"{path_first}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], cwd=tmp_path,
                          env=env, capture_output=True, timeout=timeout, text=True)


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def folder_with(tmp_path: Path, odd: str) -> tuple[Path, Path]:
    """A profiles folder holding a good profile (mysite, alias 'mine') and one odd entry."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "mysite.yml").write_text(GOOD)
    bad = folder / "bad.yml"
    if odd == "fifo":
        os.mkfifo(bad)
    elif odd == "folder":
        bad.mkdir()
    elif odd == "dangling-link":
        bad.symlink_to(tmp_path / "nowhere.yml")
    elif odd == "bad-yaml":
        bad.write_text("description: x\naliases: [a, b\n")
    elif odd == "bad-field":
        bad.write_text("description: x\naliases: [worse]\ndefaults:\n  resources: {partiton: x}\n")
    elif odd == "not-utf8":
        bad.write_bytes(b"description: \xff\xfe\n")
    elif odd == "unreadable":
        bad.write_text(GOOD.replace("mine", "other"))
        bad.chmod(0)
    return folder, bad


def workflow(tmp_path: Path, profile: str) -> Path:
    wf = tmp_path / "wf.yml"
    wf.write_text(f"name: w\nprofile: {profile}\ndefaults: {{container: none}}\n"
                  "steps:\n  - {name: a, command: echo}\n")
    return wf


# (An unreadable file: root reads a mode-000 file, so that case is
# test_an_unreadable_profile_is_skipped_with_a_warning_even_for_root, which makes the open fail.)
ODD = ["fifo", "folder", "dangling-link", "bad-yaml", "bad-field", "not-utf8"]
BROKEN = {"bad-yaml": "bad.yml:3: invalid YAML", "bad-field": "bad.yml:4: defaults.resources",
          "not-utf8": "bad.yml: cannot read", "unreadable": "bad.yml: cannot read"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("odd", ODD)
def test_an_odd_user_profile_does_not_stop_the_others_from_listing(tmp_path, odd):
    folder, bad = folder_with(tmp_path, odd)
    p = cli("profiles", tmp_path=tmp_path, profiles=folder)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert sorted(p.stdout.split()) == sorted(SHIPPED + ["mysite"])
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning: ")]
    if odd in BROKEN:     # a file that is a profile but a broken one: said once, and skipped
        assert len(warnings) == 1 and BROKEN[odd] in warnings[0], p.stderr
        assert str(bad) in warnings[0] and "skipped" in warnings[0], p.stderr
    else:                 # not a file: not a profile, nothing to say
        assert warnings == [], p.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("odd", ODD)
def test_an_odd_user_profile_does_not_stop_another_from_loading_by_alias(tmp_path, odd):
    folder, _ = folder_with(tmp_path, odd)
    for ref in ("mine", "perlmutter"):          # a user's alias, a shipped one
        p = cli("validate", str(workflow(tmp_path, ref)), tmp_path=tmp_path, profiles=folder)
        assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("odd", [o for o in ODD if getattr(o, "values", [o])[0] in BROKEN])
def test_a_broken_profile_asked_for_is_one_located_error(tmp_path, odd):
    folder, bad = folder_with(tmp_path, odd)
    odd = getattr(odd, "values", [odd])[0]
    for ref in ("bad", str(bad)):               # by name, by path
        p = cli("validate", str(workflow(tmp_path, ref)), tmp_path=tmp_path, profiles=folder)
        assert p.returncode == 2, p.stderr[-3000:]
        line = one_error(p.stderr)
        assert line.startswith(f"error: {bad}") and BROKEN[odd] in line, line


@pytest.mark.timeout(120)
@pytest.mark.parametrize("odd", ["fifo", "folder"])
def test_a_profile_path_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path, odd):
    folder, bad = folder_with(tmp_path, odd)
    p = cli("validate", str(workflow(tmp_path, "x")), "--profile", str(bad), tmp_path=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    line = one_error(p.stderr)
    assert line.startswith(f"error: {bad}: ") and "not a regular file" in line, line


@pytest.mark.timeout(120)
def test_an_alias_only_a_broken_profile_could_hold_names_the_skipped_file(tmp_path):
    folder, bad = folder_with(tmp_path, "bad-field")
    p = cli("validate", str(workflow(tmp_path, "worse")), tmp_path=tmp_path, profiles=folder)
    assert p.returncode == 2
    line = one_error(p.stderr)
    assert "no site profile 'worse'" in line and str(bad) in line, line


@pytest.mark.timeout(120)
def test_the_users_config_folder_is_searched_the_same_way(tmp_path):
    folder = tmp_path / "home" / ".config" / "itwinai-hpc" / "profiles"
    folder.mkdir(parents=True)
    (folder / "mysite.yml").write_text(GOOD)
    os.mkfifo(folder / "pipe.yml")
    (folder / "broken.yml").write_text("aliases: [\n")
    p = cli("profiles", tmp_path=tmp_path)
    assert p.returncode == 0 and sorted(p.stdout.split()) == sorted(SHIPPED + ["mysite"]), p.stderr
    assert p.stderr.count("warning: ") == 1 and "broken.yml:" in p.stderr
    p = cli("validate", str(workflow(tmp_path, "mine")), tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr


def test_an_unreadable_profile_is_skipped_with_a_warning_even_for_root(tmp_path, capsys,
                                                                       monkeypatch):
    """Root reads a file of mode 000: the read itself is made to fail as it would for a user."""
    from itwinai_hpc.cli import main
    folder, bad = folder_with(tmp_path, "bad-yaml")
    bad.write_text(GOOD.replace("mine", "other"))
    real_open = os.open

    def no_permission(path, *args, **kwargs):
        if Path(path) == bad:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", no_permission)
    monkeypatch.setenv("ITWINAI_HPC_PROFILES", str(folder))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["profiles"]) == 0
    out = capsys.readouterr()
    assert sorted(out.out.split()) == sorted(SHIPPED + ["mysite"])
    assert out.err.count("warning: ") == 1 and f"{bad}: cannot read file" in out.err, out.err
    assert main(["validate", str(workflow(tmp_path, "mine"))]) == 0
    capsys.readouterr()
    assert main(["validate", str(workflow(tmp_path, "bad"))]) == 2
    assert one_error(capsys.readouterr().err).startswith(f"error: {bad}: cannot read file")


# ---- 4. profiles init --------------------------------------------------------------------------

CONFIG = (b"Configuration data as of 2024-01-01T00:00:00\n"
          b"AccountingStorageType   = accounting_storage/slurmdbd\n"
          b"ClusterName             = caf\xe9-\xff\n"
          b"SelectType              = select/cons_tres\n"
          b"SLURM_VERSION           = 23.02.7\n"
          b"TaskPlugin              = task/affinity,task/cgroup\n")
SINFO = b"1*|128|gpu:4\n2|128|gpu:4\n007|64|(null)\ntrue|64|\xff\ngpu|128|gpu:a100:4\n"
NODES = (b"NodeName=n1 Arch=x86_64 CoresPerSocket=32 CPUTot=128 Features=caf\xff "
         b"Gres=gpu:a100:4(S:0-1)\nNodeName=n2 CPUTot=64 Gres=(null)\n")


def test_numeric_and_keyword_partition_names_come_out_as_strings():
    names, default = parse_partitions(SINFO.decode("utf-8", errors="replace"))
    assert (names, default) == (["1", "2", "007", "true", "gpu"], "1")
    text = profile_text(parse_config(CONFIG.decode("utf-8", errors="replace")), names, default,
                        *parse_nodes(NODES.decode("utf-8", errors="replace")), "apptainer",
                        "login1")
    profile = validate_model(Profile, parse_yaml(text, "init.yml"))
    assert profile.partitions == ["1", "2", "007", "true", "gpu"]
    assert profile.defaults.resources.partition == "1"
    assert "gpu" in text.split("partitions:")[1].splitlines()[0]      # plain names stay plain
    assert profile.node.gpus == 4 and profile.node.cores == 128


def stub_slurm(tmp_path: Path) -> Path:
    """scontrol and sinfo that print a site's fixed output (with bytes that are not UTF-8)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, data in (("config.txt", CONFIG), ("sinfo.txt", SINFO), ("nodes.txt", NODES)):
        (tmp_path / name).write_bytes(data)
    scripts = {
        "scontrol": f'case "$2" in config) cat {tmp_path}/config.txt;; '
                    f'node) cat {tmp_path}/nodes.txt;; *) exit 1;; esac\n',
        "sinfo": f'cat {tmp_path}/sinfo.txt\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.timeout(120)
def test_profiles_init_on_a_site_with_numeric_partitions_and_bytes_that_are_not_utf8(tmp_path):
    p = cli("profiles", "init", tmp_path=tmp_path, path_first=stub_slurm(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    text = p.stdout
    assert "SLURM 23.02.7" in text and "restates it (SRUN_CPUS_PER_TASK)" in text
    saved = tmp_path / "here.yml"
    saved.write_text(text)
    profile = validate_model(Profile, parse_yaml(text, str(saved)))
    assert profile.partitions == ["1", "2", "007", "true", "gpu"]
    assert profile.defaults.resources.partition == "1"
    p = cli("validate", str(workflow(tmp_path, str(saved))), tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
