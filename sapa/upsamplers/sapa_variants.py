"""The SAPA family as upsamplers: SAPA-I/B/P/G (through :class:`sapa.SAPA`) and SAPA-D."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import SAPA
from ..windows import nearest_upsample_to, window_centres
from .base import Upsampler, _positive_int

__all__ = ["SAPAUpsampler", "SAPADynamic"]


class SAPAUpsampler(Upsampler):
    """SAPA-I/B/P/G through :class:`sapa.SAPA` (LayerNorm, projections, gate; value = raw x).

    x (B, C, H, W), y (B, C_y, H', W') -> (B, C, H', W') for any H' >= H, W' >= W.
    Options are those of :class:`sapa.SAPA` (kernel_size=5, embedding_dim=32,
    normalization="softmax", padding="zeros", backend="auto").
    Params: LN 2 C_y + 2 C, plus I: 0; B: (C_y + 1) d + (C + 1) d; P: (C_y + C + 1) d + (C + 1) d;
    G: (C_y + 1) d + 2 (C + 1) d + (C + 1).
    """

    guided = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2, variant="B", **options):
        super().__init__(in_channels, guide_channels, scale_factor)
        self.sapa = SAPA(self.in_channels, self.guide_channels, variant=variant, **options)
        self.variant = variant
        self.name = f"sapa-{variant.lower()}"

    def forward(self, x, y=None):
        self._output_size(x, y)
        return self.sapa(x, y)

    def uncounted_macs(self, x, y):
        Hq, Wq = self._output_size(x, y)
        if self.variant == "G":  # g * q_y + (1 - g) * q_x
            return {"gate": 2 * x.shape[0] * self.sapa.embedding_dim * Hq * Wq}
        return {}


def deform_sample(t: torch.Tensor, points: torch.Tensor, groups: int) -> torch.Tensor:
    """Bilinear samples of a low-res map at per-output-pixel points, per channel group.

    Args:
        t: (B, G*c, H, W) map; group g is channels [g*c, (g+1)*c).
        points: (B, G, P, H', W', 2) sampling points (x, y) in low-res pixel coordinates
            (pixel (i, j) has its centre at (j, i)).
        groups: G.

    Returns:
        (B, G, c, P, H', W'): ``grid_sample`` (bilinear, zeros outside the map,
        align_corners=False) of group g of ``t`` at the points of group g.
    """
    B, Gc, H, W = t.shape
    _, G, P, Hq, Wq, _ = points.shape
    c = Gc // groups
    size = torch.tensor([W, H], dtype=points.dtype, device=points.device)
    grid = (2 * points + 1) / size - 1  # align_corners=False: pixel j spans [j, j+1) -> centre j + 0.5
    out = F.grid_sample(t.reshape(B * G, c, H, W), grid.reshape(B * G, P * Hq, Wq, 2),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(B, G, c, P, Hq, Wq)


class SAPADynamic(Upsampler):
    """SAPA-D, the 2023 extension's deformable SAPA (``tiny-smart/sapa``, ``sapa_deform.py``).

    x (B, C, H, W), y (B, C_y, H', W') -> (B, C, H', W') for any H' >= H, W' >= W.

    With G groups (4), P points (9) and d dimensions per group (32):

        q   = Conv1x1(C_y -> G d)(y)                       (B, G d, H', W')  query
        k   = Conv1x1(C -> G d)(x)                         (B, G d, H, W)    key
        o   = PixelShuffle_s(Conv1x1(C -> G P 2 s^2)(x))   (B, G P 2, sH, sW) offsets
        p_{g,n}(i, j) = (c_j, c_i) + o_{g,n}(i, j)         c = the low-res parent (i // s, j // s)
        s_{g,n} = <q_g(i, j), k_g(p_{g,n})>,  w = softmax_n(s),  out_g(i, j) = sum_n w_{g,n} x_g(p_{g,n})

    Keys and values (value = raw x, channel group g) are read at the points by bilinear
    ``grid_sample`` (zeros outside the map, align_corners=False); offsets are in low-res
    pixels, added to the parent's centre, with no fixed grid: at init (conv weights
    normal(std=0.02), zero bias) every point lies near the parent. Offset channels are ordered
    (group, point, xy) after the pixel shuffle, as in the official ``deform_qk`` /
    ``deform_av`` (``deformsapa/forward_check.py`` gives their pure-PyTorch definition, which
    this module computes with one ``grid_sample`` per map instead of the CUDA kernels, so it
    runs on any device). No 1/sqrt(d) scaling. Options as the official module:
    ``qkv_bias`` (biases of the three convs), ``high_offset=False`` (offsets
    Conv1x1(C -> G P 2) at low resolution, nearest-upsampled), ``norm=True`` (GroupNorm on y
    and on x before the projections and the offsets; the value stays raw x).

    Beyond the official code: any output size H' >= H, W' >= W (the official module is tied to
    H' = sH): the offsets at (sH, sW) are nearest-resampled to (H', W'), which keeps
    output pixel (i, j) with the parent (floor(i H / H'), floor(j W / W')), SAPA's window
    centre; for H' = sH it is the identity. GroupNorm uses gcd(32, channels) groups (the
    official GroupNorm(32) needs multiples of 32).
    Params: (C_y + 1) G d + (C + 1) G d + (C + 1) 2 G P s^2 (biases with ``qkv_bias``),
    + 2 C_y + 2 C with ``norm``.
    """

    name = "sapa-d"
    guided = True

    def __init__(
        self, in_channels, guide_channels=None, scale_factor=2, embedding_dim=32, groups=4, points=9,
        qkv_bias=True, high_offset=True, norm=False,
    ):
        super().__init__(in_channels, guide_channels, scale_factor)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        self.groups = _positive_int("groups", groups)
        self.points = _positive_int("points", points)
        if self.in_channels % self.groups:
            raise ValueError(f"in_channels={self.in_channels} must be divisible by groups={groups}")
        self.qkv_bias, self.high_offset, self.norm = bool(qkv_bias), bool(high_offset), bool(norm)
        Cy, C, d, G, P, s = (self.guide_channels, self.in_channels, self.embedding_dim, self.groups,
                             self.points, self.scale_factor)
        if self.norm:
            self.norm_y = nn.GroupNorm(math.gcd(32, Cy), Cy)
            self.norm_x = nn.GroupNorm(math.gcd(32, C), C)
        self.q = nn.Conv2d(Cy, G * d, 1, bias=self.qkv_bias)
        self.k = nn.Conv2d(C, G * d, 1, bias=self.qkv_bias)
        self.offset = nn.Conv2d(C, G * P * 2 * (s * s if self.high_offset else 1), 1, bias=self.qkv_bias)
        for conv in (self.q, self.k, self.offset):
            nn.init.normal_(conv.weight, std=0.02)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def extra_repr(self):
        return super().extra_repr() + (
            f", embedding_dim={self.embedding_dim}, groups={self.groups}, points={self.points}, "
            f"qkv_bias={self.qkv_bias}, high_offset={self.high_offset}, norm={self.norm}"
        )

    def query_key(self, x, y):
        """q (B, G d, H', W') from y, k (B, G d, H, W) from x, and the offset input (x or GN(x))."""
        x_ = self.norm_x(x) if self.norm else x
        y_ = self.norm_y(y) if self.norm else y
        return self.q(y_), self.k(x_), x_

    def offsets(self, x_: torch.Tensor, size) -> torch.Tensor:
        """Learned offsets (B, G, P, H', W', 2), (x, y) in low-res pixels, from x_ (B, C, H, W)."""
        B = x_.shape[0]
        o = self.offset(x_)
        if self.high_offset:
            o = F.pixel_shuffle(o, self.scale_factor)  # (B, G P 2, sH, sW)
        o = nearest_upsample_to(o, size)  # identity for H' = sH with high_offset
        return o.view(B, self.groups, self.points, 2, size[0], size[1]).permute(0, 1, 2, 4, 5, 3)

    def sampling_points(self, x_: torch.Tensor, size) -> torch.Tensor:
        """Points (B, G, P, H', W', 2): the parent's centre (x, y) plus the learned offsets."""
        H, W = x_.shape[-2:]
        rows = window_centres(size[0], H, x_.device).to(x_.dtype)
        cols = window_centres(size[1], W, x_.device).to(x_.dtype)
        centre = torch.stack(torch.broadcast_tensors(cols.view(1, -1), rows.view(-1, 1)), dim=-1)  # (H', W', 2)
        return centre + self.offsets(x_, size)

    def _weights(self, x, y):
        size = tuple(y.shape[-2:])
        B = x.shape[0]
        G, d = self.groups, self.embedding_dim
        q, k, x_ = self.query_key(x, y)
        pts = self.sampling_points(x_, size)
        ks = deform_sample(k, pts, G)  # (B, G, d, P, H', W')
        logits = (q.view(B, G, d, 1, *size) * ks).sum(2)  # (B, G, P, H', W')
        return torch.softmax(logits, dim=2), pts

    def kernels(self, x: torch.Tensor, y: torch.Tensor):
        """Weights (B, G, P, H', W') of the sampled points and the points (B, G, P, H', W', 2)."""
        self._output_size(x, y)
        return self._weights(x, y)

    def forward(self, x, y=None):
        Hq, Wq = self._output_size(x, y)
        B, C = x.shape[:2]
        w, pts = self._weights(x, y)
        vs = deform_sample(x, pts, self.groups)  # (B, G, C/G, P, H', W')
        return (w.unsqueeze(2) * vs).sum(3).reshape(B, C, Hq, Wq)

    def uncounted_macs(self, x, y):
        Hq, Wq = self._output_size(x, y)
        B, C = x.shape[:2]
        n = B * self.points * Hq * Wq
        Gd = self.groups * self.embedding_dim
        return {
            "sampling": 4 * n * (Gd + C),  # bilinear reads of keys and values
            "similarity": n * Gd,
            "weighted_sum": n * C,
        }
