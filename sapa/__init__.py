"""SAPA: Similarity-Aware Point Affiliation for feature upsampling (NeurIPS 2022).

Quick use::

    import sapa
    up = sapa.SAPA(in_channels=256, guide_channels=64)   # SAPA-B, K=5, d=32
    out = up(x, skip)            # x (B, 256, H, W), skip (B, 64, H', W') -> (B, 256, H', W')

    up = sapa.from_official("sapa-b", "official.pth")     # an official checkpoint, sizes read from it

The library needs torch only. ``import sapa`` imports the operator (``functional``,
``modules``, the backends registered in ``backends``), the baseline upsamplers and the
official-checkpoint loader; ``sapa.complexity`` (FLOP and parameter counts) is imported on
first attribute access, and ``sapa.hf`` (Hugging Face SegFormer, ``pip install sapa[hf]``),
``sapa.bench``, ``sapa.check`` and ``sapa.decomposition`` when imported; ``torch._dynamo``,
Triton and ONNX only when they are used.

The book's laboratory (data, segmenter, training, sweeps, statistics, plots, stored
results) is the subpackage :mod:`sapa.lab` (``pip install sapa[book]``), which builds on the
library; the library never imports it.
"""
import importlib

from .backends import available_backends, register_backend
from .functional import sapa_kernels, sapa_upsample
from .modules import SAPA, VARIANTS
from .normalize import NORM_EPS
from .windows import nearest_upsample_to, window_centres
from .upsamplers import available_upsamplers, build_upsampler
from .official import from_official

__version__ = "0.1.0"

__all__ = ["SAPA", "VARIANTS", "sapa_upsample", "sapa_kernels", "available_backends", "register_backend",
           "NORM_EPS", "nearest_upsample_to", "window_centres", "available_upsamplers", "build_upsampler",
           "from_official", "__version__"]

#: library submodules imported on first attribute access (``sapa.complexity.count_flops``)
_LAZY = ("complexity",)


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sapa' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
