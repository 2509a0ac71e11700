"""Backend ``"reference"``: the direct, materialised formulation (unfold + einsum).

Materialises the (B, C, K*K, H', W') gathered values: the teaching version and the test
oracle. Plain differentiable PyTorch ops, so autograd, ``torch.compile``, ``torch.export``
and the ONNX exporters see through it (it has no ``backward`` of its own).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..normalize import compute_dtype, normalize_logits
from ..windows import window_centres

__all__ = ["forward", "reference_weights"]


def reference_weights(q, k, kernel_size, normalization, padding):
    """(B, K*K, H', W') kernel weights from q (B, d, H', W') and k (B, d, H, W)."""
    B, d, Hq, Wq = q.shape
    H, W = k.shape[-2:]
    K, R = kernel_size, kernel_size // 2
    rows = window_centres(Hq, H, q.device)
    cols = window_centres(Wq, W, q.device)
    k_unf = F.unfold(k, K, padding=R).view(B, d, K * K, H, W)[..., rows, :][..., cols]
    logits = torch.einsum("bdhw,bdkhw->bkhw", q, k_unf)
    valid = None
    if padding == "ignore":
        ones = torch.ones(1, 1, H, W, dtype=q.dtype, device=q.device)
        valid = F.unfold(ones, K, padding=R).view(1, K * K, H, W)[..., rows, :][..., cols] > 0
    return normalize_logits(logits, valid, normalization, dim=1)


def forward(query, key, value, kernel_size, normalization, padding):
    """(B, C, H', W') output and an empty statistic (this backend needs no saved state)."""
    out_dtype = query.dtype
    ct = compute_dtype(out_dtype)
    q, k, v = query.to(ct), key.to(ct), value.to(ct)
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1:]
    K, R = kernel_size, kernel_size // 2
    rows = window_centres(Hq, H, q.device)
    cols = window_centres(Wq, W, q.device)
    # the zero-padded K x K windows of every low-res pixel, (B, C, K*K, H, W), gathered at the
    # window centre of every output pixel: (B, C, K*K, H', W')
    v_unf = F.unfold(v, K, padding=R).view(B, C, K * K, H, W)[..., rows, :][..., cols]
    weights = reference_weights(q, k, K, normalization, padding)
    out = torch.einsum("bkhw,bckhw->bchw", weights, v_unf)
    return out.to(out_dtype), query.new_empty(0, dtype=torch.float32)
