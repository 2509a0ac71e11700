"""A small encoder-decoder segmenter whose every x2 step is a swappable upsampler.

Two decoder arms (``head``):

* ``"unet"`` (default): a U-Net/FPN-like decoder; each upsampled feature is fused with its
  guide (``skip_fusion``), so even bilinear sees the encoder's detail at every level.
* ``"segformer"``: a SegFormer-like all-MLP head: the encoder levels 1..S-1 are projected
  to D channels and each is brought to full resolution by a chain of x2 upsamplers alone
  (level k: k steps; the step into level j is guided by the projected encoder feature
  g_j); the S-1 full-resolution maps are concatenated *with each other* and fused by a
  1x1 conv. The guides enter only the upsamplers, never the concatenation, and the
  full-resolution encoder level 0 is only a guide. For S = 4 that is six x2 steps, as in
  the SegFormer head of the paper's benchmark.

U-Net arm::

    image (B, 3, H, W)
      encoder stage 0: 2 x conv3x3-BN-ReLU, stride 1      e0 (B,   w, H,    W)
      encoder stage k: conv3x3 stride 2 + conv3x3          ek (B, w 2^k, H/2^k, W/2^k)
    decoder (width D, default 2w):
      d = 1x1(e_last)                                      (B, D, H/2^(S-1), ...)
      for k = S-2 .. 0:                                    (coarse to fine)
          g  = lateral_k(e_k)              1x1 conv-BN-ReLU to D channels: the *guide*
          u  = upsampler_k(d, g)           x2 to the size of e_k (the swapped-in operator)
          d  = fuse_k([u, g])              conv3x3-BN-ReLU (skip_fusion="concat")
      logits = 1x1(d)                                      (B, num_classes, H, W)

SegFormer arm (same encoder)::

    f_k = proj_k(e_k), k = 1..S-1                          1x1 conv-BN-ReLU to D
    g_j = lateral_j(e_j), j = 0..S-2                       the guides, 1x1 conv-BN-ReLU to D
    u_k = up_(k,0)( ... up_(k,k-1)(f_k, g_(k-1)) ..., g_0)   (B, D, H, W)
    logits = 1x1(fuse([u_1, ..., u_(S-1)]))                fuse: 1x1 conv-BN-ReLU (S-1)D -> D

Every x2 step is ``sapa.build_upsampler(name, D, guide_channels=D)``, guided by the
projected encoder feature of the target resolution; projecting the skip to the decoder
width D makes guide and feature the same width, as FADE and SAPA-I require.

``skip_fusion`` (U-Net arm) chooses how the guide also feeds the decoder: ``"concat"``
(U-Net/FPN-like, the default), ``"add"``, or ``"none"`` (the decoder then sees the
high-resolution encoder features only through the upsampler).

Parameter-matched control (``upsampler="bilinear+conv"``, :class:`BilinearConv`): bilinear
upsampling after a residual conv block at the low resolution whose width is chosen so that
its parameter count equals that of another upsampler (``match``, default CARAFE) at the
same width. It asks whether a learned upsampler wins by its content-aware kernels or just by
its extra parameters.

Input sizes: the encoder maps H to ceil(H / 2) at each stride-2 stage and the decoder
upsamples to the exact skip size, so upsamplers that follow the guide's size (nearest,
bilinear, FADE and the SAPA family, the control) accept any H, W; integer-scale upsamplers
(deconv, pixel shuffle, CARAFE, IndexNet, A2U, DySample) need H and W to be multiples of
``2 ** (stages - 1)`` (8 for the default 4 stages), otherwise ``forward`` raises a ValueError.
"""
from __future__ import annotations

import importlib
from typing import List, Optional

import torch
import torch.nn as nn

from .._checks import check_positive_int as _positive_int

__all__ = ["Segmenter", "BilinearConv", "count_parameters", "available_segmenter_upsamplers",
           "SKIP_FUSIONS", "HEADS", "CONTROL_UPSAMPLERS"]

SKIP_FUSIONS = ("concat", "add", "none")
HEADS = ("unet", "segformer")
#: upsamplers defined here (controls), on top of ``sapa.available_upsamplers()``
CONTROL_UPSAMPLERS = ("bilinear+conv",)


def _sapa():
    # the public names only (sapa.build_upsampler / sapa.available_upsamplers), imported
    # lazily: sapa/__init__ imports this module
    return importlib.import_module("sapa")


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def available_segmenter_upsamplers() -> tuple:
    """Names the Segmenter accepts: ``sapa.available_upsamplers()`` plus the controls."""
    return tuple(_sapa().available_upsamplers()) + CONTROL_UPSAMPLERS


