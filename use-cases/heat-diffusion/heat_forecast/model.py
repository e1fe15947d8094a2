"""The forecast network: a small U-Net that maps (temperature, diffusivity, heat source) at t
to the temperature at t + lead. It predicts the change, added to the input temperature, and
normalises its inputs itself (channel means and spreads as arguments), so the shards keep the
physical values (K) and the registered model takes and returns them."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular"), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, padding_mode="circular"), nn.GELU())


class UNet(nn.Module):
    """Two levels down and up; `width` channels at full resolution. Grid sides must be
    multiples of 4. The train config names it `heat_forecast.model:UNet` with `model_args`."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: int = 16,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 change_scale: float = 1.0) -> None:
        super().__init__()
        mean = mean or [0.0] * in_channels
        std = std or [1.0] * in_channels
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values each (one per input "
                             f"channel), not {len(mean)} and {len(std)}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.out_channels = out_channels
        self.change_scale = change_scale
        self.down1 = _block(in_channels, width)
        self.down2 = _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _block(2 * width, width)
        self.head = nn.Conv2d(width, out_channels, 1)
        nn.init.zeros_(self.head.weight)         # starts as persistence: no change
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        d1 = self.down1(z)
        d2 = self.down2(nn.functional.avg_pool2d(d1, 2))
        b = self.bottom(nn.functional.avg_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return x[:, : self.out_channels] + self.change_scale * self.head(u1)
