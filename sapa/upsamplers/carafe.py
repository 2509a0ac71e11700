"""CARAFE (Wang et al. 2019): content-aware reassembly of features."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_kernel_size
from .base import Upsampler, _positive_int, compressed_conv, reassemble

__all__ = ["CARAFE"]


class CARAFE(Upsampler):
    """CARAFE (Wang et al. 2019): content-aware reassembly, kernels from the decoder feature.

    x (B, C, H, W) -> (B, C, sH, sW); y (optional) is only checked for its size.

    kernel generation: m = Conv3x3(Conv1x1(x; C -> c_m); c_m -> s^2 K^2), pixel shuffle to
    (B, K^2, sH, sW), softmax over K^2; feature assembly: :func:`reassemble` of the K x K
    neighbourhood of x around (i // s, j // s). Defaults c_m = 64, K = 5, encoder kernel 3.
    Init as mmcv: compressor xavier-uniform, encoder normal(std=0.001), zero biases.
    Params: C c_m + c_m + 9 c_m s^2 K^2 + s^2 K^2.
    The compressor and the encoder are both linear: they run as one conv of x where that is
    cheaper (C < c_m, :func:`~sapa.upsamplers.base.compressed_conv`).
    Equals mmcv's ``CARAFEPack`` (up_group=1) with the same weights; its keys
    ``channel_compressor`` and ``content_encoder`` map to ``compressor`` and ``encoder``
    (:func:`sapa.upsamplers.load_official_state_dict`). Beyond it: runs on any device (the mmcv
    op is CUDA-only).
    """

    name = "carafe"
    integer_scale = True

    def __init__(
        self, in_channels, guide_channels=None, scale_factor=2, compressed_channels=64, kernel_size=5, encoder_kernel_size=3
    ):
        super().__init__(in_channels, guide_channels, scale_factor)
        self.compressed_channels = _positive_int("compressed_channels", compressed_channels)
        self.kernel_size = check_kernel_size(kernel_size)
        self.encoder_kernel_size = _positive_int("encoder_kernel_size", encoder_kernel_size)
        if encoder_kernel_size % 2 == 0:
            raise ValueError(f"encoder_kernel_size must be odd, got {encoder_kernel_size}")
        s, K = self.scale_factor, self.kernel_size
        self.compressor = nn.Conv2d(self.in_channels, self.compressed_channels, 1)
        self.encoder = nn.Conv2d(
            self.compressed_channels, s * s * K * K, encoder_kernel_size, padding=encoder_kernel_size // 2
        )
        nn.init.xavier_uniform_(self.compressor.weight)
        nn.init.zeros_(self.compressor.bias)
        nn.init.normal_(self.encoder.weight, std=0.001)
        nn.init.zeros_(self.encoder.bias)

    def extra_repr(self):
        return super().extra_repr() + (
            f", compressed_channels={self.compressed_channels}, kernel_size={self.kernel_size}, "
            f"encoder_kernel_size={self.encoder_kernel_size}"
        )

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised kernels (B, K^2, sH, sW) for x (B, C, H, W)."""
        m = compressed_conv(x, self.compressor, self.encoder.weight, self.encoder.bias, self.encoder.padding[0])
        m = F.pixel_shuffle(m, self.scale_factor)
        return torch.softmax(m, dim=1)

    def forward(self, x, y=None):
        self._output_size(x, y)
        return reassemble(x, self.kernels(x), self.kernel_size)

    def uncounted_macs(self, x, y):
        H, W = self._output_size(x, y)
        return {"weighted_sum": x.shape[0] * x.shape[1] * self.kernel_size**2 * H * W}
