"""A zoo of feature upsamplers behind one interface, for comparisons with SAPA.

``build_upsampler(name, in_channels, guide_channels=None, scale_factor=2, **options)``
returns an ``nn.Module`` whose ``forward(x, y=None)`` maps the low-res feature
x (B, C, H, W) to (B, C, H', W'), where y (B, C_y, H', W') is the high-res guide
(the encoder feature of the same stage).

Every dynamic upsampler fits the frame of the SAPA paper (Eq. 1-2):

    kernel generation   W_l'  = f(X, Y)            a K x K kernel for every output pixel l'
    feature assembly    X'_l' = sum_p W_l'(p) X_{l + p}     l = window centre of l'

and differs in where the kernel comes from (decoder X only, encoder Y only, or both).

============== ======= ============== ========================================================
name           guided  output size    design (defaults)
============== ======= ============== ========================================================
nearest        no      y or s*(H, W)  nearest neighbour with SAPA's centre rule
bilinear       no      y or s*(H, W)  ``F.interpolate(mode="bilinear", align_corners=False)``
deconv         no      s*(H, W)       ConvTranspose2d(C, C, 2s - s%2, stride s, pad s//2)
pixelshuffle   no      s*(H, W)       Conv2d(C, s^2 C, 1) + PixelShuffle(s)
carafe         no      s*(H, W)       Wang et al. 2019: 1x1 C->64, 3x3 64->s^2 K^2 (K=5),
                                      shuffle, softmax, reassembly
dysample       no      s*(H, W)       Liu et al. 2023 ("lp", static scope): 1x1 offsets *0.25
                                      + sub-pixel grid, grid_sample bilinear/border, 4 groups
indexnet-hin   yes     s*(H, W)       Lu et al. 2019, holistic nonlinear index block with
                                      context on y; index * nearest_up(x)
indexnet-m2o   yes     s*(H, W)       depthwise many-to-one nonlinear index block with context
a2u            yes     s*(H, W)       Dai et al. 2021, affinity-aware upsampling (K=3)
fade           yes     any >= (H, W)  Lu et al. 2022: semi-shift kernels (K=5) + gate
sapa-i/b/p/g   yes     any >= (H, W)  :class:`sapa.SAPA` (K=5, d=32)
sapa-d         yes     any >= (H, W)  SAPA with dynamic selection (see :class:`SAPADynamic`)
============== ======= ============== ========================================================

"s*(H, W)" designs are integer-scale: when a guide y is given its size must be exactly
``scale_factor`` times the size of x, otherwise a ValueError names both shapes (CARAFE and
DySample produce s^2 sub-pixel kernels/offsets per low-res pixel and pixel-shuffle them,
so they have no natural output for other sizes). Guided designs ignore ``scale_factor`` when
their output follows the guide ("any >= (H, W)"): output pixel (i, j) then has the window
centre (floor(i*H/H'), floor(j*W/W')), as in :func:`sapa.sapa_upsample`.

Everything is pure PyTorch and runs on CPU and GPU.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_choice, check_kernel_size, check_tensor
from .module import SAPA
from .ops import nearest_upsample_to, window_centres

__all__ = [
    "build_upsampler",
    "available_upsamplers",
    "reassemble",
    "Upsampler",
    "Nearest",
    "Bilinear",
    "Deconv",
    "PixelShuffleUp",
    "CARAFE",
    "DySample",
    "IndexNetHIN",
    "IndexNetM2O",
    "A2U",
    "FADE",
    "SAPAUpsampler",
    "SAPADynamic",
]


# --------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------
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

    Implemented as K*K gathers of the zero-padded map (index_select), so the memory stays
    O(B*C*H'*W') per step and no (B, C, K*K, H', W') tensor is built. Works on any device.
    """
    check_kernel_size(kernel_size)
    check_tensor("x", x)
    check_tensor("kernels", kernels)
    B, C, H, W = x.shape
    K, R = kernel_size, kernel_size // 2
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


# --------------------------------------------------------------------------------------
# classic upsamplers
# --------------------------------------------------------------------------------------
class Nearest(Upsampler):
    """Nearest-neighbour upsampling (no parameters).

    x (B, C, H, W) -> (B, C, H', W') with (H', W') = y's size if y is given, else s*(H, W).
    Output (i, j) copies x at the window centre (floor(i*H/H'), floor(j*W/W')).
    """

    name = "nearest"

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return nearest_upsample_to(x, self._output_size(x, y))


