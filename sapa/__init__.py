"""SAPA: Similarity-Aware Point Affiliation for feature upsampling (NeurIPS 2022).

Quick use::

    import sapa
    up = sapa.SAPA(in_channels=256, guide_channels=64)   # SAPA-B, K=5, d=32
    out = up(x, skip)            # x (B, 256, H, W), skip (B, 64, H', W') -> (B, 256, H', W')

    up = sapa.from_official("sapa-b", "official.pth")     # an official checkpoint, sizes read from it

``import sapa`` imports torch and the operator only; the heavier parts (``sapa.complexity``,
``sapa.plotting``, ``sapa.results``, ``sapa.data``, ``sapa.metrics``, ``sapa.models``) are
imported on first attribute access, and ``torch._dynamo``, Triton, ONNX and matplotlib when
they are used.
"""
import importlib

from .backends import available_backends, register_backend
from .functional import sapa_kernels, sapa_upsample
from .modules import SAPA, VARIANTS
from .normalize import NORM_EPS
from .windows import nearest_upsample_to, window_centres
from .profiles import get_profile
from .upsamplers import available_upsamplers, build_upsampler
from .official import from_official

__version__ = "0.1.0"

#: submodules imported on first access (``sapa.plotting``...); sapa.train is run as
#: ``python -m sapa.train``
_LAZY = ("complexity", "plotting", "results", "data", "metrics", "models")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sapa' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
