"""Site profiles: YAML files merged under a workflow's `defaults` (the workflow and --set win).

Shipped profiles live in this folder (one file per site, its sources and what could not be
verified in comments); users add their own in $ITWINAI_HPC_PROFILES (a folder, or several
separated by ':') or ~/.config/itwinai-hpc/profiles, same format, same file:line errors.
A name is a file's stem or one of its `aliases`; a path names a file directly. Only regular
files are read (a FIFO named x.yml would block the read); a broken profile of the user's is
skipped, reported only when it is the one asked for (listing them warns about it). Pure apart
from reading those files; imports no torch.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Annotated, Literal

from itwinai_hpc.core import job_env
from itwinai_hpc.core.errors import UserError, UserErrors
from itwinai_hpc.core.records import Field, StrictInt
from itwinai_hpc.core.validation import did_you_mean, validate_model
from itwinai_hpc.core.yamlsrc import parse_yaml
from itwinai_hpc.workflow.sbatch_fields import MEM
from itwinai_hpc.workflow.schema import Defaults, merge
from itwinai_hpc.workflow.schema_base import _Model

SHIPPED = Path(__file__).parent
DEFAULT = "generic"


class NodeInfo(_Model):
    """What a site's GPU node has: for `container.gpu: auto`, a GPU step's share of a node
    (render/plan.py) and validate's warnings. `cores` counts CPUs as SLURM does (hardware
    threads where the site counts them)."""

    cores: StrictInt | None = None
    gpus: StrictInt | None = None
    gpu_vendor: Literal["nvidia", "amd", "none"] = "nvidia"
    # A GPU's share of a node, as the site's examples ask for it: a step that asks for G GPUs
    # per node gets G x these (cpus split over its tasks) unless the step itself sets them.
    cpus_per_gpu: Annotated[StrictInt, Field(ge=1)] | None = None
    mem_per_gpu: Annotated[str, Field(pattern=MEM)] | None = None


class SiteRules(_Model):
    """What validate checks for this site beyond node sizes (workflow/site_checks.py)."""

    # resources a job there should name: a warning when neither the workflow nor the
    # environment sbatch reads (SBATCH_ACCOUNT, SBATCH_QOS) sets it; the text says why
    expect: dict[Literal["account", "qos", "partition"], str] = {}
    # a GPU step's container image should look like this site's GPU build (ROCm on AMD)
    image_hint: str | None = None


class Profile(_Model):
    description: str | None = None
    aliases: list[str] = []
    sources: list[str] = []
    unverified: list[str] = []
    partitions: list[str] = []
    node: NodeInfo = NodeInfo()
    rules: SiteRules = SiteRules()
    # the site's own recommended images (documentation: `profiles --show` prints them)
    images: dict[str, str] = {}
    defaults: Defaults = Defaults()


class LoadedProfile:
    def __init__(self, name: str, path: Path, profile: Profile, text: str):
        self.name, self.path, self.profile, self.text = name, path, profile, text


def search_path() -> list[Path]:
    """Where profiles are looked for, first match wins: the user's folders, then shipped."""
    folders = [Path(p) for p in os.environ.get(job_env.PROFILES, "").split(":") if p]
    try:
        folders.append(Path.home() / ".config" / "itwinai-hpc" / "profiles")
    except RuntimeError:                # no $HOME and no passwd entry: no personal profiles
        pass
    return folders + [SHIPPED]


def available(warn: bool = True) -> dict[str, Path]:
    """Every profile name (stems and aliases) -> its file, the first folder winning. A profile
    that cannot be read or is not valid is left out, with one `warning:` line on stderr
    (unless not `warn`); files that are not regular files (folders, FIFOs) are not profiles."""
    found, skipped = _scan()
    for exc in skipped if warn else []:
        print(f"warning: {_one_line(exc)}; the profile was skipped", file=sys.stderr)
    return found


