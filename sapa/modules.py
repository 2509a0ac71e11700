"""The ``SAPA`` module: pre-processing (LayerNorm, projections, gate) around ``sapa_upsample``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import NORMALIZATIONS, PADDINGS, check_choice, check_kernel_size, check_tensor, in_onnx_export
from ._checks import check_positive_int as _positive_int
from .backends import check_backend_name
from .functional import sapa_kernels, sapa_upsample
from .windows import nearest_upsample_to

VARIANTS = ("I", "B", "P", "G")

__all__ = ["SAPA", "VARIANTS", "channel_layer_norm"]


def channel_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """Per-pixel LayerNorm over channels of a (B, C, H, W) tensor; returns (B, C, H, W).

    The official code's permute, LayerNorm, permute, calling ``norm`` itself, so its hooks,
    a replaced norm module and every tracer see what they see in the official module. (Mean and
    variance over dim 1 of an NCHW tensor avoid the two copies ``layer_norm`` makes of the
    permuted input and its gradient, a few per cent of a CPU training step at the book's sizes,
    but they bypass the module: its hooks, e.g. ``sapa.complexity``'s counter, never fire.)
    """
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _project(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """Per-pixel linear map (B, C_in, H, W) -> (B, C_out, H, W), stored contiguous (NCHW).

    One (C_out, C_in) @ (C_in, H W) matmul per image: x's pixels are read in place whether x
    is stored NCHW or channels-last (the LayerNorm's output), and the result is already in the
    layout the backends read (no copy before the kernel, none of its gradient after)."""
    if in_onnx_export():  # one Conv node: the TorchScript exporter writes the flatten below as a
        # Reshape to (0, C, -1), which ONNX Runtime cannot resolve for an empty batch
        return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)
    B, C, H, W = x.shape
    xt = x.flatten(2)  # (B, C_in, H W): a view for both layouts
    w = linear.weight.expand(B, -1, -1)
    if linear.bias is None:
        out = torch.bmm(w, xt)
    else:
        out = torch.baddbmm(linear.bias.view(1, -1, 1), w, xt)
    return out.view(B, linear.out_features, H, W)  # explicit: -1 is ambiguous for B = 0


def _autocast(x: torch.Tensor) -> bool:
    """True inside ``torch.autocast`` for x's device (mixed dtypes are then expected)."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_enabled()
    except RuntimeError:  # a device type autocast does not know (meta): never autocast
        return False


def _init_linear(linear: nn.Linear) -> None:
    nn.init.trunc_normal_(linear.weight, std=0.02)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)




class SAPA(nn.Module):
    """Similarity-Aware Point Affiliation upsampler (a drop-in for ``F.interpolate``).

    ``forward(x, y)`` upsamples the low-res feature x (B, in_channels, H, W) to the size of
    the high-res guide y (B, guide_channels, H', W') and returns (B, in_channels, H', W')
    (the official code's ``SAPA(dim_y, dim_x)`` / ``forward(y, x)`` take them the other way
    round: arguments that look swapped are refused with a ValueError that says so; official
    checkpoints load with :func:`sapa.from_official`)
    (any H' >= H, W' >= W; channels-last when x is). The value that is upsampled is always
    the raw x; the kernels come from the similarity of y's and x's embeddings.

    Args:
        in_channels: C, channels of x (and of the output). Any integer type (e.g. ``np.int64``).
        guide_channels: channels of the guide y; ``None`` means ``in_channels``.
        variant: how query and key are embedded (paper Sec. 4.2 and Table 6):

            * ``"I"``: inner product of the LayerNorm-ed features themselves (needs
              ``guide_channels == in_channels``; ``embedding_dim`` is then ``in_channels``).
            * ``"B"``: low-rank bilinear: q = P_y LN(y), k = P_x LN(x) (the default).
            * ``"P"``: plain addition: q = P [LN(y); nearest_up(x)] (the gate of "G" removed).
            * ``"G"``: gated: q = g * P_y LN(y) + (1 - g) * P_xx nearest_up(x),
              g = sigmoid(P_g LN(x)) nearest-upsampled.
        kernel_size: K, the odd side of the K x K window of low-res pixels around each
            output pixel's centre (5 in the paper).
        embedding_dim: d, channels of query and key (32 in the paper; ignored by "I").
        normalization: how similarities become kernel weights: ``"softmax"`` (the paper),
            ``"relu"``, ``"sigmoid"``, ``"softplus"`` (w = h(s) / (sum h(s) + eps)) or
            ``"none"`` (the raw similarities).
        padding: window positions outside the low-res map. ``"zeros"`` (the official code
            and the default) counts them as pixels of value 0 and logit 0 that take part in
            the normalisation, so the output is darkened at the borders: a constant map of
            ones comes out as 0.36 in the corners for K = 5 (9 of 25 window positions inside)
            and 0.6 along the edges. ``"ignore"`` leaves them out of the normalisation, so a
            constant map stays constant: ``SAPA(C, C_y, padding="ignore")``.
        backend: ``"auto"`` (fused Triton kernels for CUDA tensors when Triton is installed,
            the C++ kernels for float32/float64 CPU tensors when they build, otherwise the
            memory-efficient PyTorch path), ``"torch"``, ``"cpp"``, ``"reference"`` (unfold +
            einsum, the test oracle) or ``"triton"``; see
            ``sapa.available_backends()``. Checked here: an unknown name, or ``"triton"``
            without Triton installed, raises a ValueError that says so.

    Linear weights use trunc-normal(std=0.02) and zero bias, LayerNorms weight 1 and bias 0,
    as in the official code. ``torch.compile`` (also ``fullgraph=True``, ``dynamic=True``),
    ``torch.export``, the ONNX exporters and ``torch.func`` transforms work on it.
    """

    def __init__(
        self,
        in_channels: int,
        guide_channels: int | None = None,
        variant: str = "B",
        kernel_size: int = 5,
        embedding_dim: int = 32,
        normalization: str = "softmax",
        padding: str = "zeros",
        backend: str = "auto",
    ):
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        guide_channels = in_channels if guide_channels is None else _positive_int("guide_channels", guide_channels)
        check_choice("variant", variant, VARIANTS)
        kernel_size = check_kernel_size(kernel_size)
        embedding_dim = _positive_int("embedding_dim", embedding_dim)
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_choice("padding", padding, PADDINGS)
        check_backend_name(backend)
        if variant == "I" and guide_channels != in_channels:
            raise ValueError(
                f"variant 'I' compares features directly and needs guide_channels == in_channels, "
                f"got in_channels={in_channels}, guide_channels={guide_channels}"
            )
        self.in_channels, self.guide_channels = in_channels, guide_channels
        self.variant, self.kernel_size = variant, kernel_size
        self.embedding_dim = in_channels if variant == "I" else embedding_dim
        self.normalization, self.padding, self.backend = normalization, padding, backend

        self.norm_y = nn.LayerNorm(guide_channels)
        self.norm_x = nn.LayerNorm(in_channels)
        d = self.embedding_dim
        if variant in ("B", "G"):
            self.q_y = nn.Linear(guide_channels, d)
        if variant == "P":
            self.q_yx = nn.Linear(guide_channels + in_channels, d)
        if variant == "G":
            self.q_x = nn.Linear(in_channels, d)
            self.gate = nn.Linear(in_channels, 1)
        if variant != "I":
            self.k_x = nn.Linear(in_channels, d)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                _init_linear(mod)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, guide_channels={self.guide_channels}, "
            f"variant={self.variant!r}, kernel_size={self.kernel_size}, "
            f"embedding_dim={self.embedding_dim}, normalization={self.normalization!r}, "
            f"padding={self.padding!r}, backend={self.backend!r}"
        )

    def _check(self, x, y):
        check_tensor("x", x)
        check_tensor("y", y)
        if x.shape[1] != self.in_channels:
            self._check_not_swapped(x, y)
            raise ValueError(f"x must have in_channels={self.in_channels} channels, got shape {tuple(x.shape)}")
        if y.shape[1] != self.guide_channels:
            raise ValueError(
                f"y must have guide_channels={self.guide_channels} channels, got shape {tuple(y.shape)}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y batch sizes differ: x {tuple(x.shape)}, y {tuple(y.shape)}")
        if y.shape[2] < x.shape[2] or y.shape[3] < x.shape[3]:
            self._check_not_swapped(x, y)
            raise ValueError(
                f"the guide y must be at least as large as x: x {tuple(x.shape)}, y {tuple(y.shape)}"
            )
        if x.device != y.device or (x.dtype != y.dtype and not _autocast(x)):
            raise TypeError(f"x and y must share dtype and device, got x {x.dtype} on {x.device}, "
                            f"y {y.dtype} on {y.device}")
        p = self.norm_x.weight
        if x.device != p.device or (x.dtype != p.dtype and not _autocast(x)):
            raise TypeError(f"x is {x.dtype} on {x.device} but the module's parameters are {p.dtype} on "
                            f"{p.device}: move one to the other (e.g. module.to(x))")

    def _check_not_swapped(self, x, y):
        """Refuse (y, x), the official code's argument order, before any work. Called only
        on the failure paths of :meth:`_check`, so valid inputs add no guard under the compiler."""
        C, Cy = self.in_channels, self.guide_channels
        swapped_channels = C != Cy and x.shape[1] == Cy and y.shape[1] == C
        larger = x.shape[2] >= y.shape[2] and x.shape[3] >= y.shape[3] and x.shape[2:] != y.shape[2:]
        if swapped_channels or (larger and x.shape[1] == y.shape[1] == C == Cy):
            why = (f"x has guide_channels={Cy} channels and y has in_channels={C}" if swapped_channels
                   else "x is larger than the guide y")
            raise ValueError(
                f"x and y look swapped ({why}): x {tuple(x.shape)}, y {tuple(y.shape)}. sapa.SAPA is "
                "called as forward(x, y) with x the low-res feature (B, in_channels, H, W) and y the "
                "high-res guide (B, guide_channels, H', W'); the official SAPA's forward(y, x) takes "
                "them the other way round"
            )

    def query_key(self, x: torch.Tensor, y: torch.Tensor):
        """Embeddings (query (B, d, H', W'), key (B, d, H, W)) for x (B, C, H, W), y (B, C_y, H', W')."""
        self._check(x, y)
        x_n = channel_layer_norm(x, self.norm_x)
        y_n = channel_layer_norm(y, self.norm_y)
        if self.variant == "I":
            return y_n, x_n
        key = _project(x_n, self.k_x)
        size = y.shape[-2:]
        # A per-pixel linear map commutes with nearest upsampling, so the x branches are
        # projected at low resolution and then upsampled (same result, (H'W')/(HW) cheaper).
        if self.variant == "B":
            query = _project(y_n, self.q_y)
        elif self.variant == "P":  # Linear([LN(y); up(x)]) = W_y LN(y) + up(W_x x) + b
            Cy = self.guide_channels
            w, b = self.q_yx.weight, self.q_yx.bias
            q_y = F.linear(y_n.permute(0, 2, 3, 1), w[:, :Cy], b).permute(0, 3, 1, 2)
            q_x = F.linear(x.permute(0, 2, 3, 1), w[:, Cy:]).permute(0, 3, 1, 2)
            query = q_y + nearest_upsample_to(q_x, size)
        else:  # "G": g * P_y LN(y) + (1 - g) * P_xx up(x), g = up(sigmoid(P_g LN(x)))
            g = nearest_upsample_to(torch.sigmoid(_project(x_n, self.gate)), size)
            q_x = nearest_upsample_to(_project(x, self.q_x), size)
            query = g * _project(y_n, self.q_y) + (1 - g) * q_x
        return query, key

    def kernels(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The upsampling kernels (B, K*K, H', W') this module applies to x (see ``sapa_kernels``)."""
        query, key = self.query_key(x, y)
        return sapa_kernels(query, key, self.kernel_size, self.normalization, self.padding)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W), y (B, guide_channels, H', W') -> (B, in_channels, H', W')."""
        query, key = self.query_key(x, y)
        if query.dtype != x.dtype:  # under autocast the projections may come out in another dtype
            query, key = query.to(x.dtype), key.to(x.dtype)
        return sapa_upsample(
            query, key, x, self.kernel_size, self.normalization, self.padding, self.backend
        )
