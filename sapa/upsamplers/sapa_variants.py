"""The SAPA family as upsamplers: SAPA-I/B/P/G (through :class:`sapa.SAPA`) and SAPA-D."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import SAPA
from ..windows import window_centres
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


class SAPADynamic(Upsampler):
    """SAPA-D: SAPA with dynamic selection of the points it compares with (our design).

    x (B, C, H, W), y (B, C_y, H', W') -> (B, C, H', W') for any H' >= H, W' >= W.

    Pre-processing as SAPA-B: q = Linear(C_y -> d)(LN(y)) (B, d, H', W'),
    k = Linear(C -> d)(LN(x)) (B, d, H, W), value v = raw x. Channels of q, k and v are
    split into G groups (G = 4; d and C must be divisible by G).

    Selection: for output pixel l' = (i, j) with window centre l = (floor(i H / H'), floor(j W / W'))
    and group g, the P = 9 sampling points (low-res pixel coordinates, pixel centres at
    integers) are

        p_{g,n}(l') = l + r_n + offset_scale * o_{g,n}(l'),   r_n in {-1, 0, 1}^2 (3 x 3 lattice),
        o(l') = Conv1x1(d -> 2 G P)(q)(l')                    learned offsets from the query,

    (offset conv init normal(std=0.001), zero bias; offset_scale = 0.25, as in DySample).
    Keys and values are read there by bilinear ``grid_sample`` (zeros outside the map,
    align_corners=False), and

        s_{g,n} = <q_g(l'), k_g(p_{g,n})>,   w = softmax_n(s),   out_g(l') = sum_n w_{g,n} v_g(p_{g,n}).

    With zero offsets and G = 1 this is exactly SAPA-B with K = 3 (integer points are read
    exactly, and points outside the map have key 0 and value 0 like SAPA's zero padding).
    The official extension uses GroupNorm(32) in its base module; LayerNorm is kept here so
    that SAPA-D differs from SAPA-B only in the selection.
    Params: 2 C_y + 2 C (LN) + (C_y + 1) d + (C + 1) d + (d + 1) 2 G P.
    """

    name = "sapa-d"
    guided = True

    def __init__(
        self, in_channels, guide_channels=None, scale_factor=2, embedding_dim=32, groups=4, points=9, offset_scale=0.25
    ):
        super().__init__(in_channels, guide_channels, scale_factor)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        self.groups = _positive_int("groups", groups)
        self.points = _positive_int("points", points)
        r = math.isqrt(self.points)
        if r * r != self.points or r % 2 == 0:
            raise ValueError(f"points must be the square of an odd number (9, 25, ...), got {points}")
        for nm, c in (("embedding_dim", self.embedding_dim), ("in_channels", self.in_channels)):
            if c % self.groups:
                raise ValueError(f"{nm}={c} must be divisible by groups={groups}")
        self.offset_scale = float(offset_scale)
        Cy, C, d, G, P = self.guide_channels, self.in_channels, self.embedding_dim, self.groups, self.points
        self.norm_y = nn.LayerNorm(Cy)
        self.norm_x = nn.LayerNorm(C)
        self.q_y = nn.Linear(Cy, d)
        self.k_x = nn.Linear(C, d)
        for lin in (self.q_y, self.k_x):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.offset = nn.Conv2d(d, 2 * G * P, 1)
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        R = r // 2
        lat = torch.arange(-R, R + 1, dtype=torch.float32)
        ly, lx = torch.meshgrid(lat, lat, indexing="ij")
        self.register_buffer("lattice", torch.stack([lx.flatten(), ly.flatten()], dim=-1), persistent=False)  # (P, 2)

    def extra_repr(self):
        return super().extra_repr() + (
            f", embedding_dim={self.embedding_dim}, groups={self.groups}, points={self.points}, "
            f"offset_scale={self.offset_scale}"
        )

    def query_key(self, x, y):
        """q (B, d, H', W') and k (B, d, H, W) as in SAPA-B."""
        q = self.q_y(self.norm_y(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        k = self.k_x(self.norm_x(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return q, k

    def sampling_points(self, q: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Low-res (x, y) coordinates of the sampling points, (B, G, P, H', W', 2)."""
        B, _, Hq, Wq = q.shape
        G, P = self.groups, self.points
        off = self.offset(q).view(B, G, P, 2, Hq, Wq).permute(0, 1, 2, 4, 5, 3) * self.offset_scale
        rows = window_centres(Hq, H, q.device).to(q.dtype).view(Hq, 1).expand(Hq, Wq)
        cols = window_centres(Wq, W, q.device).to(q.dtype).view(1, Wq).expand(Hq, Wq)
        base = torch.stack([cols, rows], dim=-1)  # (H', W', 2)
        lat = self.lattice.to(q.dtype).view(1, 1, P, 1, 1, 2)
        return base + lat + off

    def _select(self, x, y):
        Hq, Wq = y.shape[-2:]
        B, C, H, W = x.shape
        G, P, d = self.groups, self.points, self.embedding_dim
        q, k = self.query_key(x, y)
        pts = self.sampling_points(q, H, W)
        scale = torch.tensor([W, H], dtype=x.dtype, device=x.device)
        grid = (2 * pts + 1) / scale - 1  # align_corners=False normalisation
        grid = grid.reshape(B * G, P * Hq, Wq, 2)

        def sample(t, c):
            s = F.grid_sample(t.reshape(B * G, c, H, W), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            return s.view(B, G, c, P, Hq, Wq)

        ks = sample(k, d // G)
        logits = (q.view(B, G, d // G, 1, Hq, Wq) * ks).sum(2)  # (B, G, P, H', W')
        return torch.softmax(logits, dim=2), pts, sample

    def kernels(self, x: torch.Tensor, y: torch.Tensor):
        """Weights (B, G, P, H', W') over the sampled points and the points (B, G, P, H', W', 2)."""
        self._output_size(x, y)
        w, pts, _ = self._select(x, y)
        return w, pts

    def forward(self, x, y=None):
        Hq, Wq = self._output_size(x, y)
        B, C = x.shape[:2]
        w, _, sample = self._select(x, y)
        vs = sample(x, C // self.groups)  # (B, G, C/G, P, H', W')
        out = (w.unsqueeze(2) * vs).sum(3)  # (B, G, C/G, H', W')
        return out.reshape(B, C, Hq, Wq)

    def uncounted_macs(self, x, y):
        Hq, Wq = self._output_size(x, y)
        B, C = x.shape[:2]
        n = B * self.points * Hq * Wq
        return {
            "sampling": 4 * n * (self.embedding_dim + C),  # bilinear reads of keys and values
            "similarity": n * self.embedding_dim,
            "weighted_sum": n * C,
        }
