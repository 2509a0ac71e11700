"""A small encoder-decoder segmenter whose every x2 step is a swappable upsampler.

::

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

Every x2 step is ``sapa.upsamplers.build_upsampler(name, D, guide_channels=D)``, guided by
the projected encoder feature of the target resolution; projecting the skip to the decoder
width D makes guide and feature the same width, as FADE and SAPA-I require.

``skip_fusion`` chooses how the guide also feeds the decoder: ``"concat"`` (U-Net/FPN-like,
the default), ``"add"``, or ``"none"`` — the decoder then sees the high-resolution encoder
features *only through the upsampler*, which isolates the upsampler's contribution
(nearest/bilinear/deconv/pixelshuffle then cannot recover detail at all).

Input sizes: the encoder maps H to ceil(H / 2) at each stride-2 stage and the decoder
upsamples to the exact skip size, so upsamplers that follow the guide's size (nearest,
bilinear, FADE and the SAPA family) accept any H, W; integer-scale upsamplers (deconv, pixel
shuffle, CARAFE, IndexNet, A2U, DySample) need H and W to be multiples of
``2 ** (stages - 1)`` (8 for the default 4 stages), otherwise ``forward`` raises a ValueError.
"""
from __future__ import annotations

import importlib
from typing import List, Optional

import torch
import torch.nn as nn

from ._checks import check_positive_int as _positive_int

__all__ = ["Segmenter", "count_parameters", "SKIP_FUSIONS"]

SKIP_FUSIONS = ("concat", "add", "none")


def _upsamplers_module():
    return importlib.import_module("sapa.upsamplers")


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )




def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class Segmenter(nn.Module):
    """Encoder-decoder segmenter with a swappable x2 upsampler (see the module docstring).

    Args:
        num_classes: output classes.
        upsampler: a name from ``sapa.upsamplers.available_upsamplers()``.
        width: encoder width w of stage 0; stage k has w * 2**k channels.
        stages: encoder stages S (total stride 2**(S-1)); S - 1 upsamplers.
        in_channels: image channels.
        decoder_width: decoder width D (default 2 * width).
        upsampler_options: extra keyword arguments of ``build_upsampler``.
        skip_fusion: "concat", "add" or "none".

    ``forward(image (B, in_channels, H, W)) -> logits (B, num_classes, H, W)``.
    ``self.upsamplers`` lists the S - 1 upsampler modules, coarsest first (e.g. to hook
    their kernels); ``self.upsampler_name`` is the name used.
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
        skip_fusion: str = "concat",
    ):
        super().__init__()
        num_classes = _positive_int("num_classes", num_classes)
        width = _positive_int("width", width)
        stages = _positive_int("stages", stages)
        in_channels = _positive_int("in_channels", in_channels)
        if stages < 2:
            raise ValueError(f"stages must be >= 2 (at least one upsampling step), got {stages}")
        D = _positive_int("decoder_width", decoder_width if decoder_width is not None else 2 * width)
        if skip_fusion not in SKIP_FUSIONS:
            raise ValueError(f"unknown skip_fusion {skip_fusion!r}; expected one of {SKIP_FUSIONS}")
        if not isinstance(upsampler, str):
            raise TypeError(f"upsampler must be a string name, got {type(upsampler).__name__}")
        if upsampler_options is not None and not isinstance(upsampler_options, dict):
            raise TypeError(f"upsampler_options must be a dict or None, got {type(upsampler_options).__name__}")
        ups = _upsamplers_module()
        names = tuple(ups.available_upsamplers())
        if upsampler not in names:
            raise ValueError(f"unknown upsampler {upsampler!r}; available: {', '.join(names)}")
        opts = dict(upsampler_options or {})

        self.num_classes, self.upsampler_name, self.skip_fusion = num_classes, upsampler, skip_fusion
        self.stages, self.width, self.decoder_width = stages, width, D
        widths = [width * 2**k for k in range(stages)]
        enc = [nn.Sequential(_conv_bn_relu(in_channels, widths[0]), _conv_bn_relu(widths[0], widths[0]))]
        for k in range(1, stages):
            enc.append(nn.Sequential(_conv_bn_relu(widths[k - 1], widths[k], stride=2),
                                     _conv_bn_relu(widths[k], widths[k])))
        self.encoder = nn.ModuleList(enc)
        self.top = _conv_bn_relu(widths[-1], D, k=1)
        # decoder modules indexed coarsest-first: step j upsamples to encoder level S-2-j
        levels = list(range(stages - 2, -1, -1))
        self.laterals = nn.ModuleList(_conv_bn_relu(widths[k], D, k=1) for k in levels)
        self.upsamplers = nn.ModuleList(
            ups.build_upsampler(upsampler, D, guide_channels=D, scale_factor=2, **opts) for _ in levels
        )
        fuse_in = 2 * D if skip_fusion == "concat" else D
        self.fuse = nn.ModuleList(_conv_bn_relu(fuse_in, D) for _ in levels)
        self.head = nn.Conv2d(D, num_classes, 1)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, upsampler={self.upsampler_name!r}, "
                f"stages={self.stages}, width={self.width}, decoder_width={self.decoder_width}, "
                f"skip_fusion={self.skip_fusion!r}")

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
        d = self.top(feats[-1])
        for j in range(self.stages - 1):
            k = self.stages - 2 - j
            g = self.laterals[j](feats[k])
            u = self.upsamplers[j](d, g)
            if u.shape[-2:] != g.shape[-2:]:
                raise ValueError(
                    f"upsampler {self.upsampler_name!r} (step {j}) turned {tuple(d.shape[-2:])} into "
                    f"{tuple(u.shape[-2:])}, but the skip is {tuple(g.shape[-2:])}: this upsampler "
                    f"has a fixed integer scale, so the input H and W must be multiples of "
                    f"{2 ** (self.stages - 1)} (got {tuple(image.shape[-2:])})"
                )
            if self.skip_fusion == "concat":
                d = self.fuse[j](torch.cat([u, g], dim=1))
            elif self.skip_fusion == "add":
                d = self.fuse[j](u + g)
            else:
                d = self.fuse[j](u)
        return self.head(d)