def _scan() -> tuple[dict[str, Path], list[UserError]]:
    """available()'s names, and the errors of the profiles it skipped as broken."""
    found: dict[str, Path] = {}
    for folder in search_path():
        for path in sorted(folder.glob("*.yml")) if folder.is_dir() else []:
            if _is_regular(path):
                found.setdefault(path.stem, path)
    skipped: list[UserError] = []
    for path in list(dict.fromkeys(found.values())):
        try:
            aliases = _read(path).profile.aliases
        except UserError as exc:
            skipped.append(exc)
            del found[path.stem]
            continue
        for alias in aliases:
            found.setdefault(alias, path)
    return found, skipped


def _is_regular(path: Path) -> bool:
    """A regular file (links followed), found without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _one_line(exc: UserError) -> str:
    """A profile's first problem, on one line (validation may have found several)."""
    errors = exc.errors if isinstance(exc, UserErrors) else [exc]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(errors[0].format().split()) + more


def load_profile(ref: str | None) -> LoadedProfile:
    """A profile by name (or alias) or by path; None is the default profile."""
    ref = ref or DEFAULT
    if "/" in ref or ref.endswith((".yml", ".yaml")):
        return _read(Path(ref))
    for folder in search_path():        # a file's own name wins over every alias: no need
        path = folder / f"{ref}.yml"      # to read the other profiles for theirs
        if path.is_file():
            loaded = _read(path)
            loaded.name = ref
            return loaded
    known, skipped = _scan()
    if ref not in known:
        names = sorted(known)
        broken = [str(e.errors[0].file if isinstance(e, UserErrors) else e.file)
                  for e in skipped]
        raise UserError(f"no site profile '{ref}'{did_you_mean(ref, names)}; known: "
                        f"{', '.join(names)} (add yours in $ITWINAI_HPC_PROFILES or "
                        "~/.config/itwinai-hpc/profiles)" +
                        (f"; skipped as broken: {', '.join(broken)} (`itwinai-hpc profiles "
                         "--show FILE` says why)" if broken else ""), field="profile")
    loaded = _read(known[ref])
    loaded.name = ref
    return loaded


def _read(path: Path) -> LoadedProfile:
    text = _read_text(path)
    doc = parse_yaml(text, str(path))
    return LoadedProfile(path.stem, path, validate_model(Profile, doc), text)


def _read_text(path: Path) -> str:
    """The file's text, if it is a regular UTF-8 file. Opened without blocking and checked
    before reading: a FIFO put where a profile was expected must not hang the command."""
    try:
        if not _is_regular(path) and path.exists():
            raise UserError("is not a regular file (a folder, FIFO or device); name a profile's "
                            "YAML file", file=str(path))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError("is not a regular file (a folder, FIFO or device); name a "
                                "profile's YAML file", file=str(path))
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise UserError("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read file: {exc}", file=str(path)) from None


def apply(defaults: Defaults, profile: Profile) -> Defaults:
    """The workflow's defaults over the profile's (lists extend, the workflow's values win)."""
    return merge(profile.defaults, defaults)


def node_share(r, own, node: NodeInfo | None):
    """A GPU step's Resources `r` (defaults < step, merged) with the profile's share of a node:
    cpus-per-gpu and mem-per-gpu times the GPUs it asks for per node (the CPUs split over its
    tasks), over the workflow's defaults: those are written for every step and every site (a
    laptop's 2 CPUs would starve torchrun's workers on a 56-core node), the share is what the
    site's own examples ask for. What the step itself sets (`own`) wins."""
    gpus = r.gpus_per_node or 0
    if node is None or gpus <= 0:
        return r
    update: dict = {}
    if node.cpus_per_gpu and own.cpus_per_task is None:
        update["cpus_per_task"] = max(1, node.cpus_per_gpu * gpus // (r.ntasks_per_node or 1))
    if node.mem_per_gpu and own.mem is None:
        number = node.mem_per_gpu.rstrip("KMGT")
        update["mem"] = f"{int(number) * gpus}{node.mem_per_gpu[len(number):]}"
    return r.model_copy(update=update) if update else r


def describe(loaded: LoadedProfile) -> str:
    """`profiles --show`: where it comes from, then the file with its comments."""
    return f"# profile '{loaded.name}' from {loaded.path}\n" + loaded.text