class Bilinear(Upsampler):
    """Bilinear interpolation (``align_corners=False``, no parameters).

    x (B, C, H, W) -> (B, C, H', W') with (H', W') = y's size if y is given, else s*(H, W).
    """

    name = "bilinear"

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.interpolate(x, size=self._output_size(x, y), mode="bilinear", align_corners=False)

    def uncounted_macs(self, x, y):
        H, W = self._output_size(x, y)
        return {"sampling": 4 * x.shape[0] * x.shape[1] * H * W}


class Deconv(Upsampler):
    """Transposed convolution ConvTranspose2d(C, C, k, stride=s, padding=s//2), k = 2s - s%2.

    x (B, C, H, W) -> (B, C, sH, sW). For s = 2: kernel 4, padding 1 (the FCN-style
    deconvolution). Params: C*C*k^2 + C (16C^2 + C for s = 2).
    """

    name = "deconv"
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2):
        super().__init__(in_channels, guide_channels, scale_factor)
        s = self.scale_factor
        self.kernel_size = 2 * s - s % 2
        self.deconv = nn.ConvTranspose2d(
            self.in_channels, self.in_channels, self.kernel_size, stride=s, padding=s // 2
        )

    def extra_repr(self):
        return super().extra_repr() + f", kernel_size={self.kernel_size}"

    def forward(self, x, y=None):
        self._output_size(x, y)
        return self.deconv(x)


class PixelShuffleUp(Upsampler):
    """Sub-pixel convolution: Conv2d(C, s^2 C, 1) then PixelShuffle(s).

    x (B, C, H, W) -> (B, C, sH, sW). Params: s^2 C^2 + s^2 C.
    """

    name = "pixelshuffle"
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2):
        super().__init__(in_channels, guide_channels, scale_factor)
        s = self.scale_factor
        self.conv = nn.Conv2d(self.in_channels, s * s * self.in_channels, 1)

    def forward(self, x, y=None):
        self._output_size(x, y)
        return F.pixel_shuffle(self.conv(x), self.scale_factor)


