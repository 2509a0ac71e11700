"""Classic upsamplers: nearest, bilinear, transposed convolution, pixel shuffle."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..windows import nearest_upsample_to
from .base import Upsampler

__all__ = ["Nearest", "Bilinear", "Deconv", "PixelShuffleUp"]


class Nearest(Upsampler):
    """Nearest-neighbour upsampling (no parameters).

    x (B, C, H, W) -> (B, C, H', W') with (H', W') = y's size if y is given, else s*(H, W).
    Output (i, j) copies x at the window centre (floor(i*H/H'), floor(j*W/W')).
    """

    name = "nearest"

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return nearest_upsample_to(x, self._output_size(x, y))


class Bilinear(Upsampler):
    """Bilinear interpolation (``align_corners=False``, no parameters).

    x (B, C, H, W) -> (B, C, H', W') with (H', W') = y's size if y is given, else s*(H, W).
    """

    name = "bilinear"

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.interpolate(x, size=self._output_size(x, y), mode="bilinear", align_corners=False)

    def uncounted_macs(self, x, y):
        H, W = self._output_size(x, y)
        return {"sampling": 4 * x.shape[0] * x.shape[1] * H * W}


class Deconv(Upsampler):
    """Transposed convolution ConvTranspose2d(C, C, k, stride=s, padding=s//2), k = 2s - s%2.

    x (B, C, H, W) -> (B, C, sH, sW). For s = 2: kernel 4, padding 1 (the FCN-style
    deconvolution). Params: C*C*k^2 + C (16C^2 + C for s = 2).
    """

    name = "deconv"
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2):
        super().__init__(in_channels, guide_channels, scale_factor)
        s = self.scale_factor
        self.kernel_size = 2 * s - s % 2
        self.deconv = nn.ConvTranspose2d(
            self.in_channels, self.in_channels, self.kernel_size, stride=s, padding=s // 2
        )

    def extra_repr(self):
        return super().extra_repr() + f", kernel_size={self.kernel_size}"

    def forward(self, x, y=None):
        self._output_size(x, y)
        return self.deconv(x)


class PixelShuffleUp(Upsampler):
    """Sub-pixel convolution: Conv2d(C, s^2 C, 1) then PixelShuffle(s).

    x (B, C, H, W) -> (B, C, sH, sW). Params: s^2 C^2 + s^2 C.
    """

    name = "pixelshuffle"
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2):
        super().__init__(in_channels, guide_channels, scale_factor)
        s = self.scale_factor
        self.conv = nn.Conv2d(self.in_channels, s * s * self.in_channels, 1)

    def forward(self, x, y=None):
        self._output_size(x, y)
        return F.pixel_shuffle(self.conv(x), self.scale_factor)
