"""The operator as K*K shifted slices: standard differentiable ops, no (K*K x C) tensor.

``shifted_upsample(query, key, value, kernel_size, normalization, padding)`` computes exactly
:func:`sapa.sapa_upsample` (same semantics, same dtype rules) with plain PyTorch ops:

* key and value are zero-padded by R = K // 2 once;
* for each window position p = (dy, dx) the logit is a channel sum of the query times the
  key shifted by (dy, dx) and nearest-upsampled to the query's size, (B, H', W');
* the K*K logits, (B, K*K, H', W'), are normalised (softmax, relu, ...) in one go;
* the output is a running sum over p of weight p times the shifted value (B, C, H', W').

For integer scales (H' = s H, W' = t W) the nearest upsampling is a broadcast over a
(B, c, H, s, W, t) view, so no shifted map is ever upsampled in memory; other sizes gather
the shifted rows and columns. Peak memory: inputs, output, the (B, K*K, H', W') weights and one
product of output size; the (B, C, K*K, H', W') tensor of the reference backend never exists.

Used where an opaque fused kernel cannot go:

* the ONNX exporters (``torch.onnx.export``): the graph is K*K Slice/Mul/ReduceSum/Add steps,
  runs in onnxruntime at a few times the fused CPU kernel's time, any batch size (also 0);
* derivatives of the fused backends beyond the first order (double backward, e.g. a gradient
  penalty, and forward mode: ``torch.func.jvp``, ``jacfwd``, ``hessian``; see
  :mod:`sapa.library`), which differentiate this formulation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .normalize import compute_dtype, normalize_logits
from .windows import window_centres

__all__ = ["shifted_upsample"]


def shifted_upsample(query, key, value, kernel_size: int, normalization: str, padding: str) -> torch.Tensor:
    """query (B, d, H', W'), key (B, d, H, W), value (B, C, H, W) -> (B, C, H', W').

    Arguments as :func:`sapa.sapa_upsample` (already validated by it); dtype of the inputs,
    half precision computed in float32. Differentiable to any order by autograd and
    ``torch.func``.
    """
    out_dtype = query.dtype
    ct = compute_dtype(out_dtype)
    q, k, v = (t if t.dtype == ct else t.to(ct) for t in (query, key, value))  # no Cast node when equal
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1], v.shape[2], v.shape[3]
    K, R = kernel_size, kernel_size // 2
    kp = F.pad(k, (R, R, R, R))
    vp = F.pad(v, (R, R, R, R))
    exact = Hq % H == 0 and Wq % W == 0
    if exact:
        out = _exact(q, kp, vp, K, normalization, padding, int(Hq // H), int(Wq // W))
    else:
        out = _gathered(q, kp, vp, K, normalization, padding)
    return out if out.dtype == out_dtype else out.to(out_dtype)


#: floats per batch item of one chunk's accumulator: small enough to stay in a core's cache
#: while the K*K steps run over it (ONNX Runtime runs the graph node by node)
CHUNK_FLOATS = 1 << 16


def _valid(H: int, W: int, K: int, like: torch.Tensor, shifted, positions, cdim: int) -> torch.Tensor:
    R = K // 2
    ones = F.pad(torch.ones(1, 1, H, W, dtype=like.dtype, device=like.device), (R, R, R, R))
    return torch.stack([shifted(ones, dy, dx).sum(cdim) for dy, dx in positions], 1) > 0


def _exact(q, kp, vp, K, normalization, padding, s, t):
    """Integer scales (H' = s H, W' = t W). Output (i, j) = (a*s + u, b*t + w) with centre (a, b)
    is element (u, w, a, b) of a (B, c, s, t, H, W) tensor: a shifted low-res map
    (B, c, 1, 1, H, W) broadcasts over the phases with contiguous (H, W) planes. Returns
    (B, C, H', W')."""
    B, d = q.shape[:2]
    H, W = kp.shape[2] - K + 1, kp.shape[3] - K + 1
    C = vp.shape[1]
    positions = [divmod(p, K) for p in range(K * K)]
    qph = q.reshape(B, d, H, s, W, t).permute(0, 3, 5, 1, 2, 4)  # (B, s, t, d, H, W)
    phases = [qph[:, u, w] for u in range(s) for w in range(t)]  # (B, d, H, W) each
    # logits (B, K*K, s, t, H, W), one (position, phase) at a time: each product stays small
    rows = []
    for dy, dx in positions:
        ks = kp[:, :, dy : dy + H, dx : dx + W]
        rows.append(torch.stack([(qp * ks).sum(1) for qp in phases], 1))
    logits = torch.stack(rows, 1).reshape(B, K * K, s, t, H, W)
    valid = None
    if padding == "ignore":  # (1, K*K, 1, 1, H, W): window positions inside the map
        ones = F.pad(torch.ones(1, 1, H, W, dtype=q.dtype, device=q.device), (K // 2,) * 4)
        valid = torch.stack([ones[:, 0, dy : dy + H, dx : dx + W] for dy, dx in positions], 1)[:, :, None, None] > 0
    w = normalize_logits(logits, valid, normalization, dim=1)
    weights = [w[:, p : p + 1] for p in range(K * K)]  # (B, 1, s, t, H, W)
    # values: a running sum over the K*K positions, channel chunk by channel chunk
    step = max(1, CHUNK_FLOATS // (s * t * H * W))
    chunks = []
    for vc in (vp.split(step, dim=1) if step < C else (vp,)):
        acc = None
        for wp, (dy, dx) in zip(weights, positions):
            term = wp * vc[:, :, None, None, dy : dy + H, dx : dx + W]
            acc = term if acc is None else acc + term
        # (B, c, s, t, H, W) -> (B, c, H', W'): DepthToSpace in ONNX when s == t
        c = acc.shape[1]
        if s == t:
            chunks.append(F.pixel_shuffle(acc.reshape(B, c * s * t, H, W), s))
        else:
            chunks.append(acc.permute(0, 1, 4, 2, 5, 3).reshape(B, c, H * s, W * t))
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, 1)


def _gathered(q, kp, vp, K, normalization, padding):
    """Any sizes: the shifted maps gathered at the output pixels' centres, (B, c, H', W')."""
    Hq, Wq = q.shape[2:]
    H, W = kp.shape[2] - K + 1, kp.shape[3] - K + 1
    rows = window_centres(Hq, H, q.device)
    cols = window_centres(Wq, W, q.device)
    positions = [divmod(p, K) for p in range(K * K)]

    def shifted(x, dy, dx):
        return x.index_select(2, rows + dy).index_select(3, cols + dx)

    logits = torch.stack([(q * shifted(kp, dy, dx)).sum(1) for dy, dx in positions], 1)
    valid = _valid(H, W, K, q, shifted, positions, 1) if padding == "ignore" else None
    w = normalize_logits(logits, valid, normalization, dim=1).unsqueeze(2)  # (B, K*K, 1, H', W')
    out = None
    for p, (dy, dx) in enumerate(positions):
        term = w[:, p] * shifted(vp, dy, dx)
        out = term if out is None else out + term
    return out
