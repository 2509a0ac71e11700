"""The operator as standard differentiable ops: no opaque kernel, no (K*K x C) tensor.

Two formulations of :func:`sapa.sapa_upsample` (same semantics, same dtype rules: half
precision computed in float32), each for the place where the fused kernels cannot go:

``shifted_upsample`` -- derivatives beyond the first order (double backward, e.g. a gradient
penalty, and forward mode: ``torch.func.jvp``, ``jacfwd``, ``hessian``; see
:mod:`sapa.library`), which autograd takes through it:

* key and value are zero-padded by R = K // 2 once;
* for each window position p = (dy, dx) the logit is a channel sum of the query times the
  key shifted by (dy, dx), (B, H', W'); the K*K logits are normalised in one go;
* the output is a running sum over p of weight p times the shifted value, channel chunk by
  channel chunk (:data:`CHUNK_FLOATS`), so each sum stays in a core's cache.

``export_upsample`` -- the ONNX exporters (``torch.onnx.export``, TorchScript and dynamo):
for integer scales s = H'/H, t = W'/W a graph whose size depends on K alone, whatever C, H
and W (K = 5: about 100 nodes from the dynamo exporter, about 330 from TorchScript, half of
them constants):

* pixel-major layout: the query as (B, H, s, W, d, t) (its t phases per low-res pixel), key
  and value as padded (B, Hp, Wp, c) maps;
* for each window row dy, one ``Gather`` of the K column shifts, (B, H, W, K, c), and one
  batched ``MatMul`` per pixel: logits (K x d) @ (d x t), values (t x K) @ (K x C);
* one transpose of the (B, H, s, W, t, c) sum to (B, c, H', W') per channel chunk
  (:data:`EXPORT_CHANNEL_CHUNKS` of them: the live tensors stay near twice the output).

Sizes enter only through ``Shape``/``Range`` nodes (every reshape names its sizes: ONNX
Runtime cannot resolve a -1 in an empty batch), so the exported graph takes any batch
(also 0) and any spatial size with the exported integer ratios. Non-integer ratios fall back
to ``shifted_upsample``'s gathered form (sizes fixed at export).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .normalize import compute_dtype, normalize_logits
from .windows import window_centres

__all__ = ["shifted_upsample", "export_upsample"]


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

#: channel chunks of the exported graph's value aggregation (a fixed count: the graph's size
#: does not depend on C); more chunks, lower peak memory, more nodes
EXPORT_CHANNEL_CHUNKS = 4


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


def export_upsample(query, key, value, kernel_size: int, normalization: str, padding: str) -> torch.Tensor:
    """query (B, d, H', W'), key (B, d, H, W), value (B, C, H, W) -> (B, C, H', W'), for export.

    Arguments as :func:`sapa.sapa_upsample` (already validated by it). For integer scales the
    graph's node count depends on K only (see the module docstring); other sizes use
    :func:`shifted_upsample`. Differentiable by autograd, but slower there than
    ``shifted_upsample`` (the backward of a gather is a scatter).
    """
    B, d, Hq, Wq = query.shape
    H, W = key.shape[2], key.shape[3]
    if H == 0 or W == 0 or Hq % H or Wq % W:
        return shifted_upsample(query, key, value, kernel_size, normalization, padding)
    out_dtype = query.dtype
    ct = compute_dtype(out_dtype)
    q, k, v = (t if t.dtype == ct else t.to(ct) for t in (query, key, value))
    s, t = int(Hq // H), int(Wq // W)
    K, R = kernel_size, kernel_size // 2
    C = v.shape[1]
    # every reshape names its sizes (read off the inputs' shapes: Shape nodes in ONNX), never -1,
    # which ONNX Runtime cannot resolve for an empty batch
    cols = torch.arange(W, device=q.device)[:, None] + torch.arange(K, device=q.device)  # (W, K)
    # one Gather per window row in both exporters' graphs: tensor indexing is a Gather for the
    # TorchScript exporter but GatherND between two transposes for dynamo (2x slower in ONNX
    # Runtime); index_select + reshape is a Gather for dynamo (its reshape costs TorchScript's
    # graph a Shape/Unsqueeze/Concat chain per call)
    by_index = not torch.compiler.is_exporting()
    flat_cols = None if by_index else cols.flatten()

    def band(x, dy, shape):  # padded (B', Hp, Wp, c) -> (B', H, W, K, c): window row dy of every pixel
        end = dy - (K - 1)
        rows = x[:, dy : end if end else None]
        return rows[:, :, cols] if by_index else rows.index_select(2, flat_cols).reshape(shape)

    def pixel_major(x):  # (B, c, H, W) -> zero-padded (B, Hp, Wp, c)
        return F.pad(x, (R, R, R, R)).permute(0, 2, 3, 1)

    kf, vf = pixel_major(k), pixel_major(v)
    # query (B, d, H', W') -> (B, H, s, W, d, t): the t column phases of each (row phase, pixel)
    qt = q.permute(0, 2, 3, 1).reshape(B, H, s, W, t, d).transpose(-1, -2)
    # logits (B, H, s, W, K*K, t): per dy, (K x d) @ (d x t) at every pixel (s broadcast)
    logits = torch.cat([band(kf, dy, (B, H, W, K, d)).unsqueeze(2) @ qt for dy in range(K)], -2)
    valid = None
    if padding == "ignore":  # (1, H, 1, W, K*K, 1): window positions inside the map
        ones = pixel_major(k.new_ones((1, 1, H, W)))
        valid = torch.cat([band(ones, dy, (1, H, W, K, 1))[..., 0] for dy in range(K)], -1)[:, :, None, :, :, None] > 0
    w = normalize_logits(logits, valid, normalization, dim=-2).transpose(-1, -2)  # (B, H, s, W, t, K*K)
    # values in EXPORT_CHANNEL_CHUNKS channel chunks: each chunk's gathered rows, running sum and
    # transposed result are a fraction of the output, so the graph's live tensors peak at the
    # final concatenation (the chunks and the output: about twice the output)
    outs = []
    for vc in vf.tensor_split(max(1, min(EXPORT_CHANNEL_CHUNKS, C)), dim=-1):
        c = vc.shape[-1]
        acc = None
        for dy in range(K):  # (t x K) @ (K x c) at every pixel: (B, H, s, W, t, c)
            term = w[..., dy * K : (dy + 1) * K] @ band(vc, dy, (B, H, W, K, c)).unsqueeze(2)
            acc = term if acc is None else acc + term
        outs.append(acc.permute(0, 5, 1, 2, 3, 4).reshape(B, c, Hq, Wq))  # (B, c, H, s, W, t) -> (B, c, H', W')
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
    return out if out.dtype == out_dtype else out.to(out_dtype)