# --------------------------------------------------------------------------------------
# decoder-only dynamic upsamplers
# --------------------------------------------------------------------------------------
class CARAFE(Upsampler):
    """CARAFE (Wang et al. 2019): content-aware reassembly, kernels from the decoder feature.

    x (B, C, H, W) -> (B, C, sH, sW); y (optional) is only checked for its size.

    kernel generation: m = Conv3x3(Conv1x1(x; C -> c_m); c_m -> s^2 K^2), pixel shuffle to
    (B, K^2, sH, sW), softmax over K^2; feature assembly: :func:`reassemble` of the K x K
    neighbourhood of x around (i // s, j // s). Defaults c_m = 64, K = 5, encoder kernel 3.
    Init as mmcv: compressor xavier-uniform, encoder normal(std=0.001), zero biases.
    Params: C c_m + c_m + 9 c_m s^2 K^2 + s^2 K^2.
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
        m = F.pixel_shuffle(self.encoder(self.compressor(x)), self.scale_factor)
        return torch.softmax(m, dim=1)

    def forward(self, x, y=None):
        self._output_size(x, y)
        return reassemble(x, self.kernels(x), self.kernel_size)

    def uncounted_macs(self, x, y):
        H, W = self._output_size(x, y)
        return {"weighted_sum": x.shape[0] * x.shape[1] * self.kernel_size**2 * H * W}


class DySample(Upsampler):
    """DySample (Liu et al. 2023), "lp" style with static scope: upsampling by point sampling.

    x (B, C, H, W) -> (B, C, sH, sW); y (optional) is only checked for its size.

    offsets o = 0.25 * Conv1x1(x; C -> 2 g s^2) + init_pos, where init_pos puts the s^2
    sub-pixel points of a low-res pixel at (k + 0.5)/s - 0.5 (k = 0..s-1) from its centre;
    pixel shuffle to one (dx, dy) per output pixel and group; ``grid_sample`` (bilinear,
    border padding, align_corners=False) of each of the g channel groups at its own points.
    With zero offsets it is exactly bilinear upsampling with border padding.
    Init: normal(std=0.001) weights, zero bias. Params: 2 g s^2 (C + 1) (32C + 32 at s=2, g=4).
    """

    name = "dysample"
    integer_scale = True

    def __init__(self, in_channels, guide_channels=None, scale_factor=2, groups=4, offset_scale=0.25):
        super().__init__(in_channels, guide_channels, scale_factor)
        self.groups = _positive_int("groups", groups)
        if self.in_channels % self.groups:
            raise ValueError(f"in_channels={self.in_channels} must be divisible by groups={groups}")
        self.offset_scale = float(offset_scale)
        s = self.scale_factor
        self.offset = nn.Conv2d(self.in_channels, 2 * self.groups * s * s, 1)
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        h = (torch.arange(s, dtype=torch.float32) + 0.5) / s - 0.5  # sub-pixel positions
        init = torch.stack(torch.meshgrid(h, h, indexing="ij"))  # (2, s, s): [0]=dy(i), [1]=dx(j)
        init = init.flip(0)  # [0] = dx, [1] = dy
        init = init.reshape(2, 1, s * s).expand(2, self.groups, s * s).reshape(1, -1, 1, 1)
        self.register_buffer("init_pos", init, persistent=False)

    def extra_repr(self):
        return super().extra_repr() + f", groups={self.groups}, offset_scale={self.offset_scale}"

    def offsets(self, x: torch.Tensor, learned_only: bool = False) -> torch.Tensor:
        """Sampling offsets (B, 2, g, sH, sW) in low-res pixels ([:, 0] = dx, [:, 1] = dy).

        Relative to the centre of the low-res pixel; ``learned_only`` drops the fixed init_pos.
        """
        B, C, H, W = x.shape
        s, g = self.scale_factor, self.groups
        # (B, 2 g s^2, H, W), channel order (xy, group, sub-pixel)
        off = self.offset(x) * self.offset_scale
        if not learned_only:
            off = off + self.init_pos.to(x.dtype)
        return F.pixel_shuffle(off, s).view(B, 2, g, s * H, s * W)

    def forward(self, x, y=None):
        self._output_size(x, y)
        B, C, H, W = x.shape
        s, g = self.scale_factor, self.groups
        off = self.offsets(x)
        cx = torch.arange(W, device=x.device, dtype=x.dtype) + 0.5
        cy = torch.arange(H, device=x.device, dtype=x.dtype) + 0.5
        cx = cx.repeat_interleave(s).view(1, 1, 1, s * W)
        cy = cy.repeat_interleave(s).view(1, 1, s * H, 1)
        gx = 2 * (cx + off[:, 0]) / W - 1  # (B, g, sH, sW)
        gy = 2 * (cy + off[:, 1]) / H - 1
        grid = torch.stack([gx, gy], dim=-1).flatten(0, 1)  # (B g, sH, sW, 2)
        out = F.grid_sample(
            x.reshape(B * g, C // g, H, W), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.view(B, C, s * H, s * W)

    def uncounted_macs(self, x, y):
        H, W = self._output_size(x, y)
        return {"sampling": 4 * x.shape[0] * x.shape[1] * H * W}


# --------------------------------------------------------------------------------------
# encoder-only (IndexNet, A2U) and encoder+decoder (FADE) dynamic upsamplers
# --------------------------------------------------------------------------------------
def _index_conv_geometry(s: int, use_context: bool) -> Tuple[int, int]:
    """(kernel, padding) of the stride-s index convolution: s (+2 with a one-pixel context)."""
    return (s + 2, 1) if use_context else (s, 0)


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

    def extra_repr(self):
        return super().extra_repr() + f", use_context={self.use_context}, use_nonlinear={self.use_nonlinear}"

    def decoder_index(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, sH, sW) index maps in (0, 1) from the guide y (B, C, sH, sW)."""
        s = self.scale_factor
        z = torch.sigmoid(self.index(y))  # (B, s^2 C, H, W), branch-major
        B, _, H, W = z.shape
        z = z.view(B, s * s, -1, H, W).transpose(1, 2).reshape(B, -1, H, W)  # channel-major
        return F.pixel_shuffle(z, s)



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
    GroupNorm uses gcd(32, C_y) groups (32 in the official code, which needs C_y % 32 == 0).
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


