"""The SAPA family as upsamplers: SAPA-I/B/P/G (through :class:`sapa.SAPA`) and SAPA-D."""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import SAPA, _autocast
from ..windows import nearest_upsample_to, window_centres
from .base import Upsampler, _positive_int, reassemble

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


def _flop_counting() -> bool:
    """True inside ``torch.utils.flop_counter.FlopCounterMode`` (never under torch.compile)."""
    if torch.compiler.is_compiling():
        return False
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any("FlopCounterMode" in type(m).__name__ for m in _get_current_dispatch_mode_stack())


class _Splat(torch.autograd.Function):
    """The adjoint of bilinear sampling: weights (N, 1, H_o, W_o) at points ``grid``
    (N, H_o, W_o, 2) spread onto (N, 1, H, W) maps, ``size`` = (H, W) (``grid_sample``'s input
    gradient; zeros padding, align_corners=False), differentiable in the weights and the points
    (its backward is one ``grid_sample`` and one grid gradient)."""

    @staticmethod
    def forward(ctx, w, grid, size):
        ctx.save_for_backward(w, grid)
        dummy = w.new_zeros(()).expand(w.shape[0], 1, *size)
        return torch.ops.aten.grid_sampler_2d_backward(w, dummy, grid, 0, 0, False, [True, False])[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        w, grid = ctx.saved_tensors
        g = g.contiguous()
        gw = F.grid_sample(g, grid, mode="bilinear", padding_mode="zeros", align_corners=False) \
            if ctx.needs_input_grad[0] else None
        gg = torch.ops.aten.grid_sampler_2d_backward(w, g, grid, 0, 0, False, [False, True])[1] \
            if ctx.needs_input_grad[1] else None
        return gw, gg, None


def _window_dot(m: torch.Tensor, a: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Dot products of per-output-pixel vectors with the window around each pixel's parent
    (the free-size window path; integer ratios run :meth:`SAPADynamic._forward_patches`).

    Args:
        m: (B, M, H, W) low-res map.
        a: (B, G, M, H', W') vectors, H' >= H, W' >= W.
        kernel_size: odd K.

    Returns:
        (B, G, K*K, H', W'): ``<a[b, g, :, i, j], m[b, :, r + dy - R, c + dx - R]>`` at channel
        ``dy*K + dx``, (r, c) = (floor(i H / H'), floor(j W / W')), zeros outside the map.
    """
    B, M, H, W = m.shape
    Hq, Wq = a.shape[-2:]
    K = kernel_size
    U = F.unfold(m, K, padding=K // 2)  # (B, M K*K, H W)
    Uq = nearest_upsample_to(U.view(B, M * K * K, H, W), (Hq, Wq)).view(B, 1, M, K * K, Hq, Wq)
    return (a.unsqueeze(3) * Uq).sum(2)


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

    Computation (same function, other order; ``tests/test_upsamplers.py`` checks outputs and
    gradients against the definition above in float64): bilinear sampling is linear and the key
    a 1x1 conv, so <q_g, k_g(p)> = <W_{k,g}^T q_g, x_(p)> + <q_g, b_{k,g}> 1(p)
    (:meth:`folded_query`: C + 1 channels instead of G d). In eager mode, when every
    |offset| < R <= ``window_radius_max`` (3), each point's four bilinear corners lie in the
    (2R+1)^2 window around its parent: the similarities with that window (one small matmul per
    low-res pixel) and the bilinear weights on them give the logits, and the value is one window
    reassembly of x per group, with no per-point sampling. Otherwise (larger offsets,
    torch.compile/export) one ``grid_sample`` of [x_, 1] serves key and value. Under
    ``FlopCounterMode`` the definition itself runs (:mod:`sapa.complexity` counts it).
    """

    name = "sapa-d"
    guided = True
    #: the window path runs when every |offset| < R <= this (eager mode); 0 turns it off
    window_radius_max = 3

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

    def sampling_points(self, x_: torch.Tensor, size, offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Points (B, G, P, H', W', 2): the parent's centre (x, y) plus the learned offsets
        (``offsets``: those of :meth:`offsets`, when already computed)."""
        H, W = x_.shape[-2:]
        rows = window_centres(size[0], H, x_.device).to(x_.dtype)
        cols = window_centres(size[1], W, x_.device).to(x_.dtype)
        centre = torch.stack(torch.broadcast_tensors(cols.view(1, -1), rows.view(-1, 1)), dim=-1)  # (H', W', 2)
        return centre + (self.offsets(x_, size) if offsets is None else offsets)

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

    def folded_query(self, y_: torch.Tensor) -> torch.Tensor:
        """The query folded through the key conv: (B, G, C + b, H', W') from y_ (B, C_y, H', W').

        With k = W_k x + b_k, bilinear sampling S (linear, zeros outside) gives
        <q_g, S k_g(p)> = <W_{k,g}^T q_g, S x(p)> + <b_{k,g}, q_g> S 1(p): channel c < C is
        (W_{k,g}^T q_g)_c, channel C (with ``qkv_bias``) is <b_{k,g}, q_g>; both are linear in
        y_, so they are one 1x1 conv of y_ whose weights are products of the q and k convs'.
        """
        weight, bias = self._folded_weights()
        a = F.conv2d(y_, weight[:, :, None, None], bias)
        return a.view(a.shape[0], self.groups, -1, *a.shape[-2:])

    def _folded_weights(self):
        """Weight (G (C + b), C_y) and bias (G (C + b),) or None of :meth:`folded_query`."""
        G, d, C = self.groups, self.embedding_dim, self.in_channels
        wk = self.k.weight.view(G, d, C).transpose(1, 2)  # (G, C, d)
        if self.qkv_bias:
            wk = torch.cat([wk, self.k.bias.view(G, 1, d)], dim=1)  # (G, C + 1, d)
        wq = self.q.weight.view(G, d, -1)  # (G, d, C_y)
        weight = torch.matmul(wk, wq).reshape(-1, wq.shape[-1])  # (G (C + b), C_y)
        bias = torch.matmul(wk, self.q.bias.view(G, d, 1)).reshape(-1) if self.qkv_bias else None
        return weight, bias

    def forward(self, x, y=None):
        Hq, Wq = self._output_size(x, y)
        if _flop_counting():  # sapa.complexity counts the official design's arithmetic
            return self._forward_definition(x, y)
        x_ = self.norm_x(x) if self.norm else x
        y_ = self.norm_y(y) if self.norm else y
        H, W = x.shape[-2:]
        if _autocast(x) or x.dtype not in (torch.float32, torch.float64):
            # mixed dtypes (grid_sample runs in float32) or half precision: the window path's
            # normalised coordinates on stacked windows would lose the points' precision
            return self._forward_sampled(x, x_, y_, self.offsets(x_, (Hq, Wq)))
        if H and W and Hq % H == 0 and Wq % W == 0 and not torch.compiler.is_compiling():
            sh, sw = Hq // H, Wq // W
            # with a reordered conv (see _pixel_major_offsets) the window path recomputes the
            # offsets already normalised, so the ones that pick R need no graph
            folded = self.high_offset and sh == sw == self.scale_factor
            with torch.no_grad() if folded else contextlib.nullcontext():
                o = self._pixel_major_offsets(x_, sh, sw)  # (B, H, W, sh, sw, G, P, 2)
            R = self._window_radius(o)
            if R:
                return self._forward_patches(x, x_, y_, None if folded else o, R, sh, sw)
            if folded:
                o = self._pixel_major_offsets(x_, sh, sw)
            off = o.permute(0, 5, 6, 1, 3, 2, 4, 7).reshape(x.shape[0], self.groups, self.points, Hq, Wq, 2)
        else:
            off = self.offsets(x_, (Hq, Wq))  # (B, G, P, H', W', 2)
            R = self._window_radius(off)
            if R:
                return self._forward_window(x, x_, y_, off, R)
        return self._forward_sampled(x, x_, y_, off)

    def _pixel_major_offsets(self, x_: torch.Tensor, sh: int, sw: int, scale=None, shift=None) -> torch.Tensor:
        """:meth:`offsets` for H' = sh H, W' = sw W, laid out (B, H, W, sh, sw, G, P, 2): output
        pixel (h sh + i, w sw + j) at [:, h, w, i, j]. With ``high_offset`` and sh = sw = s the
        conv's rows are reordered instead of the result (no pixel shuffle, no copy), and
        ``scale`` (2,) and ``shift`` (sh sw G, 2) fold ``o * scale + shift`` into its weights."""
        B, C, H, W = x_.shape
        G, P, s = self.groups, self.points, self.scale_factor
        if self.high_offset and sh == sw == s:
            wt = self.offset.weight.view(G, P, 2, s, s, C).permute(3, 4, 0, 1, 2, 5)  # (s, s, G, P, 2, C)
            b = self.offset.bias
            b = b.view(G, P, 2, s, s).permute(3, 4, 0, 1, 2) if b is not None else None
            if scale is not None:
                wt = wt * scale.view(2, 1)
                shift = shift.view(s, s, G, 1, 2)
                b = shift.expand(s, s, G, P, 2) if b is None else torch.addcmul(shift, b, scale)
            b = b.reshape(-1) if b is not None else None
            return F.linear(x_.permute(0, 2, 3, 1), wt.reshape(-1, C), b).view(B, H, W, s, s, G, P, 2)
        if scale is not None:
            raise ValueError("scale/shift are folded only with high_offset and sh = sw = scale_factor")
        off = self.offsets(x_, (sh * H, sw * W))  # (B, G, P, H', W', 2)
        return off.reshape(B, G, P, H, sh, W, sw, 2).permute(0, 3, 5, 4, 6, 1, 2, 7).contiguous()

    def _forward_definition(self, x, y):
        """The official computation: keys (G d channels) and values read by ``grid_sample``."""
        B, C = x.shape[:2]
        w, pts = self._weights(x, y)
        vs = deform_sample(x, pts, self.groups)  # (B, G, C/G, P, H', W')
        return (w.unsqueeze(2) * vs).sum(3).reshape(B, C, *y.shape[-2:])

    def _window_radius(self, off: torch.Tensor) -> int:
        """R of the window path (every |offset| < R <= ``window_radius_max``), or 0 for the
        sampling path (torch.compile/export, empty or non-finite offsets, larger offsets)."""
        if torch.compiler.is_compiling() or off.numel() == 0 or self.window_radius_max < 1:
            return 0
        m = float(off.detach().abs().max())
        if not math.isfinite(m) or m >= self.window_radius_max:
            return 0
        return int(m) + 1

    def _key_map(self, x, x_):
        """The map whose bilinear samples the key reads: x_ (C) and, with ``qkv_bias``, ones."""
        return torch.cat([x_, torch.ones_like(x[:, :1])], dim=1) if self.qkv_bias else x_

    def _forward_sampled(self, x, x_, y_, off):
        """grid_sample path (any offsets): one bilinear read per point serves key and value."""
        B, C, H, W = x.shape
        _, G, P, Hq, Wq, _ = off.shape
        c = C // G
        # the key is a 1x1 conv of x_, so <q_g, k_g(p)> = <a_g, [x_(p), 1(p)]> (folded_query);
        # the map holds x_ (C), the ones channel (qkv_bias: its sample is the in-bounds mass
        # that multiplies the key bias) and, with norm, the raw x (the value)
        m = self._key_map(x, x_)
        nk = m.shape[1]
        if self.norm:
            m = torch.cat([m, x], dim=1)
        pts = self.sampling_points(x_, (Hq, Wq), off)
        size = torch.tensor([W, H], dtype=pts.dtype, device=pts.device)
        grid = (2 * pts + 1) / size - 1  # align_corners=False, as deform_sample
        S = F.grid_sample(m, grid.reshape(B, G * P * Hq, Wq, 2), mode="bilinear", padding_mode="zeros",
                          align_corners=False).view(B, m.shape[1], G, P, Hq, Wq)  # (B, M, G, P, H', W')
        a = self.folded_query(y_)  # (B, G, nk, H', W')
        logits = (S[:, :nk] * a.transpose(1, 2).unsqueeze(3)).sum(1)  # (B, G, P, H', W')
        w = torch.softmax(logits, dim=2)
        v0 = nk if self.norm else 0  # the value: the appended raw x with norm, else x_ = x
        # group g's value: channels [g c, (g + 1) c) of the samples at group g's points
        vs = S[:, v0:v0 + C].reshape(B, G, c, G, P, Hq, Wq).diagonal(dim1=1, dim2=3)  # (B, c, P, H', W', G)
        out = (vs * w.permute(0, 2, 3, 4, 1).unsqueeze(1)).sum(2)  # (B, c, H', W', G)
        return out.permute(0, 4, 1, 2, 3).reshape(B, C, Hq, Wq)

    def _forward_patches(self, x, x_, y_, o, R: int, sh: int, sw: int):
        """Window path for integer ratios, exact when every |offset| < R, in low-res-pixel-major
        layout (offsets ``o`` from :meth:`_pixel_major_offsets`): for each output pixel and
        group, the similarities with the (2R+1)^2 window around its parent form a K x K map
        (one small matmul per low-res pixel); bilinear sampling of that map at the group's P
        points (``grid_sample``, one channel) gives the logits; the softmax weights spread back
        onto the window (:class:`_Splat`) weight the window's pixels of x (the value)."""
        B, C, H, W = x.shape
        G, P = self.groups, self.points
        L, T, c, K = H * W, sh * sw, C // G, 2 * R + 1
        m = self._key_map(x, x_)
        nk = m.shape[1]
        # folded query per (low-res pixel, child, group): (B, L, T G, nk)
        wf, bf = self._folded_weights()
        y_pm = y_.reshape(B, y_.shape[1], H, sh, W, sw).permute(0, 2, 4, 3, 5, 1)  # (B, H, W, sh, sw, C_y)
        a = F.linear(y_pm, wf, bf).view(B, L, T * G, nk)
        U = F.unfold(m, K, padding=R).view(B, nk, K * K, L).permute(0, 3, 1, 2)  # (B, L, nk, K*K)
        corr = torch.matmul(a, U)  # (B, L, T G, K*K): the window similarities
        # per low-res pixel, one (T G K, K) map: the T G windows stacked vertically (a free view
        # of corr). A point in window pixels (the parent at R) never leaves its window (|o| < R),
        # so sampling the stack reads its own window only; one image per low-res pixel keeps the
        # normalised coordinates as precise as the definition's (align_corners=False)
        TG = T * G
        scale = x.new_tensor([2.0 / K, 2.0 / (TG * K)])
        tile = torch.arange(TG, device=x.device, dtype=x.dtype)
        shift = torch.stack([torch.full_like(tile, (2 * R + 1) / K - 1), (2 * (tile * K + R) + 1) / (TG * K) - 1], -1)
        if o is None:  # o * scale + shift folded into the offset conv
            grid = self._pixel_major_offsets(x_, sh, sw, scale, shift).view(B * L, 1, TG * P, 2)
        else:
            grid = torch.addcmul(shift.view(TG, 1, 2), o.reshape(B * L, TG, P, 2), scale).view(B * L, 1, TG * P, 2)
        logits = F.grid_sample(corr.view(B * L, 1, TG * K, K), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)  # (B L, 1, 1, T G P)
        w = torch.softmax(logits.view(B * L * TG, P), dim=1).view(B * L, 1, 1, TG * P)
        kern = _Splat.apply(w, grid, (TG * K, K)).view(B, L, T, G, K * K)  # each window pixel's weight
        X = F.unfold(x, K, padding=R).view(B, G, c, K * K, L).permute(0, 4, 1, 3, 2)  # (B, L, G, K*K, c)
        out = torch.matmul(kern.transpose(2, 3), X)  # (B, L, G, T, c)
        return out.view(B, H, W, G, sh, sw, c).permute(0, 3, 6, 1, 4, 2, 5).reshape(B, C, sh * H, sw * W)

    def _forward_window(self, x, x_, y_, off, R: int):
        """Window path, exact when every |offset| < R: a point's four bilinear corners lie in the
        (2R+1)^2 window around its parent, so the similarities with the window's pixels
        (a SAPA-like local dot product) and bilinear weights on them replace the per-point
        sampling; the value is one window reassembly of x per group."""
        B, C, H, W = x.shape
        _, G, P, Hq, Wq, _ = off.shape
        c, K = C // G, 2 * R + 1
        a = self.folded_query(y_)  # (B, G, nk, H', W')
        corr = _window_dot(self._key_map(x, x_), a, K).flatten(3)  # (B, G, K*K, H' W')
        # bilinear corners of each point in window coordinates (as grid_sample: floor, then
        # the fractional part carries the gradient with respect to the offset)
        ox, oy = off[..., 0], off[..., 1]  # (B, G, P, H', W')
        x0, y0 = ox.detach().floor(), oy.detach().floor()
        fx, fy = ox - x0, oy - y0
        base = ((y0 + R) * K + (x0 + R)).long()
        idx = torch.stack([base, base + 1, base + K, base + K + 1], dim=3).view(B, G, P * 4, Hq * Wq)
        bil = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=3)  # (B, G, P, 4, H', W')
        logits = (torch.gather(corr, 2, idx).view(B, G, P, 4, Hq, Wq) * bil).sum(3)  # (B, G, P, H', W')
        w = torch.softmax(logits, dim=2)
        # the value: each window pixel's total weight, then one reassembly per group
        kern = torch.zeros_like(corr).scatter_add(2, idx, (bil * w.unsqueeze(3)).view(B, G, P * 4, Hq * Wq))
        out = reassemble(x.reshape(B * G, c, H, W), kern.view(B * G, K * K, Hq, Wq), K)
        return out.view(B, C, Hq, Wq)

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
