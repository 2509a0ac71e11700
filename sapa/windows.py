"""Window geometry shared by every backend: the window centre of each output pixel.

Output pixel (i, j) of an (H', W') output has its K x K window centred on the low-res pixel
(floor(i*H/H'), floor(j*W/W')). This module holds that rule and the nearest-neighbour
upsampling that uses the same rule.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from ._checks import check_size, in_onnx_export

__all__ = ["window_centres", "nearest_upsample_to", "max_per_centre"]


def window_centres(n_out: int, n_in: int, device=None) -> torch.Tensor:
    """Low-res index of the window centre of each of ``n_out`` output rows: floor(i*n_in/n_out).

    Returns a (n_out,) int64 tensor. Equals ``i // s`` when ``n_out = s * n_in``.
    """
    i = torch.arange(n_out, device=device, dtype=torch.int64)
    return torch.div(i * n_in, n_out, rounding_mode="floor")


def max_per_centre(n_out: int, n_in: int) -> int:
    """Most output rows sharing one window centre: max_r #{i : floor(i*n_in/n_out) == r}.

    Equals ceil(n_out / n_in) for n_out >= n_in >= 1 (plain integer arithmetic, no tensor).
    """
    return -(-n_out // n_in)


def nearest_upsample_to(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling (B, C, H, W) -> (B, C, H', W') with SAPA's centre rule.

    Output pixel (i, j) copies x[..., floor(i*H/H'), floor(j*W/W')], exactly the window centre
    used by :func:`sapa.sapa_upsample` (``F.interpolate(mode="nearest")`` can differ by one
    pixel for some sizes because it works in floating point). ``size`` is a pair of
    positive ints (any integer type).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise TypeError(f"x must be a 4-d tensor (B, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    size = check_size("size", size)
    B, C, H, W = x.shape
    # integer ratios: a broadcast copy (eager only: under torch.compile the test on the sizes
    # would guard dynamic shapes and recompile; the gather below is one graph for every size)
    if not torch.compiler.is_compiling() and H > 0 and W > 0 and size[0] % H == 0 and size[1] % W == 0:
        sh, sw = size[0] // H, size[1] // W
        if in_onnx_export():  # one Resize node: the views below export as Reshapes to (0, C, H, -1),
            # which ONNX Runtime cannot resolve for an empty batch (integer scales: exact)
            return F.interpolate(x, scale_factor=(float(sh), float(sw)), mode="nearest")
        # stacked copies, not expand + reshape: the same values, and the backward is sh + sw
        # vectorised adds of slices (the reduction of the expanded dims was 5x slower on a CPU)
        if sw > 1:
            x = torch.stack([x] * sw, dim=-1).view(B, C, H, W * sw)
        if sh > 1:
            x = torch.stack([x] * sh, dim=3).view(B, C, H * sh, W * sw)
        return x
    rows = window_centres(size[0], H, x.device)
    cols = window_centres(size[1], W, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)