class FADE(Upsampler):
    """FADE (Lu et al. 2022): kernels from encoder and decoder, plus a decoder-driven gate.

    x (B, C, H, W), y (B, C, H', W') -> (B, C, H', W') (needs C_y == C; any H' >= H).

    kernel generation ("semi-shift" convolution with one shared 3x3 kernel bank W, b):
      m = Conv3x3_{W,b}(Conv1x1(y; C -> d)) + nearest_up(Conv3x3_{W,b}(Conv1x1'(x; C -> d)))
      (the encoder branch has a bias, the decoder branch none; d = 64, K = 5, W: (K^2, d, 3, 3)),
      kernels = softmax over K^2;
    output = g * y + (1 - g) * reassemble(x, kernels), g = sigmoid(nearest_up(Conv1x1(x; C -> 1))).
    The official code computes the encoder branch as four stride-2 convolutions of shifted
    copies of y; that equals a padding-1 3x3 convolution of y at full resolution, used here.
    Init as the official code: W xavier-normal, b = 0, gate xavier-uniform with zero bias.
    Params: (C d + d) + C d + 9 d K^2 + K^2 + (C + 1) = 129 C + 14490 for d = 64, K = 5.
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
        m_y = F.conv2d(self.compress_y(y), self.kernel_weight, self.kernel_bias, padding=1)
        m_x = F.conv2d(self.compress_x(x), self.kernel_weight, None, padding=1)  # bias once, on y
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


# --------------------------------------------------------------------------------------
# SAPA family
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------
def _sapa_factory(variant: str) -> Callable[..., Upsampler]:
    def make(in_channels, guide_channels=None, scale_factor=2, kernel_size=5, embedding_dim=32,
             normalization="softmax", padding="zeros", backend="auto"):
        return SAPAUpsampler(
            in_channels, guide_channels, scale_factor, variant=variant, kernel_size=kernel_size,
            embedding_dim=embedding_dim, normalization=normalization, padding=padding, backend=backend,
        )

    make.__doc__ = f"SAPA-{variant} (see :class:`SAPAUpsampler`)."
    return make


_REGISTRY: Dict[str, Callable[..., Upsampler]] = {
    "nearest": Nearest,
    "bilinear": Bilinear,
    "deconv": Deconv,
    "pixelshuffle": PixelShuffleUp,
    "carafe": CARAFE,
    "indexnet-hin": IndexNetHIN,
    "indexnet-m2o": IndexNetM2O,
    "a2u": A2U,
    "fade": FADE,
    "dysample": DySample,
    "sapa-i": _sapa_factory("I"),
    "sapa-b": _sapa_factory("B"),
    "sapa-p": _sapa_factory("P"),
    "sapa-g": _sapa_factory("G"),
    "sapa-d": SAPADynamic,
}

#: names of the upsamplers that need the guide y
GUIDED = ("indexnet-hin", "indexnet-m2o", "a2u", "fade", "sapa-i", "sapa-b", "sapa-p", "sapa-g", "sapa-d")


def available_upsamplers() -> Tuple[str, ...]:
    """Names accepted by :func:`build_upsampler`."""
    return tuple(_REGISTRY)


def _options_of(factory) -> Tuple[str, ...]:
    params = inspect.signature(factory).parameters
    return tuple(p for p in params if p not in ("self", "in_channels", "guide_channels", "scale_factor"))


def build_upsampler(
    name: str, in_channels: int, guide_channels: Optional[int] = None, scale_factor: int = 2, **options
) -> Upsampler:
    """Build the upsampler ``name`` (see :func:`available_upsamplers`).

    Args:
        name: e.g. ``"carafe"``, ``"sapa-b"``.
        in_channels: C of the low-res feature x (B, C, H, W).
        guide_channels: C_y of the high-res guide y (B, C_y, H', W'); defaults to C.
        scale_factor: integer s; the output size of guide-free upsamplers (s*H, s*W) and the
            required guide size of integer-scale guided ones.
        **options: design options of that upsampler (e.g. ``kernel_size``); an unknown option
            raises TypeError naming it and the accepted ones.

    Returns:
        an :class:`Upsampler` with ``forward(x, y=None) -> (B, C, H', W')``.
    """
    check_choice("name", name, available_upsamplers())
    factory = _REGISTRY[name]
    accepted = _options_of(factory)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for upsampler {name!r}; accepted: {list(accepted)}")
    return factory(in_channels, guide_channels, scale_factor, **options)
