"""A model of the global-memory bytes that one SAPA forward pass moves.

Three ways to compute ``sapa_upsample`` (query (B, d, H', W'), key (B, d, H, W),
value (B, C, H, W), K x K windows, H' = s H, W' = s W):

``"materialised"``  unfold + gather + einsum (the ``"reference"`` backend): the unfolded key
                    and value maps and their gathered (B, c, K*K, H', W') copies are written
                    and read back, then logits, weights and the output.
``"two_kernel"``    the official CUDA code: kernel 1 writes the (B, H', W', K*K) logits, a
                    PyTorch softmax reads them and writes the weights, kernel 2 reads the
                    weights and the values and writes the output.
``"fused"``         ``sapa.backends.triton``: every input read once, the output written once, plus
                    one float32 statistic (log-sum-exp) per output pixel for the backward.

The model counts each tensor access once (reads of overlapping windows are assumed to
hit the cache, as they mostly do on a GPU) and ignores index tensors. It is a lower bound
for each scheme, meant to compare them, not to predict a profiler's numbers exactly.
Notation below: ``N = B H' W'`` output pixels, ``n = B H W`` low-res pixels, ``P = K*K``,
``b = dtype_bytes``.
"""
from __future__ import annotations

from typing import Dict

__all__ = ["bytes_moved", "METHODS", "bytes_breakdown", "backward_breakdown", "backward_bytes",
           "SCRATCH_BYTES"]

METHODS = ("materialised", "two_kernel", "fused")

#: bytes of the float32 per-pixel statistic the fused forward saves for its backward
STAT_BYTES = 4
#: bytes of one element of the fused backward's float32 scratch (weights, logit gradients)
SCRATCH_BYTES = 4


def _sizes(B, H, W, s):
    Hq, Wq = int(round(s * H)), int(round(s * W))
    if Hq < H or Wq < W:
        raise ValueError(f"the scale s must be >= 1, got {s}")
    return B * Hq * Wq, B * H * W


def bytes_breakdown(B: int, C: int, d: int, K: int, s: float, H: int, W: int,
                    dtype_bytes: int, method: str) -> Dict[str, int]:
    """The terms of :func:`bytes_moved`, by step (same units: bytes)."""
    N, n = _sizes(B, H, W, s)
    P, b = K * K, dtype_bytes
    inputs = b * (d * N + d * n + C * n)  # query, key, value read once
    output = b * C * N
    if method == "fused":
        return {"read q, k, v": inputs, "write out": output, "write lse": STAT_BYTES * N}
    if method == "two_kernel":
        return {
            "kernel 1: read q, k": b * (d * N + d * n),
            "kernel 1: write logits": b * P * N,
            "softmax: read logits, write weights": 2 * b * P * N,
            "kernel 2: read weights": b * P * N,
            "kernel 2: read v": b * C * n,
            "kernel 2: write out": output,
        }
    if method == "materialised":
        return {
            "unfold k: read k, write (d, P, n)": b * (d * n + d * P * n),
            "gather k: read and write (d, P, N)": 2 * b * d * P * N,
            "unfold v: read v, write (C, P, n)": b * (C * n + C * P * n),
            "gather v: read and write (C, P, N)": 2 * b * C * P * N,
            "logits: read q and gathered k, write (P, N)": b * (d * N + d * P * N + P * N),
            "softmax: read and write (P, N)": 2 * b * P * N,
            "assembly: read weights and gathered v, write out": b * (P * N + C * P * N) + output,
        }
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def bytes_moved(B: int, C: int, d: int, K: int, s: float, H: int, W: int,
                dtype_bytes: int, method: str) -> int:
    """Modelled global-memory bytes of one forward pass.

    With ``N = B*H'*W'`` (``H' = round(s*H)``, ``W' = round(s*W)``), ``n = B*H*W``,
    ``P = K*K``, ``b = dtype_bytes``:

    * ``"fused"``:        ``b (dN + dn + Cn + CN) + 4N``
      (q, k, v read once, output written once, float32 log-sum-exp written).
    * ``"two_kernel"``:   ``b (dN + dn + 4PN + Cn + CN)``
      (logits written, read and weights written by the softmax, weights read: 4PN).
    * ``"materialised"``: ``b (dn + dPn + 2dPN + Cn + CPn + 2CPN + dN + dPN + PN + 2PN + PN + CPN + CN)``
      = ``b (dn + Cn + (d + C) P n + 3 (d + C) P N + dN + 4PN + CN)``
      (unfold writes (c, P, n), the gather reads and writes (c, P, N), the logit einsum
      reads the gathered keys, the assembly reads the gathered values).

    ``fused <= two_kernel <= materialised`` whenever ``b P >= 1``.
    """
    return int(sum(bytes_breakdown(B, C, d, K, s, H, W, dtype_bytes, method).values()))


def backward_breakdown(B: int, C: int, d: int, K: int, s: float, H: int, W: int, dtype_bytes: int,
                       needs=(True, True, True)) -> Dict[str, int]:
    """Modelled global-memory bytes of the fused backward pass, by kernel and tensor.

    Same notation and assumptions as :func:`bytes_breakdown`; ``needs`` says which of the
    query, key and value gradients are computed. With ``S = SCRATCH_BYTES = 4``:

    * query-gradient kernel: reads ``q`` (dN), ``k`` (dn), ``g`` (CN) and the statistic (4N);
      if ``grad_q`` or ``grad_k`` is needed, also ``v`` (Cn) and the round trip of
      ``gw_p = g . v_p`` through the scratch (S PN written in its first pass, read in its
      second), the logit gradients written for the key gradient (S PN) and ``grad_q`` (dN);
      if ``grad_v`` is needed, the weights written (S PN);
    * key-gradient kernel: reads the logit gradients (S PN) and ``q`` (dN), writes ``grad_k`` (dn);
    * value-gradient kernel: reads the weights (S PN) and ``g`` (CN), writes ``grad_v`` (Cn).
    """
    N, n = _sizes(B, H, W, s)
    P, b, S = K * K, dtype_bytes, SCRATCH_BYTES
    need_q, need_k, need_v = (bool(x) for x in needs)
    need_gw = need_q or need_k
    terms = {"q-kernel: read q, k, g, stat": b * (d * N + d * n + C * N) + STAT_BYTES * N}
    if need_gw:
        terms["q-kernel: read v"] = b * C * n
        terms["q-kernel: gw scratch (write, read)"] = 2 * S * P * N
    if need_q:
        terms["q-kernel: write grad_q"] = b * d * N
    if need_k:
        terms["q-kernel: write logit gradients"] = S * P * N
        terms["k-kernel: read logit gradients and q, write grad_k"] = S * P * N + b * (d * N + d * n)
    if need_v:
        terms["q-kernel: write weights"] = S * P * N
        terms["v-kernel: read weights and g, write grad_v"] = S * P * N + b * (C * N + C * n)
    return terms


def backward_bytes(B: int, C: int, d: int, K: int, s: float, H: int, W: int, dtype_bytes: int,
                   needs=(True, True, True)) -> int:
    """Total of :func:`backward_breakdown`. With every gradient:
    ``b (3dN + 2dn + 2Cn + 2CN) + 4N + 6 S PN`` (S = 4)."""
    return int(sum(backward_breakdown(B, C, d, K, s, H, W, dtype_bytes, needs).values()))