class BilinearConv(nn.Module):
    """Parameter-matched control: a residual conv block at low resolution, then bilinear.

    ``out = bilinear(x + conv1x1(relu(conv3x3(x))), size of y, or scale_factor * (H, W))``
    with hidden width h = round((P - C) / (10 C + 1)) (at least 1), so that its
    ``h (10 C + 1) + C`` parameters match P, the parameter count of
    ``sapa.build_upsampler(match, C, guide_channels, scale_factor, **match_options)``
    (within ``5 C + 1``). The last conv starts at zero: the block starts as plain bilinear.

    Args:
        in_channels: C.
        guide_channels: only used to build the matched upsampler (for its parameter count).
        scale_factor: integer s (the output size when no guide is given).
        match: the upsampler whose parameter count is matched (default "carafe").
        **match_options: its options (e.g. ``compressed_channels``).

    ``forward(x (B, C, H, W), y (B, C_y, H', W') or None) -> (B, C, H', W')``.
    """

    name = "bilinear+conv"

    def __init__(self, in_channels: int, guide_channels: Optional[int] = None, scale_factor: int = 2,
                 match: str = "carafe", **match_options):
        super().__init__()
        C = _positive_int("in_channels", in_channels)
        self.scale_factor = _positive_int("scale_factor", scale_factor)
        if match == self.name:
            raise ValueError("match must name another upsampler, not 'bilinear+conv'")
        ref = _sapa().build_upsampler(match, C, guide_channels=guide_channels, scale_factor=scale_factor,
                                      **match_options)
        self.match, self.target_params = match, count_parameters(ref)
        self.hidden = max(1, round((self.target_params - C) / (10 * C + 1)))
        self.conv1 = nn.Conv2d(C, self.hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(self.hidden, C, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def extra_repr(self) -> str:
        return f"match={self.match!r}, target_params={self.target_params}, hidden={self.hidden}"

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        C = self.conv1.in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != C:
            raise ValueError(f"x must be a (B, {C}, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if y is not None and (not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[0] != x.shape[0]):
            raise ValueError(f"y must be a (B, C_y, H', W') tensor with x's batch size; x {tuple(x.shape)}, "
                             f"y {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
        size = (tuple(y.shape[-2:]) if y is not None
                else (x.shape[-2] * self.scale_factor, x.shape[-1] * self.scale_factor))
        h = x + self.conv2(torch.relu(self.conv1(x)))
        return nn.functional.interpolate(h, size=size, mode="bilinear", align_corners=False)


def _build(name: str, channels: int, opts: dict) -> nn.Module:
    if name == "bilinear+conv":
        return BilinearConv(channels, channels, 2, **opts)
    return _sapa().build_upsampler(name, channels, guide_channels=channels, scale_factor=2, **opts)


class Segmenter(nn.Module):
    """Encoder-decoder segmenter with a swappable x2 upsampler (see the module docstring).

    Args:
        num_classes: output classes.
        upsampler: a name from :func:`available_segmenter_upsamplers` (``sapa``'s
            upsamplers and the ``"bilinear+conv"`` control).
        width: encoder width w of stage 0; stage k has w * 2**k channels.
        stages: encoder stages S (total stride 2**(S-1)).
        in_channels: image channels.
        decoder_width: decoder width D (default 2 * width).
        upsampler_options: extra keyword arguments of ``build_upsampler``.
        skip_fusion: U-Net arm: "concat" (None means this default), "add" or "none"; the
            SegFormer arm accepts only None or "none" (it never fuses a guide).
        head: "unet" (default) or "segformer".

    ``forward(image (B, in_channels, H, W)) -> logits (B, num_classes, H, W)``.
    ``self.upsamplers`` lists the upsampler modules (e.g. to hook their kernels): U-Net
    arm, its S - 1 steps coarsest first; SegFormer arm, the chains of levels 1, ..., S-1 in
    turn, each coarsest first (``self.chains[k - 1]`` holds the indices of level k's steps).
    ``self.upsampler_name`` is the name used.
    """

    def __init__(
        self,
        num_classes: int,
        upsampler: str = "bilinear",
        width: int = 16,
        stages: int = 4,
        in_channels: int = 3,
        decoder_width: Optional[int] = None,
        upsampler_options: Optional[dict] = None,
        skip_fusion: Optional[str] = None,
        head: str = "unet",
    ):
        super().__init__()
        num_classes = _positive_int("num_classes", num_classes)
        width = _positive_int("width", width)
        stages = _positive_int("stages", stages)
        in_channels = _positive_int("in_channels", in_channels)
        if stages < 2:
            raise ValueError(f"stages must be >= 2 (at least one upsampling step), got {stages}")
        D = _positive_int("decoder_width", decoder_width if decoder_width is not None else 2 * width)
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
        if head == "segformer":
            if skip_fusion not in (None, "none"):
                raise ValueError(f"the segformer head never fuses the guide: skip_fusion must be None or "
                                 f"'none', got {skip_fusion!r}")
            skip_fusion = "none"
        elif skip_fusion is None:
            skip_fusion = "concat"
        if skip_fusion not in SKIP_FUSIONS:
            raise ValueError(f"unknown skip_fusion {skip_fusion!r}; expected one of {SKIP_FUSIONS}")
        if not isinstance(upsampler, str):
            raise TypeError(f"upsampler must be a string name, got {type(upsampler).__name__}")
        if upsampler_options is not None and not isinstance(upsampler_options, dict):
            raise TypeError(f"upsampler_options must be a dict or None, got {type(upsampler_options).__name__}")
        names = available_segmenter_upsamplers()
        if upsampler not in names:
            raise ValueError(f"unknown upsampler {upsampler!r}; available: {', '.join(names)}")
        opts = dict(upsampler_options or {})

        self.num_classes, self.upsampler_name, self.skip_fusion = num_classes, upsampler, skip_fusion
        self.head_arm = head
        self.stages, self.width, self.decoder_width = stages, width, D
        widths = [width * 2**k for k in range(stages)]
        enc = [nn.Sequential(_conv_bn_relu(in_channels, widths[0]), _conv_bn_relu(widths[0], widths[0]))]
        for k in range(1, stages):
            enc.append(nn.Sequential(_conv_bn_relu(widths[k - 1], widths[k], stride=2),
                                     _conv_bn_relu(widths[k], widths[k])))
        self.encoder = nn.ModuleList(enc)
        if head == "segformer":
            self.proj = nn.ModuleList(_conv_bn_relu(widths[k], D, k=1) for k in range(1, stages))
            self.laterals = nn.ModuleList(_conv_bn_relu(widths[j], D, k=1) for j in range(stages - 1))
            ups: List[nn.Module] = []
            self.chains: List[List[int]] = []
            for k in range(1, stages):  # level k: steps into levels k-1, ..., 0
                self.chains.append(list(range(len(ups), len(ups) + k)))
                ups.extend(_build(upsampler, D, opts) for _ in range(k))
            self.upsamplers = nn.ModuleList(ups)
            self.fuse = _conv_bn_relu((stages - 1) * D, D, k=1)
        else:
            self.top = _conv_bn_relu(widths[-1], D, k=1)
            # decoder modules indexed coarsest-first: step j upsamples to encoder level S-2-j
            levels = list(range(stages - 2, -1, -1))
            self.laterals = nn.ModuleList(_conv_bn_relu(widths[k], D, k=1) for k in levels)
            self.upsamplers = nn.ModuleList(_build(upsampler, D, opts) for _ in levels)
            fuse_in = 2 * D if skip_fusion == "concat" else D
            self.fuse = nn.ModuleList(_conv_bn_relu(fuse_in, D) for _ in levels)
        self.head = nn.Conv2d(D, num_classes, 1)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, upsampler={self.upsampler_name!r}, "
                f"stages={self.stages}, width={self.width}, decoder_width={self.decoder_width}, "
                f"skip_fusion={self.skip_fusion!r}, head={self.head_arm!r}")

    def encode(self, image: torch.Tensor) -> List[torch.Tensor]:
        """Encoder features [e0 (B, w, H, W), ..., e_{S-1} (B, w 2^(S-1), ~H/2^(S-1), ...)]."""
        feats, h = [], image
        for stage in self.encoder:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, in_channels, H, W) float -> logits (B, num_classes, H, W)."""
        if not isinstance(image, torch.Tensor) or image.dim() != 4:
            raise ValueError(f"image must be a (B, C, H, W) tensor, got "
                             f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
        cin = self.encoder[0][0][0].in_channels
        if image.shape[1] != cin:
            raise ValueError(f"image must have {cin} channels, got shape {tuple(image.shape)}")
        feats = self.encode(image)
        if self.head_arm == "segformer":
            guides = [lat(f) for lat, f in zip(self.laterals, feats[:-1])]
            outs = []
            for k in range(1, self.stages):
                u = self.proj[k - 1](feats[k])
                for step, j in zip(self.chains[k - 1], range(k - 1, -1, -1)):
                    u = self._step(step, u, guides[j], image)
                outs.append(u)
            return self.head(self.fuse(torch.cat(outs, dim=1)))
        d = self.top(feats[-1])
        for j in range(self.stages - 1):
            k = self.stages - 2 - j
            g = self.laterals[j](feats[k])
            u = self._step(j, d, g, image)
            if self.skip_fusion == "concat":
                d = self.fuse[j](torch.cat([u, g], dim=1))
            elif self.skip_fusion == "add":
                d = self.fuse[j](u + g)
            else:
                d = self.fuse[j](u)
        return self.head(d)

    def _step(self, j: int, d: torch.Tensor, g: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Upsampler ``j`` applied to d, guided by g; checks that it reached g's size."""
        u = self.upsamplers[j](d, g)
        if u.shape[-2:] != g.shape[-2:]:
            raise ValueError(
                f"upsampler {self.upsampler_name!r} (step {j}) turned {tuple(d.shape[-2:])} into "
                f"{tuple(u.shape[-2:])}, but the skip is {tuple(g.shape[-2:])}: this upsampler "
                f"has a fixed integer scale, so the input H and W must be multiples of "
                f"{2 ** (self.stages - 1)} (got {tuple(image.shape[-2:])})"
            )
        return u
