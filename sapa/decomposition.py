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
    q, k, v = query.to(ct), key.to(ct), value.to(ct)
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1], v.shape[2], v.shape[3]
    K, R = kernel_size, kernel_size // 2
    kp = F.pad(k, (R, R, R, R))
    vp = F.pad(v, (R, R, R, R))
    exact = Hq % H == 0 and Wq % W == 0
    if exact:  # phases: output (i, j) = (a*s + u, b*t + w), centre (a, b)
        s, t = Hq // H, Wq // W
        q6 = q.reshape(B, d, H, s, W, t)

        def shifted(x, dy, dx):  # (B, c, H, 1, W, 1): broadcast over the phases
            return x[:, :, dy : dy + H, None, dx : dx + W, None]
    else:
        rows = window_centres(Hq, H, q.device)
        cols = window_centres(Wq, W, q.device)
        q6 = q

        def shifted(x, dy, dx):  # (B, c, H', W') gathered at the shifted centres
            return x.index_select(2, rows + dy).index_select(3, cols + dx)

    positions = [divmod(p, K) for p in range(K * K)]
    logits = torch.stack([(q6 * shifted(kp, dy, dx)).sum(1) for dy, dx in positions], 1)
    valid = None
    if padding == "ignore":  # window positions inside the low-res map, (1, K*K, ...) bool
        ones = F.pad(torch.ones(1, 1, H, W, dtype=ct, device=q.device), (R, R, R, R))
        valid = torch.cat([shifted(ones, dy, dx).expand((1, 1) + tuple(q6.shape[2:])) for dy, dx in positions], 1) > 0
    w = normalize_logits(logits, valid, normalization, dim=1)
    out = None
    for p, (dy, dx) in enumerate(positions):
        term = w[:, p : p + 1] * shifted(vp, dy, dx)
        out = term if out is None else out + term
    return out.reshape(B, C, Hq, Wq).to(out_dtype)
