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
dysample       no      s*(H, W)       Liu et al. 2023 ("lp", static scope; ``dyscope=True`` for
                                      DySample+): 1x1 offsets *0.25 + sub-pixel grid,
                                      grid_sample bilinear/border, 4 groups
indexnet-hin   yes     s*(H, W)       Lu et al. 2019, holistic nonlinear index block with
                                      context on y; index * nearest_up(x)
indexnet-m2o   yes     s*(H, W)       depthwise many-to-one nonlinear index block with context
a2u            yes     s*(H, W)       Dai et al. 2021, affinity-aware upsampling (K=3)
fade           yes     any >= (H, W)  Lu et al. 2022: semi-shift kernels (K=5) + gate
sapa-i/b/p/g   yes     any >= (H, W)  :class:`sapa.SAPA` (K=5, d=32)
sapa-d         yes     any >= (H, W)  the extension's deformable SAPA: 9 learned points, 4 groups
                                      (see :class:`SAPADynamic`)
============== ======= ============== ========================================================

"s*(H, W)" designs are integer-scale: when a guide y is given its size must be exactly
``scale_factor`` times the size of x, otherwise a ValueError names both shapes (CARAFE and
DySample produce s^2 sub-pixel kernels/offsets per low-res pixel and pixel-shuffle them,
so they have no natural output for other sizes). Guided designs ignore ``scale_factor`` when
their output follows the guide ("any >= (H, W)"): output pixel (i, j) then has the window
centre (floor(i*H/H'), floor(j*W/W')), as in :func:`sapa.sapa_upsample` (SAPA-D still uses
``scale_factor`` for its s^2 sub-pixel offsets, which it resamples to the guide's size).

:func:`load_official_state_dict` loads a checkpoint of the authors' own module of a design
(CARAFE, IndexNet, A2U, FADE, DySample, SAPA-B/P/G, SAPA-D) into the module built here.

Everything is pure PyTorch and runs on CPU and GPU.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional, Tuple

from .._checks import check_choice
from .a2u import A2U
from .base import Upsampler, reassemble
from .carafe import CARAFE
from .classic import Bilinear, Deconv, Nearest, PixelShuffleUp
from .dysample import DySample
from .fade import FADE
from .indexnet import IndexNetHIN, IndexNetM2O
from .official import convert_official_state_dict, load_official_state_dict, official_names
from .sapa_variants import SAPADynamic, SAPAUpsampler

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
    "GUIDED",
    "load_official_state_dict",
    "convert_official_state_dict",
    "official_names",
]


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
