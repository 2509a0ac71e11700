"""IndexNet (Lu et al. 2019): index-guided upsampling, HIN and M2O index blocks."""
from __future__ import annotations

from typing import Tuple

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..windows import nearest_upsample_to
from .base import Upsampler

__all__ = ["IndexNetHIN", "IndexNetM2O"]


def _index_conv_geometry(s: int, use_context: bool) -> Tuple[int, int]:
    """(kernel, padding) of the stride-s index convolution: s (+2 with a one-pixel context)."""
    return (s + 2, 1) if use_context else (s, 0)


def _official_init(module: nn.Module, branches: int = 1) -> None:
    """Initialise as the official IndexNet code (``_initialize_weights`` of its networks).

    Every convolution: weight ~ normal(0, sqrt(2 / n)), n = k_h * k_w * out_channels of the
    official convolution; BatchNorm weight 1, bias 0. ``branches``: our convolutions stack
    that many official ones along the output channels (M2O's s^2 branches), so n uses
    out_channels / branches.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * (m.out_channels // branches)
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _IndexUpsampler(Upsampler):
    """Shared by the IndexNet variants: output = decoder_index(y) * nearest_up(x)."""

    def forward(self, x, y=None):
        size = self._output_size(x, y)
        return self.decoder_index(y) * nearest_upsample_to(x, size)

    def uncounted_macs(self, x, y):
        H, W = self._output_size(x, y)
        return {"weighted_sum": x.shape[0] * x.shape[1] * H * W}


class IndexNetHIN(_IndexUpsampler):
    """IndexNet (Lu et al. 2019), holistic index network (HIN), nonlinear, with context.

    x (B, C, H, W), y (B, C_y, sH, sW) -> (B, C, sH, sW).

    index block on the encoder feature y: Conv(C_y -> 2 C_y, kernel s+2, stride s, pad 1,
    no bias) -> BatchNorm -> ReLU6 -> Conv1x1(2 C_y -> s^2, no bias) -> sigmoid -> pixel
    shuffle: one decoder index map (B, 1, sH, sW) shared by all channels;
    output = index * nearest_up(x). ``use_context=False`` uses kernel s, pad 0;
    ``use_nonlinear=False`` a single Conv(C_y -> s^2). Params (defaults, s=2):
    16 * 2 C_y^2 + 2 * 2 C_y (BN) + 2 C_y * 4 = 32 C_y^2 + 12 C_y.
    Init as the official code (``poppinace/indexnet_matting``): every convolution
    normal(0, sqrt(2 / (k*k*out_channels))), BatchNorm 1 and 0. The official block is
    hard-wired to x2 (4 output maps, kernel 4 or 2); other scale factors go beyond it.
    Official state_dict keys ``indexnet.*`` map to ``index.*``
    (:func:`sapa.upsamplers.load_official_state_dict`).
    """

    name = "indexnet-hin"
    guided = True
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2, use_context=True, use_nonlinear=True):
        super().__init__(in_channels, guide_channels, scale_factor)
        s, Cy = self.scale_factor, self.guide_channels
        k, p = _index_conv_geometry(s, use_context)
        self.use_context, self.use_nonlinear = bool(use_context), bool(use_nonlinear)
        if use_nonlinear:
            self.index = nn.Sequential(
                nn.Conv2d(Cy, 2 * Cy, k, stride=s, padding=p, bias=False),
                nn.BatchNorm2d(2 * Cy),
                nn.ReLU6(),
                nn.Conv2d(2 * Cy, s * s, 1, bias=False),
            )
        else:
            self.index = nn.Conv2d(Cy, s * s, k, stride=s, padding=p, bias=False)
        _official_init(self.index)

    def extra_repr(self):
        return super().extra_repr() + f", use_context={self.use_context}, use_nonlinear={self.use_nonlinear}"

    def decoder_index(self, y: torch.Tensor) -> torch.Tensor:
        """(B, 1, sH, sW) index map in (0, 1) from the guide y (B, C_y, sH, sW)."""
        return F.pixel_shuffle(torch.sigmoid(self.index(y)), self.scale_factor)



class IndexNetM2O(_IndexUpsampler):
    """IndexNet depthwise many-to-one (M2O) index network, nonlinear, with context.

    x (B, C, H, W), y (B, C, sH, sW) -> (B, C, sH, sW); needs C_y == C (one index map per
    channel). s^2 branches, each Conv(C -> C, kernel s+2, stride s, pad 1, no bias) ->
    BatchNorm -> ReLU6 -> Conv1x1(C -> C, no bias) (implemented as one conv to s^2 C channels
    and one grouped 1x1 conv); sigmoid; the s^2 branch outputs are pixel-shuffled into
    the per-channel decoder index; output = index * nearest_up(x).
    Params (defaults, s=2): 4 (16 C^2 + 2 C + C^2) = 68 C^2 + 8 C.
    The official block (``DepthwiseM2OIndexBlock``) keeps the four branches as four modules
    ``indexnet1..4``; stacking them along the output channels computes the same maps, and
    :func:`sapa.upsamplers.load_official_state_dict` concatenates their weights. Init as the
    official code: every branch convolution normal(0, sqrt(2 / (k*k*C))) (C = the official
    branch's out_channels), BatchNorm 1 and 0. Other scale factors than 2 go beyond it.
    """

    name = "indexnet-m2o"
    guided = True
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2, use_context=True, use_nonlinear=True):
        super().__init__(in_channels, guide_channels, scale_factor)
        if self.guide_channels != self.in_channels:
            raise ValueError(
                f"indexnet-m2o needs guide_channels == in_channels (one index per channel), got "
                f"in_channels={self.in_channels}, guide_channels={self.guide_channels}"
            )
        s, C = self.scale_factor, self.in_channels
        k, p = _index_conv_geometry(s, use_context)
        self.use_context, self.use_nonlinear = bool(use_context), bool(use_nonlinear)
        if use_nonlinear:
            self.index = nn.Sequential(
                nn.Conv2d(C, s * s * C, k, stride=s, padding=p, bias=False),
                nn.BatchNorm2d(s * s * C),
                nn.ReLU6(),
                nn.Conv2d(s * s * C, s * s * C, 1, groups=s * s, bias=False),
            )
        else:
            self.index = nn.Conv2d(C, s * s * C, k, stride=s, padding=p, bias=False)
        _official_init(self.index, branches=s * s)

    def extra_repr(self):
        return super().extra_repr() + f", use_context={self.use_context}, use_nonlinear={self.use_nonlinear}"

    def decoder_index(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, sH, sW) index maps in (0, 1) from the guide y (B, C, sH, sW)."""
        s = self.scale_factor
        z = torch.sigmoid(self.index(y))  # (B, s^2 C, H, W), branch-major
        B, _, H, W = z.shape
        z = z.view(B, s * s, -1, H, W).transpose(1, 2).reshape(B, -1, H, W)  # channel-major
        return F.pixel_shuffle(z, s)
