"""A2U (Dai et al. 2021): affinity-aware upsampling."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_kernel_size
from .base import Upsampler, _positive_int, reassemble

__all__ = ["A2U"]


class A2U(Upsampler):
    """A2U (Dai et al. 2021): affinity-aware upsampling, kernels from the encoder feature.

    x (B, C, H, W), y (B, C_y, sH, sW) -> (B, C, sH, sW).

    kernel generation on y (the official "share" setting, d = 1, one group):
      u = GN-LeakyReLU(y (*)_s U), v = GN-LeakyReLU(y (*)_s V), where U, V are per-sample
          k_e x k_e filters (k_e = 3s = 6), U = Conv1x1(C_y -> 1)(AdaptiveAvgPool(k_e)(y)),
          shared by all channels and applied with stride s (padding (k_e - s)/2);
      a = sum_c u_c v_c / sqrt(C_y)                       (B, 1, H, W) affinity;
      P = Conv1x1(C_y -> s^2 K^2)(AdaptiveAvgPool(1)(y)) a per-sample 1x1 conv;
      kernels = softmax_K^2(sigmoid(pixel_shuffle(a * P))), K = 3;
    feature assembly: :func:`reassemble` of x around (i // s, j // s).
    GroupNorm uses gcd(32, C_y) groups (32 in the official code, which needs C_y % 32 == 0:
    other channel counts go beyond it). With K = 1 the official code takes the sigmoid alone
    (a softmax over one entry would be constant 1); so does this module.
    Init as the official code (``dongdong93/a2u_matting``, ``_initialize_weights`` with its
    default config ``weight_init="xavier_normal"``, ``activation="leaky_relu"``,
    ``activation_param=0.01``): every convolution xavier-normal with gain
    ``calculate_gain("leaky_relu", 0.01)`` = sqrt(2 / (1 + 0.01^2)), zero biases; GroupNorm
    weight 1, bias 0. Official keys (``bconv_U.1``, ``bconv_V.1``, ``bnu.0``, ``bnv.0``,
    ``bconv_UP.1``) map to ``filter_u``, ``filter_v``, ``norm_u``, ``norm_v``, ``proj``; the
    official module's downsampling branch ``bconv_DP`` (A2D, used by the encoder) has no
    counterpart here (:func:`sapa.upsamplers.load_official_state_dict`).
    Params: 2 (C_y + 1) + 4 C_y (GN) + (s^2 K^2)(C_y + 1)  (= 36 C_y + 36 + 6 C_y + 2 at s=2, K=3).
    """

    name = "a2u"
    guided = True
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2, kernel_size=3, encoder_kernel_size=None):
        super().__init__(in_channels, guide_channels, scale_factor)
        s, Cy = self.scale_factor, self.guide_channels
        self.kernel_size = check_kernel_size(kernel_size)
        ke = 3 * s if encoder_kernel_size is None else _positive_int("encoder_kernel_size", encoder_kernel_size)
        if ke < s or (ke - s) % 2:
            raise ValueError(
                f"encoder_kernel_size - scale_factor must be even and >= 0, got "
                f"encoder_kernel_size={ke}, scale_factor={s}"
            )
        self.encoder_kernel_size = ke
        self.filter_u = nn.Conv2d(Cy, 1, 1)
        self.filter_v = nn.Conv2d(Cy, 1, 1)
        groups = math.gcd(32, Cy)
        self.norm_u = nn.GroupNorm(groups, Cy)
        self.norm_v = nn.GroupNorm(groups, Cy)
        self.proj = nn.Conv2d(Cy, s * s * self.kernel_size**2, 1)
        gain = nn.init.calculate_gain("leaky_relu", 0.01)
        for conv in (self.filter_u, self.filter_v, self.proj):
            nn.init.xavier_normal_(conv.weight, gain=gain)
            nn.init.zeros_(conv.bias)

    def extra_repr(self):
        return super().extra_repr() + (
            f", kernel_size={self.kernel_size}, encoder_kernel_size={self.encoder_kernel_size}"
        )

    def _per_sample_filter(self, y: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        """Apply filt (B, 1, k, k), shared by all channels of sample b, to y with stride s."""
        B, Cy, Hq, Wq = y.shape
        s, ke = self.scale_factor, self.encoder_kernel_size
        w = filt.repeat_interleave(Cy, dim=0)  # (B Cy, 1, k, k)
        out = F.conv2d(y.reshape(1, B * Cy, Hq, Wq), w, stride=s, padding=(ke - s) // 2, groups=B * Cy)
        return out.view(B, Cy, out.shape[-2], out.shape[-1])

    def kernels(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised kernels (B, K^2, sH, sW) from the guide y (B, C_y, sH, sW)."""
        ke = self.encoder_kernel_size
        fu = self.filter_u(F.adaptive_avg_pool2d(y, ke))  # (B, 1, ke, ke)
        fv = self.filter_v(F.adaptive_avg_pool2d(y, ke))
        u = F.leaky_relu(self.norm_u(self._per_sample_filter(y, fu)))
        v = F.leaky_relu(self.norm_v(self._per_sample_filter(y, fv)))
        a = (u * v).sum(1, keepdim=True) / math.sqrt(y.shape[1])  # (B, 1, H, W)
        p = self.proj(F.adaptive_avg_pool2d(y, 1))  # (B, s^2 K^2, 1, 1)
        m = F.pixel_shuffle(a * p, self.scale_factor)
        if self.kernel_size == 1:  # the official code: sigmoid only
            return torch.sigmoid(m)
        return torch.softmax(torch.sigmoid(m), dim=1)

    def forward(self, x, y=None):
        self._output_size(x, y)
        return reassemble(x, self.kernels(y), self.kernel_size)

    def uncounted_macs(self, x, y):
        Hq, Wq = self._output_size(x, y)
        B, C, H, W = x.shape
        s2K2 = self.scale_factor**2 * self.kernel_size**2
        return {
            "weighted_sum": B * C * self.kernel_size**2 * Hq * Wq + B * self.guide_channels * H * W,
            "gate": B * s2K2 * H * W,  # a * P: the per-sample 1x1 conv of a one-channel map
        }
