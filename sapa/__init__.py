"""SAPA: Similarity-Aware Point Affiliation for feature upsampling (NeurIPS 2022).

Quick use::

    import sapa
    up = sapa.SAPA(in_channels=256, guide_channels=64)   # SAPA-B, K=5, d=32
    out = up(x, skip)            # x (B, 256, H, W), skip (B, 64, H', W') -> (B, 256, H', W')
"""
from .backends import available_backends, register_backend
from .functional import sapa_kernels, sapa_upsample
from .modules import SAPA, VARIANTS
from .normalize import NORM_EPS
from .windows import nearest_upsample_to, window_centres
from .profiles import get_profile
from .upsamplers import available_upsamplers, build_upsampler
from . import complexity
from . import plotting, results
from . import data, metrics, models  # sapa.train is run as `python -m sapa.train`

__version__ = "0.1.0"
