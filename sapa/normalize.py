"""Kernel normalisation shared by every backend: similarities -> weights, and its backward.

``w_p = h(s_p) / (sum_q h(s_q) + NORM_EPS)`` for h = relu, sigmoid, softplus; softmax for
h = exp; the raw similarities for ``"none"``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["NORM_EPS", "normalize_logits", "normalize_backward", "compute_dtype"]

#: eps in w = h(s) / (sum h(s) + eps) for the relu, sigmoid and softplus normalisations
#: (it keeps the relu kernel finite when every similarity in a window is negative).
NORM_EPS = 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the PyTorch backends: float64 stays, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _h(s: torch.Tensor, normalization: str) -> torch.Tensor:
    if normalization == "relu":
        return torch.relu(s)
    if normalization == "sigmoid":
        return torch.sigmoid(s)
    if normalization == "softplus":
        return F.softplus(s)
    raise AssertionError(normalization)


def _h_prime(s: torch.Tensor, normalization: str) -> torch.Tensor:
    if normalization == "relu":
        return (s > 0).to(s.dtype)
    if normalization == "sigmoid":
        sg = torch.sigmoid(s)
        return sg * (1 - sg)
    if normalization == "softplus":
        return torch.sigmoid(s)
    raise AssertionError(normalization)


def normalize_logits(
    logits: torch.Tensor, valid: Optional[torch.Tensor], normalization: str, dim: int
) -> torch.Tensor:
    """Turn similarities into kernel weights along ``dim`` (the K*K axis).

    ``valid`` (broadcastable bool, or None) marks window positions inside the map; positions
    outside take no part in the normalisation (``padding="ignore"``). With ``valid=None``
    every position counts (``padding="zeros"``: outside logits are 0).
    """
    if normalization == "softmax":
        if valid is not None:
            logits = logits.masked_fill(~valid, float("-inf"))
        return torch.softmax(logits, dim=dim)
    if normalization == "none":
        return logits if valid is None else logits * valid
    h = _h(logits, normalization)
    if valid is not None:
        h = h * valid
    return h / (h.sum(dim, keepdim=True) + NORM_EPS)


def normalize_backward(
    logits: torch.Tensor, w: torch.Tensor, gw: torch.Tensor, valid, normalization: str, dim: int
) -> torch.Tensor:
    """Gradient of :func:`normalize_logits` w.r.t. the logits, given the weights ``w``."""
    if normalization == "none":
        return gw if valid is None else gw * valid
    if normalization == "softmax":
        return w * (gw - (w * gw).sum(dim, keepdim=True))
    h = _h(logits, normalization)
    if valid is not None:
        h = h * valid
    denom = h.sum(dim, keepdim=True) + NORM_EPS
    gh = (gw - (w * gw).sum(dim, keepdim=True)) / denom
    gl = gh * _h_prime(logits, normalization)
    return gl if valid is None else gl * valid
