"""Forecast pairs from the simulated fields: inputs (temperature at t, diffusivity, heat
source) as 3 channels, target the temperature at t + lead. Splits by ensemble member, so no
trajectory is seen in two splits. forecast.py reads the same order back."""

from __future__ import annotations

import numpy as np

CHANNELS = ("temperature", "diffusivity", "heat_source")
SPLITS = ("train", "validation", "test")


def split_members(members: int, validation: int | None = None,
                  test: int | None = None) -> dict[str, np.ndarray]:
    """The last `test` members for test, the `validation` before them, the rest for training;
    by default a sixth of the members each (at least one): 24 -> 16/4/4, 6 -> 4/1/1."""
    share = max(1, round(members / 6))
    validation = share if validation is None else validation
    test = share if test is None else test
    if validation < 1 or test < 1 or members - validation - test < 1:
        raise ValueError(f"{members} members cannot give at least one to each split "
                         f"(validation {validation}, test {test})")
    order = np.arange(members)
    first_val, first_test = members - validation - test, members - test
    return {"train": order[:first_val], "validation": order[first_val:first_test],
            "test": order[first_test:]}


def pair_index(members: np.ndarray, times: int, lead: int) -> list[tuple[int, int]]:
    """(member, start time) of every pair, member-major: the samples' order in the shards."""
    if not 1 <= lead < times:
        raise ValueError(f"lead {lead} needs at least {lead + 1} saved times, not {times}")
    return [(int(m), t) for m in members for t in range(times - lead)]


def make_pairs(temperature: np.ndarray, kappa: np.ndarray, source: np.ndarray,
               index: list[tuple[int, int]], lead: int) -> dict[str, np.ndarray]:
    """{"inputs": (N, 3, H, W), "targets": (N, 1, H, W)} float32 for the given pairs."""
    size = temperature.shape[-2:]
    inputs = np.empty((len(index), len(CHANNELS), *size), dtype=np.float32)
    targets = np.empty((len(index), 1, *size), dtype=np.float32)
    for row, (m, t) in enumerate(index):
        inputs[row, 0] = temperature[m, t]
        inputs[row, 1] = kappa[m]
        inputs[row, 2] = source[m]
        targets[row, 0] = temperature[m, t + lead]
    return {"inputs": inputs, "targets": targets}
