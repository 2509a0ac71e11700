"""FADE (Lu et al. 2022): fusing the assets of decoder and encoder."""
from __future__ import annotations

import torch
import torch.nn as nn

from .._checks import check_kernel_size
from ..windows import nearest_upsample_to
from .base import Upsampler, _positive_int, compressed_conv, reassemble

__all__ = ["FADE"]


class FADE(Upsampler):
    """FADE (Lu et al. 2022): kernels from encoder and decoder, plus a decoder-driven gate.

    x (B, C, H, W), y (B, C, H', W') -> (B, C, H', W') (needs C_y == C; any H' >= H).

    kernel generation ("semi-shift" convolution with one shared 3x3 kernel bank W, b):
      m = Conv3x3_{W,b}(Conv1x1(y; C -> d)) + nearest_up(Conv3x3_{W,b}(Conv1x1'(x; C -> d)))
      (the encoder compressor has a bias, the decoder compressor none; d = 64, K = 5,
      W: (K^2, d, 3, 3)), kernels = softmax over K^2;
    output = g * y + (1 - g) * reassemble(x, kernels), g = sigmoid(nearest_up(Conv1x1(x; C -> 1))).

    The bias b of the kernel bank enters BOTH branch convolutions, so the logits carry 2b:
    this is what the official code (``poppinace/fade``, ``FADE_H2L.py``: ``SemiShift.forward``
    passes ``conv2_bias`` to the stride-2 encoder convolution and to the decoder convolution)
    computes, and it is followed here on purpose. Since softmax ignores a constant, only the
    differences between the K^2 entries of b matter; they act, and train, twice as strongly as
    with one b (the gradient of b is the sum of both branches').

    The official code computes the encoder branch as four stride-2 convolutions of shifted
    copies of y; that equals a padding-1 3x3 convolution of y at full resolution, used here.
    Beyond the official code (which hard-codes x2 and square maps in its reshapes): any guide
    size H' >= H, W' >= W, with window centres (floor(i H / H'), floor(j W / W')).
    Init as the official release: compressors xavier-uniform with zero bias (mmcv
    ``xavier_init(distribution="uniform")``), W xavier-normal, b = 0, gate xavier-uniform
    with zero bias.
    Params: (C d + d) + C d + 9 d K^2 + K^2 + (C + 1) = 129 C + 14490 for d = 64, K = 5.
    Each compressor and the 3x3 bank are both linear: they run as one 3x3 conv of y (of x)
    where that is cheaper (C < d, :func:`~sapa.upsamplers.base.compressed_conv`).
    """

    name = "fade"
    guided = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2, kernel_size=5, embedding_dim=64):
        super().__init__(in_channels, guide_channels, scale_factor)
        if self.guide_channels != self.in_channels:
            raise ValueError(
                f"fade mixes y and x directly (g * y + (1 - g) * ...) and needs guide_channels == "
                f"in_channels, got in_channels={self.in_channels}, guide_channels={self.guide_channels}"
            )
        self.kernel_size = check_kernel_size(kernel_size)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        C, d, K = self.in_channels, self.embedding_dim, self.kernel_size
        self.compress_y = nn.Conv2d(C, d, 1)
        self.compress_x = nn.Conv2d(C, d, 1, bias=False)
        for conv in (self.compress_y, self.compress_x):
            nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(self.compress_y.bias)
        self.kernel_weight = nn.Parameter(torch.empty(K * K, d, 3, 3))
        self.kernel_bias = nn.Parameter(torch.zeros(K * K))
        nn.init.xavier_normal_(self.kernel_weight)
        self.gate = nn.Conv2d(C, 1, 1)
        nn.init.xavier_uniform_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def extra_repr(self):
        return super().extra_repr() + f", kernel_size={self.kernel_size}, embedding_dim={self.embedding_dim}"

    def kernels(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Normalised kernels (B, K^2, H', W') from x (B, C, H, W) and y (B, C, H', W')."""
        m_y = compressed_conv(y, self.compress_y, self.kernel_weight, self.kernel_bias, 1)
        m_x = compressed_conv(x, self.compress_x, self.kernel_weight, self.kernel_bias, 1)  # b again: 2b
        return torch.softmax(m_y + nearest_upsample_to(m_x, y.shape[-2:]), dim=1)

    def forward(self, x, y=None):
        size = self._output_size(x, y)
        g = torch.sigmoid(nearest_upsample_to(self.gate(x), size))
        return g * y + (1 - g) * reassemble(x, self.kernels(x, y), self.kernel_size)

    def uncounted_macs(self, x, y):
        Hq, Wq = self._output_size(x, y)
        B, C = x.shape[:2]
        return {
            "weighted_sum": B * C * self.kernel_size**2 * Hq * Wq,
            "gate": 2 * B * C * Hq * Wq,  # g * y and (1 - g) * carafe(x)
        }
