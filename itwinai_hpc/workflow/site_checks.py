"""What a site will refuse, or run slowly without a word, found before anything is queued.

site_refusals: images a runtime can never run (a file for Shifter or podman-hpc, a .sif for
CSCS's container engine), a CPU mask list a torchrun task would get whole; load_workflow
raises them, so validate, render and submit stop with exit 2. site_warnings (validate prints
them): torchrun starved of CPUs or memory, workflow defaults the profile's node share replaces,
what the site expects set (account, QOS), an image that does not fit the GPUs, an EDF without
the aws_ofi_nccl hook. Reads nothing but the EDF file a container-engine step names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from itwinai_hpc.core import slurm_syntax
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.validation import dotted
from itwinai_hpc.core.yamlsrc import YamlDoc
from itwinai_hpc.workflow.profiles import LoadedProfile, node_share
from itwinai_hpc.workflow.schema import Workflow, list_items, merge

FILE_IMAGE = re.compile(r"\.(sif|simg|img|sqsh|squashfs|tar|tar\.gz)$", re.I)
CPU_LIST = re.compile(r"^--cpu[-_]bind=(?:[a-z_]+,)*(mask_cpu|map_cpu|mask_ldom|map_ldom):(\S+)$")
HOOK = ("com", "hooks", "aws_ofi_nccl", "enabled")


class _Step:
    """A step as the site will see it: defaults (profile < workflow) < step, node share."""

    def __init__(self, wf: Workflow, i: int, site: LoadedProfile | None):
        d = merge(site.profile.defaults, wf.defaults) if site else wf.defaults
        self.index, self.step = i, wf.steps[i]
        own = self.step.resources
        self.res = node_share(merge(d.resources, own), own, site.profile.node if site else None)
        c, dc = self.step.container, d.container
        self.container = None if c == "none" or (c is None and dc in ("none", None)) else \
            merge(None if dc == "none" else dc, c)
        launch = merge(d.launch, self.step.launch)
        self.srun_args = list_items(launch.srun_args) if launch else []
        self.nproc = self.step.nproc_per_node or (self.res.gpus_per_node or 1)

    @property
    def image(self) -> str | None:
        return self.container.image if self.container else None

    @property
    def runtime(self) -> str:
        return (self.container.runtime if self.container else None) or "apptainer"


class _Report:
    def __init__(self, wf: Workflow, doc: YamlDoc, site: LoadedProfile | None):
        self.wf, self.doc, self.site = wf, doc, site
        self.found: list[UserError] = []

    def add(self, candidates: list[tuple], message: str) -> None:
        """At the first of `candidates` (paths) the workflow sets; else at the profile's
        defaults where it sets that field; else at the first candidate, in the workflow."""
        data = self.doc.data
        path = next((p for p in candidates if _has(data, p)), None)
        if path is None and self.site and _profile_sets(self.site, candidates[-1]):
            self.found.append(UserError(message, file=str(self.site.path),
                                        field=".".join(map(str, candidates[-1]))))
            return
        path = path or candidates[0]
        file, line = self.doc.where(path)
        self.found.append(UserError(message, file=file, line=line, field=dotted(path, data)))


def _profile_sets(site: LoadedProfile, path: tuple) -> bool:
    value: object = site.profile
    for key in path:
        value = getattr(value, str(key).replace("-", "_"), None)
    return value is not None


def _has(data, path: tuple) -> bool:
    for key in path:
        if isinstance(key, int):
            if not isinstance(data, list) or key >= len(data):
                return False
        elif not isinstance(data, Mapping) or key not in data:
            return False
        data = data[key]
    return True


def _at(i: int, *keys) -> list[tuple]:
    """A step's field, then the defaults' same field."""
    return [("steps", i, *keys), ("defaults", *keys)]


def site_refusals(wf: Workflow, doc: YamlDoc, site: LoadedProfile | None) -> list[UserError]:
    report = _Report(wf, doc, site)
    for i in range(len(wf.steps)):
        s = _Step(wf, i, site)
        image, where = s.image, _at(i, "container", "image")
        if image and s.runtime == "shifter" and any(c.isspace() for c in image):
            report.add(where, f"'{image}' holds a space: Shifter's image goes on an `#SBATCH "
                       "--image=` line, which ends at it; name it as docker:REPO/NAME:TAG")
        elif image and s.runtime == "shifter" and _is_file(image):
            report.add(where, f"'{image}' is a file, but Shifter runs only images pulled into "
                       "its image gateway from a registry: `shifterimg pull docker:REPO/NAME:TAG`, "
                       "then name it as docker:REPO/NAME:TAG")
        elif image and s.runtime == "podman-hpc" and _is_file(image):
            report.add(where, f"'{image}' is a file, but podman-hpc runs images from its own "
                       "store: `podman-hpc pull REPO/NAME:TAG` (or build, then `podman-hpc "
                       "migrate NAME:TAG`), then name it as REPO/NAME:TAG")
        elif image and s.runtime == "container-engine" and \
                (FILE_IMAGE.search(image) or "/" in image and not image.endswith(".toml")):
            report.add(where, f"'{image}' is not an EDF: the container engine (srun "
                       "--environment) takes an environment definition file (a .toml path, "
                       "or the name of one in ~/.edf) whose `image = ...` names the image")
        if s.step.launcher == "torchrun":
            for arg in s.srun_args:
                m = CPU_LIST.match(arg)
                if m and "," in m.group(2):
                    report.add(_at(i, "launch", "srun-args"), f"'{arg}': torchrun runs one "
                               "srun task per node, which gets the first entry of this list "
                               f"only, and all {s.nproc} workers share it. Bind per rank "
                               "instead: the srun launcher with one task per GPU (and this "
                               "list), or --cpu-bind=none with torchrun's own binding "
                               "(launch.torchrun-args: [--numa-binding=node])")
    return report.found


def _is_file(image: str) -> bool:
    return bool(FILE_IMAGE.search(image)) or image.startswith(("/", "./", "../", "~"))


def site_warnings(wf: Workflow, doc: YamlDoc, site: LoadedProfile | None,
                  workdir: Path = Path("."), environ: Mapping[str, str] = os.environ
                  ) -> list[UserError]:
    report = _Report(wf, doc, site)
    node = site.profile.node if site else None
    rules = site.profile.rules if site else None
    name = f"profile '{site.name}'" if site else "the default profile"
    for i, step in enumerate(wf.steps):
        s = _Step(wf, i, site)
        r = s.res
        gpus = r.gpus_per_node or 0
        if step.launcher == "torchrun" and (r.cpus_per_task or 1) < s.nproc:
            report.add(_at(i, "resources", "cpus-per-task"),
                       f"torchrun starts {s.nproc} processes per node in one task of "
                       f"{r.cpus_per_task or 'the default 1'} CPU(s): they share "
                       f"them; give the step {s.nproc} CPUs or more (resources.cpus-per-task)")
        if node and node.mem_per_gpu and gpus and r.mem and r.mem[-1] in "KMGT":
            want = (slurm_syntax.mem_bytes(node.mem_per_gpu) or 0) * gpus
            if (slurm_syntax.mem_bytes(r.mem) or 0) < want:
                report.add(_at(i, "resources", "mem"),
                           f"{r.mem} per node for {gpus} GPU(s) is less than this site's "
                           f"examples ask for ({node.mem_per_gpu} per GPU, {name})")
        for key, attr, per_gpu in (("cpus-per-task", "cpus_per_task", "cpus_per_gpu"),
                                   ("mem", "mem", "mem_per_gpu")):
            pinned = getattr(wf.defaults.resources, attr)
            if node and gpus and getattr(node, per_gpu) and pinned is not None and \
                    getattr(step.resources, attr) is None and getattr(r, attr) != pinned:
                report.add([("defaults", "resources", key)],
                           f"{pinned} is not used for GPU step '{step.name}': {name} gives "
                           f"it a GPU's share of a node ({getattr(r, attr)} for {gpus} GPUs); "
                           f"set steps.{step.name}.resources.{key} to pin it")
        if rules and rules.image_hint and gpus and s.image and \
                rules.image_hint not in s.image.lower() and "multitorch" not in s.image:
            report.add(_at(i, "container", "image"),
                       f"'{s.image}' does not look like a {rules.image_hint} build, and this "
                       f"site's GPUs need one ({name}: {_default_image(site)}); a build for "
                       "other GPUs sees none, and the step stops")
        if gpus and s.runtime == "container-engine" and s.image:
            problem = _edf_problem(s.image, workdir)
            if problem:
                report.add(_at(i, "container", "image"), problem)
    for key, reason in (rules.expect.items() if rules else ()):
        env = "SBATCH_" + key.upper()
        if environ.get(env):
            continue
        missing = [i for i in range(len(wf.steps))
                   if getattr(_Step(wf, i, site).res, key) is None]
        if missing:
            report.add([("defaults", "resources", key)] * 2,
                       f"not set ({name}): {reason}")
    return report.found


def _edf_problem(image: str, workdir: Path) -> str | None:
    """Why an EDF will not give NCCL the network (no aws_ofi_nccl hook), or None."""
    if image.startswith("/"):
        path = Path(image)
    elif "/" in image or image.endswith(".toml"):
        path = workdir / image
    else:
        path = Path(os.path.expanduser(f"~/.edf/{image}.toml"))
    try:                            # imported here: only a container-engine step reads an EDF
        import tomllib
    except ImportError:             # Python 3.10: read the hook's line itself (_hook_by_text)
        tomllib = None
    try:
        text = path.read_text(encoding="utf-8")
        enabled = _lookup(tomllib.loads(text).get("annotations"), HOOK) == "true" \
            if tomllib else _hook_by_text(text)
    except OSError as exc:
        return (f"cannot read the EDF {path} to check it enables the aws_ofi_nccl hook "
                f"({exc.strerror or exc}); without it NCCL talks TCP between nodes")
    except (ValueError, UnicodeDecodeError) as exc:     # TOMLDecodeError is a ValueError
        return f"the EDF {path} is not valid TOML ({exc}); the container engine will refuse it"
    if not enabled:
        return (f"the EDF {path} does not enable the aws_ofi_nccl hook ([annotations] "
                'com.hooks.aws_ofi_nccl.enabled = "true"): NCCL then uses TCP between nodes '
                "(CSCS measured about 1.6 instead of 19.8 GB/s all-reduce bus bandwidth on "
                "2 nodes)")
    return None


def _lookup(table, keys: tuple[str, ...]):
    """A dotted TOML key, written nested ([annotations.com.hooks...]) or quoted as one."""
    if not keys or not isinstance(table, dict):
        return table if not keys else None
    if ".".join(keys) in table:
        return table[".".join(keys)]
    return _lookup(table.get(keys[0]), keys[1:])


def _default_image(site: LoadedProfile | None) -> str:
    c = site.profile.defaults.container if site else None
    image = c.image if c not in (None, "none") else None  # type: ignore[union-attr]
    return f"its default image is {image}" if image else "no default image"


def _hook_by_text(text: str) -> bool:
    """Without tomllib: the hook's key set to "true" under [annotations] or its sub-tables."""
    table = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            table = line.strip("[] ")
            continue
        key, _, value = line.partition("=")
        full = ".".join(p for p in (table, key.strip().strip('"')) if p)
        if full == "annotations." + ".".join(HOOK) and value.strip() in ('"true"', "'true'"):
            return True
    return False
