"""Site profiles: YAML files merged under a workflow's `defaults` (the workflow and --set win).

Shipped profiles live in this folder (one file per site, its sources and what could not be
verified in comments); users add their own in $ITWINAI_HPC_PROFILES (a folder, or several
separated by ':') or ~/.config/itwinai-hpc/profiles, same format, same file:line errors.
A name is a file's stem or one of its `aliases`; a path names a file directly. Pure apart from
reading those files; imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import StrictInt

from ..errors import UserError
from ..schema import Defaults, merge
from ..schema_base import _Model
from ..validation import did_you_mean, validate_model
from ..yamlsrc import load_yaml

SHIPPED = Path(__file__).parent
DEFAULT = "generic"


class NodeInfo(_Model):
    """What a site's GPU node has: for `container.gpu: auto` and validate's warnings."""

    cores: StrictInt | None = None
    gpus: StrictInt | None = None
    gpu_vendor: Literal["nvidia", "amd", "none"] = "nvidia"


class Profile(_Model):
    description: str | None = None
    aliases: list[str] = []
    sources: list[str] = []
    unverified: list[str] = []
    partitions: list[str] = []
    node: NodeInfo = NodeInfo()
    defaults: Defaults = Defaults()


class LoadedProfile:
    def __init__(self, name: str, path: Path, profile: Profile, text: str):
        self.name, self.path, self.profile, self.text = name, path, profile, text


def search_path() -> list[Path]:
    """Where profiles are looked for, first match wins: the user's folders, then shipped."""
    folders = [Path(p) for p in os.environ.get("ITWINAI_HPC_PROFILES", "").split(":") if p]
    folders.append(Path.home() / ".config" / "itwinai-hpc" / "profiles")
    return folders + [SHIPPED]


def available() -> dict[str, Path]:
    """Every profile name (stems and aliases) -> its file, the first folder winning."""
    found: dict[str, Path] = {}
    for folder in search_path():
        for path in sorted(folder.glob("*.yml")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    for path in list(dict.fromkeys(found.values())):
        for alias in _read(path).profile.aliases:
            found.setdefault(alias, path)
    return found


def load_profile(ref: str | None) -> LoadedProfile:
    """A profile by name (or alias) or by path; None is the default profile."""
    ref = ref or DEFAULT
    if "/" in ref or ref.endswith((".yml", ".yaml")):
        return _read(Path(ref))
    known = available()
    if ref not in known:
        names = sorted(known)
        raise UserError(f"no site profile '{ref}'{did_you_mean(ref, names)}; known: "
                        f"{', '.join(names)} (add yours in $ITWINAI_HPC_PROFILES or "
                        "~/.config/itwinai-hpc/profiles)", field="profile")
    loaded = _read(known[ref])
    loaded.name = ref
    return loaded


def _read(path: Path) -> LoadedProfile:
    doc = load_yaml(path)
    return LoadedProfile(path.stem, path, validate_model(Profile, doc), path.read_text())


def apply(defaults: Defaults, profile: Profile) -> Defaults:
    """The workflow's defaults over the profile's (lists extend, the workflow's values win)."""
    return merge(profile.defaults, defaults)


def describe(loaded: LoadedProfile) -> str:
    """`profiles --show`: where it comes from, then the file with its comments."""
    return f"# profile '{loaded.name}' from {loaded.path}\n" + loaded.text
