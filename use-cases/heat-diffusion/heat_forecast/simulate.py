"""2-D heat diffusion with a varying diffusivity and fixed heat sources, on a periodic grid:
dT/dt = div(kappa grad T) + q, stepped explicitly (stable while kappa * dt <= 0.25 per cell).
Pure NumPy; every member draws its fields from its own seeded generator, so a member's fields do
not depend on how many members are simulated."""

from __future__ import annotations

import numpy as np

KAPPA_RANGE = (0.02, 0.2)      # cell^2 per substep: below the explicit scheme's limit of 0.25


def smooth_field(rng: np.random.Generator, size: int, cutoff: float) -> np.ndarray:
    """White noise low-passed in Fourier space (wavenumbers ~< cutoff), scaled to [-1, 1]."""
    k = np.fft.fftfreq(size) * size
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    spectrum = np.fft.fft2(rng.standard_normal((size, size))) * np.exp(-k2 / cutoff**2)
    field = np.fft.ifft2(spectrum).real
    return field / np.abs(field).max()


def member_fields(seed: int, member: int, size: int) -> tuple[np.ndarray, ...]:
    """(initial temperature K, diffusivity, heat source K/substep) of one ensemble member."""
    rng = np.random.default_rng([seed, member])
    temperature = 290.0 + 10.0 * smooth_field(rng, size, cutoff=4.0)
    low, high = KAPPA_RANGE
    kappa = low + (high - low) * 0.5 * (1.0 + smooth_field(rng, size, cutoff=3.0))
    yy, xx = np.mgrid[0:size, 0:size]
    source = np.zeros((size, size))
    for _ in range(3):                           # a few warm or cold spots
        cy, cx = rng.uniform(0, size, 2)
        dy = (yy - cy + size / 2) % size - size / 2
        dx = (xx - cx + size / 2) % size - size / 2
        width = rng.uniform(2.0, 5.0)
        source += rng.uniform(-0.05, 0.05) * np.exp(-(dy**2 + dx**2) / (2 * width**2))
    return temperature, kappa, source


def step(temperature: np.ndarray, kappa: np.ndarray, source: np.ndarray) -> np.ndarray:
    """One explicit substep on the last two axes (periodic), fluxes at cell faces."""
    out = temperature + source
    for axis in (-1, -2):
        k_face = 0.5 * (kappa + np.roll(kappa, -1, axis))
        flux = k_face * (np.roll(temperature, -1, axis) - temperature)
        out += flux - np.roll(flux, 1, axis)
    return out


def simulate(members: int, times: int, size: int, substeps: int, seed: int):
    """Temperature (members, times, size, size) saved every `substeps` steps, with the
    diffusivity and source fields (members, size, size); all float32."""
    fields = [member_fields(seed, m, size) for m in range(members)]
    temperature = np.stack([f[0] for f in fields])
    kappa = np.stack([f[1] for f in fields])
    source = np.stack([f[2] for f in fields])
    saved = np.empty((members, times, size, size), dtype=np.float32)
    for t in range(times):
        saved[:, t] = temperature
        for _ in range(substeps):
            temperature = step(temperature, kappa, source)
    return saved, kappa.astype(np.float32), source.astype(np.float32)
