"""Shared pieces of the upsampler zoo: the :class:`Upsampler` base class (validation of
``forward(x, y=None)``) and :func:`reassemble`, CARAFE-style feature assembly."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_kernel_size, check_tensor
from ..functional import _plain_eager
from ..windows import window_centres

__all__ = ["reassemble", "compressed_conv", "Upsampler"]


def _gather_path() -> bool:
    """True inside ``torch.utils.flop_counter.FlopCounterMode`` (the assembly is counted as its
    own category) and under torch.compile (a test on the sizes would guard dynamic shapes and
    recompile; the gather path is one graph for every size)."""
    if torch.compiler.is_compiling():
        return True
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any("FlopCounterMode" in type(m).__name__ for m in _get_current_dispatch_mode_stack())


def reassemble(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """CARAFE-style feature assembly (paper Eq. 2) with given per-output-pixel kernels.

    Args:
        x: (B, C, H, W) low-res feature.
        kernels: (B, K*K, H', W') kernel weights for every output pixel; channel ``p = dy*K + dx``
            weights the neighbour at offset (dy - R, dx - R), R = K // 2.
        kernel_size: odd K.

    Returns:
        (B, C, H', W') with ``out[b, c, i, j] = sum_p kernels[b, p, i, j] * x[b, c, a + dy - R, b + dx - R]``,
        (a, b) = (floor(i*H/H'), floor(j*W/W')) the window centre, zeros outside the map.

    Float32 and float64 CPU tensors in plain eager mode run the fused C++ kernels of
    :mod:`sapa.backends.cpp` (forward, and a backward for x and the kernels; any H' >= H,
    W' >= W, parallel over the low-res rows and bitwise repeatable whatever the number of
    threads; forward and backward 10-15x faster than the PyTorch path at the book model's
    CARAFE/FADE shapes on one thread), through an autograd function: a backward that is itself
    differentiated (``create_graph=True``) recomputes the PyTorch path and differentiates it;
    forward-mode AD uses the same kernels (the assembly is bilinear). Everything else takes the PyTorch path: other devices and dtypes, an extension
    that could not be built (or ``SAPA_CPP=0``), torch.compile, tracing and export, meta, fake
    and functorch tensors, dispatch modes such as ``FlopCounterMode``.

    The PyTorch path: when H' = s_h H and W' = s_w W (integer ratios, every x2 decoder step)
    the window centre of output (i, j) is (i // s_h, j // s_w): the K x K neighbourhoods are
    unfolded once at low resolution, (B, C, K*K, H, W), i.e. K^2 / (s_h s_w) times the output's
    size, and each low-res pixel's s_h s_w outputs are one (C, K*K) @ (K*K, s_h s_w) matmul.
    Other sizes, a forward under ``FlopCounterMode`` (so that :mod:`sapa.complexity` keeps
    counting the assembly as its own ``weighted_sum`` category, with the same result) and
    torch.compile use K*K gathers of the zero-padded map (index_select) and never hold more
    than O(B*C*H'*W'). Works on any device.
    """
    check_kernel_size(kernel_size)
    check_tensor("x", x)
    check_tensor("kernels", kernels)
    B, C, H, W = x.shape
    K = kernel_size
    if kernels.shape[0] != B or kernels.shape[1] != K * K:
        raise ValueError(
            f"kernels must have shape (B, K*K={K * K}, H', W') with B={B}, got {tuple(kernels.shape)}"
        )
    Hq, Wq = kernels.shape[-2:]
    if Hq < H or Wq < W:
        raise ValueError(f"kernels must be at least as large as x: x {tuple(x.shape)}, kernels {tuple(kernels.shape)}")
    if kernels.dtype != x.dtype or kernels.device != x.device:
        raise TypeError(f"x and kernels must share dtype and device, got {x.dtype}/{x.device} and "
                        f"{kernels.dtype}/{kernels.device}")
    if _cpp_path(x, kernels):
        return _CppReassemble.apply(x, kernels, K)
    return _reassemble_torch(x, kernels, K)


def _cpp_path(x: torch.Tensor, kernels: torch.Tensor) -> bool:
    """The fused C++ kernels apply: float32/float64 CPU tensors, non-empty maps, plain eager
    mode (``_plain_eager`` is False under any dispatch mode, ``FlopCounterMode`` included, under
    tracing and for meta, fake and functorch tensors) and an extension that builds."""
    if x.device.type != "cpu" or x.dtype not in _CPP_DTYPES:
        return False
    if torch.compiler.is_compiling() or not _plain_eager(x, kernels) or x.shape[-1] == 0 or x.shape[-2] == 0:
        return False
    from ..backends import cpp

    return cpp.load_extension() is not None


_CPP_DTYPES = (torch.float32, torch.float64)


class _CppReassemble(torch.autograd.Function):
    """:func:`reassemble` on the C++ kernels: forward, backward (grad_x, grad_kernels) and jvp.

    A backward under grad mode (``create_graph=True``) returns the gradients of the PyTorch
    path, recomputed from the saved inputs, so that they carry a graph (double backward).
    """

    @staticmethod
    def forward(ctx, x, kernels, kernel_size):
        from ..backends import cpp

        ctx.save_for_backward(x, kernels)
        ctx.save_for_forward(x, kernels)
        ctx.kernel_size = kernel_size
        return cpp.reassemble_forward(x, kernels, kernel_size)

    @staticmethod
    def backward(ctx, grad_out):
        x, kernels = ctx.saved_tensors
        K = ctx.kernel_size
        need_x, need_k = (bool(n) for n in ctx.needs_input_grad[:2])
        if not (need_x or need_k):
            return None, None, None
        if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable
            # one PyTorch recomputation per gradient, the other input detached: the assembly is
            # linear in each, so grad_x depends on (kernels, grad_out) only and grad_kernels on
            # (x, grad_out) only, and no gradient flows into x through the kernels' graph here
            # (that is the outer backward's job)
            gx = gk = None
            if need_x:
                xd = x.detach().requires_grad_()
                (gx,) = torch.autograd.grad(_reassemble_torch(xd, kernels, K), xd, grad_out, create_graph=True)
            if need_k:
                kd = kernels.detach().requires_grad_()
                (gk,) = torch.autograd.grad(_reassemble_torch(x, kd, K), kd, grad_out, create_graph=True)
            return gx, gk, None
        from ..backends import cpp

        gx, gk = cpp.reassemble_backward(grad_out, x, kernels, K, need_x, need_k)
        return gx, gk, None

    @staticmethod
    def jvp(ctx, x_t, kernels_t, _):
        from ..backends import cpp

        x, kernels = ctx.saved_tensors
        K = ctx.kernel_size
        out = None
        if x_t is not None:
            out = cpp.reassemble_forward(x_t, kernels, K)
        if kernels_t is not None:
            t = cpp.reassemble_forward(x, kernels_t, K)
            out = t if out is None else out + t
        return out


def _reassemble_torch(x: torch.Tensor, kernels: torch.Tensor, K: int) -> torch.Tensor:
    """:func:`reassemble` in differentiable PyTorch ops (arguments already checked)."""
    B, C, H, W = x.shape
    R = K // 2
    Hq, Wq = kernels.shape[-2:]
    if H > 0 and W > 0 and Hq % H == 0 and Wq % W == 0 and not _gather_path():
        sh, sw = Hq // H, Wq // W
        # per low-res pixel l: out[c, (a, b)] = sum_p U[c, p] k[p, (a, b)], one small matmul each
        U = F.unfold(x, K, padding=R).view(B, C, K * K, H * W).permute(0, 3, 1, 2)  # (B, HW, C, K*K)
        ku = kernels.reshape(B, K * K, H, sh, W, sw).permute(0, 2, 4, 1, 3, 5).reshape(B, H * W, K * K, sh * sw)
        out = torch.matmul(U, ku)  # (B, HW, C, s_h s_w)
        return out.view(B, H, W, C, sh, sw).permute(0, 3, 1, 4, 2, 5).reshape(B, C, Hq, Wq)
    rows = window_centres(Hq, H, x.device)
    cols = window_centres(Wq, W, x.device)
    xpad = F.pad(x, (R, R, R, R))
    out = None
    for dy in range(K):
        xr = xpad.index_select(-2, rows + dy)  # (B, C, H', W + 2R)
        for dx in range(K):
            p = dy * K + dx
            term = kernels[:, p : p + 1] * xr.index_select(-1, cols + dx)
            out = term if out is None else out + term
    return out


def compressed_conv(x: torch.Tensor, compressor: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    padding: int) -> torch.Tensor:
    """``conv2d(compressor(x), weight, bias, padding=padding)`` (a 1x1 compressor, then a k x k conv).

    Args:
        x: (B, C, H, W); compressor: 1x1 ``nn.Conv2d`` C -> d (bias or not);
        weight: (O, d, k, k); bias: (O,) or None; padding: the k x k conv's zero padding.

    Returns:
        (B, O, H + 2 padding - k + 1, W + 2 padding - k + 1).

    Both are linear, so when it costs fewer MACs (C k^2 O < C d + d k^2 O, e.g. CARAFE's and
    FADE's 64-channel compressors on narrower features) this is one k x k conv of x with the
    composed weight; the compressor's bias, zero-padded like the compressed map, becomes the
    k x k conv of a ones map with the weight applied to that bias (a (1, O, H', W') term). Same
    function, float rounding aside. Under ``FlopCounterMode`` the two convolutions run as
    written, so :mod:`sapa.complexity` counts the published design.
    """
    w1 = compressor.weight
    d, C = w1.shape[:2]
    O, k = weight.shape[0], weight.shape[-1]
    if C * k * k * O >= C * d + d * k * k * O or (_gather_path() and not torch.compiler.is_compiling()):
        return F.conv2d(compressor(x), weight, bias, padding=padding)
    w = torch.einsum("odij,dc->ocij", weight, w1[:, :, 0, 0])
    out = F.conv2d(x, w, bias, padding=padding)
    b1 = compressor.bias
    if b1 is not None:
        ones = x.new_ones(1, 1, x.shape[-2], x.shape[-1])
        out = out + F.conv2d(ones, torch.einsum("odij,d->oij", weight, b1).unsqueeze(1), padding=padding)
    return out


def _positive_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _shape(t) -> tuple:
    return tuple(t.shape)


class Upsampler(nn.Module):
    """Base class: validation of ``forward(x, y=None)`` shared by all upsamplers.

    Subclasses set ``guided`` (y required) and ``integer_scale`` (output is exactly
    ``scale_factor`` times the input; a guide of another size is rejected).
    """

    name = "upsampler"
    guided = False
    integer_scale = False

    def __init__(self, in_channels: int, guide_channels: Optional[int] = None, scale_factor: int = 2):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.guide_channels = (
            self.in_channels if guide_channels is None else _positive_int("guide_channels", guide_channels)
        )
        self.scale_factor = _positive_int("scale_factor", scale_factor)

    def extra_repr(self) -> str:
        s = f"in_channels={self.in_channels}"
        if self.guided:
            s += f", guide_channels={self.guide_channels}"
        if not self.guided or self.integer_scale:
            s += f", scale_factor={self.scale_factor}"
        return s

    def _output_size(self, x: torch.Tensor, y: Optional[torch.Tensor]) -> Tuple[int, int]:
        """Validate (x, y) and return the output size (H', W')."""
        check_tensor("x", x)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name}: x must have in_channels={self.in_channels} channels, got shape {_shape(x)}"
            )
        H, W = x.shape[-2:]
        s = self.scale_factor
        if y is None:
            if self.guided:
                raise ValueError(
                    f"{self.name} is a guided upsampler: forward(x, y) needs the high-res guide "
                    f"y of shape (B, guide_channels={self.guide_channels}, H', W'), got y=None "
                    f"(x {_shape(x)})"
                )
            return s * H, s * W
        check_tensor("y", y)
        if self.guided:
            if y.shape[1] != self.guide_channels:
                raise ValueError(
                    f"{self.name}: y must have guide_channels={self.guide_channels} channels, "
                    f"got shape {_shape(y)} (x {_shape(x)})"
                )
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"{self.name}: x and y batch sizes differ: x {_shape(x)}, y {_shape(y)}")
            if y.dtype != x.dtype:
                raise TypeError(f"{self.name}: x and y dtypes differ: {x.dtype} and {y.dtype}")
            if y.device != x.device:
                raise ValueError(f"{self.name}: x and y devices differ: {x.device} and {y.device}")
        size = (int(y.shape[-2]), int(y.shape[-1]))
        if self.integer_scale and size != (s * H, s * W):
            raise ValueError(
                f"{self.name} is an integer-scale design (scale_factor={s}): the guide y must be "
                f"exactly {s} x the size of x, got x {_shape(x)} and y {_shape(y)}"
            )
        if size[0] < H or size[1] < W:
            raise ValueError(
                f"{self.name}: the guide y must be at least as large as x: x {_shape(x)}, y {_shape(y)}"
            )
        return size

    def uncounted_macs(self, x: torch.Tensor, y: Optional[torch.Tensor]) -> Dict[str, int]:
        """Multiply-accumulates of ops ``FlopCounterMode`` does not see (see ``sapa.complexity``)."""
        return {}
