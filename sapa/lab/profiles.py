"""Run profiles shared by the notebooks, the training CLI and the benchmarks.

One environment variable, ``SAPA_PROFILE``, selects the profile:

* ``quick`` (default): small sizes that run on a laptop CPU (and in CI) in minutes;
* ``full``: the sizes meant for a GPU (e.g. Colab).
"""
from __future__ import annotations

import os

PROFILES = ("quick", "full")
ENV_VAR = "SAPA_PROFILE"

__all__ = ["PROFILES", "ENV_VAR", "get_profile", "is_full"]


def get_profile(default: str = "quick") -> str:
    """The active profile name, read from ``$SAPA_PROFILE`` ("quick" or "full")."""
    value = os.environ.get(ENV_VAR, default).strip().lower() or default
    if value not in PROFILES:
        raise ValueError(f"{ENV_VAR} must be one of {PROFILES}, got {value!r}")
    return value


def is_full() -> bool:
    """True when the full profile is selected."""
    return get_profile() == "full"
