"""Fused Triton kernels for SAPA (``backend="triton"``).

Why fuse
--------
SAPA turns every output pixel into a tiny attention problem: one query (``d`` numbers)
against the ``K*K`` keys of a window around its low-resolution centre, a normalisation of
the ``K*K`` similarities, and a weighted sum of the ``K*K`` values. The official CUDA code
runs it as two kernels: the first writes the ``(B, H', W', K*K)`` similarities to global
memory, PyTorch normalises them (another read and write), the second reads them back and
assembles the output. For ``K = 5`` that is 25 numbers per output pixel written and read
twice, more than the output itself when ``C < 25``. The kernels below keep the ``K*K``
weights in registers: each input is read once (plus cache hits for overlapping windows),
the output is written once, and the only extra global tensor is one float per output pixel
that the backward pass needs (``sapa.traffic`` models the bytes of the three schemes).

Layout and indexing
-------------------
All tensors are contiguous NCHW. Output pixels are flattened, ``o = i * W' + j``; a tile is
``BLOCK_P`` consecutive flattened pixels, so the loads of one channel are contiguous (and
coalesced) along the tile. The window centre of ``(i, j)`` is
``(i * H // H', j * W // W')`` in integer arithmetic on non-negative numbers (exactly the
rule of ``sapa.window_centres``, valid for any ``H' >= H``, ``W' >= W``). A window position
``(y, x) = centre + (dy - R, dx - R)`` outside the map is handled by masked loads
(``other=0``): its key is 0, so its similarity is exactly 0, and its value is 0 -- that is
``padding="zeros"`` for free. For ``padding="ignore"`` its weight is forced to 0 instead
(``-inf`` before the online softmax, ``h = 0`` for the other normalisations). Batch offsets
are computed in int64; offsets inside one batch item are int32 (fine below 2**31
elements per item and tensor). Half-precision inputs are converted to float32 right after
every load; all arithmetic is float32; results are cast to the input dtype at the store.

Normalisations (constexpr ``NORM``): 0 softmax, 1 relu, 2 sigmoid, 3 softplus, 4 none.
``h`` is ``relu``, ``sigmoid`` or ``softplus`` and ``den = sum_p h(s_p) + NORM_EPS``.

Forward: ``_sapa_fwd_kernel``, grid (pixel tiles, channel blocks, B)
--------------------------------------------------------------------
1. Load the tile's queries ``q`` as a ``(BLOCK_P, BLOCK_D)`` block (``d`` padded to a power
   of two, masked).
2. Loop over the ``K*K`` window positions. For each: gather the keys (``BLOCK_P x BLOCK_D``)
   and compute the similarity by a broadcast multiply and a row sum (``d`` is small, 8 to
   64, below the 16 x 16 minimum of ``tl.dot`` and the product is a batch of dot products,
   not a matrix product); gather the values of this program's channel block
   (``BLOCK_P x BLOCK_C``).
3. softmax, *online*: keep a running maximum ``m`` and running sum ``l`` per pixel; a new
   logit ``s`` gives ``m' = max(m, s)``, rescales the accumulator and ``l`` by
   ``exp(m - m')`` and adds ``exp(s - m')`` times the value. The running maximum starts at
   -1e30 (finite) so that a leading ignored position (``-inf``) gives ``exp(-inf) = 0``
   rather than ``inf - inf``. h-normalisations need no rescaling: accumulate ``h(s) * v``
   and ``h(s)``. ``"none"`` accumulates ``s * v``.
4. Divide once at the end (``acc / l`` or ``acc / den``) and store the output block. The
   program of channel block 0 also stores the per-pixel statistic: ``lse = m + log l``
   (softmax) or ``den`` (relu/sigmoid/softplus); ``"none"`` needs none.

Channel blocks: every program recomputes the ``K*K`` similarities of its pixels (``d``
multiply-adds each) instead of one program looping over all ``C`` channels. The recompute
costs ``K*K*d`` per pixel and channel block, small next to the ``K*K*BLOCK_C`` of the
assembly, and it keeps the accumulator at ``BLOCK_P x BLOCK_C`` registers whatever ``C`` is
while giving the GPU ``C / BLOCK_C`` times more independent programs.

Backward
--------
With ``w_p`` the weights, ``g`` the output gradient of a pixel, ``gw_p = g . v_p`` and
``D = g . out = sum_p w_p gw_p`` (computed per pixel by ``_sapa_delta_kernel``, the
analogue of FlashAttention's ``delta``), the logit gradients are

* softmax: ``gs_p = w_p (gw_p - D)``, with ``w_p = exp(s_p - lse)`` recomputed;
* h-normalisations: ``gs_p = h'(s_p) (gw_p - D) / den`` with ``w_p = h(s_p) / den``;
* none: ``gs_p = gw_p``;

(ignored positions have ``w_p = gs_p = 0``) and then ``grad_q = sum_p gs_p k_p``,
``grad_k[l + p] += gs_p q``, ``grad_v[l + p] += w_p g``. Zero-padded positions need no
special case: their key and value are 0, so they contribute to ``D`` and ``lse`` (as they
should) but to no gradient.

* ``_sapa_bwd_q_kernel``, grid (output pixel tiles, B): per pixel tile, loop over the
  window; recompute ``s_p`` and ``w_p``; ``gw_p`` by a loop over channel blocks of ``g``
  and the gathered values; accumulate ``gs_p k_p`` in a ``BLOCK_P x BLOCK_D`` register
  block; one store.
* ``_sapa_bwd_v_kernel`` (grid (low-res pixel tiles, channel blocks, B)) and
  ``_sapa_bwd_k_kernel`` (grid (low-res pixel tiles, B)) gather instead of scatter: the
  gradient of low-res pixel ``(a, b)`` is computed by exactly one program. For window
  offset ``(dy, dx)`` the outputs that see ``(a, b)`` at that offset are those whose centre
  is ``(r, c) = (a - dy + R, b - dx + R)``; the output rows with centre ``r`` are the
  contiguous range ``[ceil(r H'/H), ceil((r+1) H'/H))``, at most ``MR = ceil(H'/H)`` rows
  (columns likewise, ``MC``). The kernel loops over ``(dy, dx)`` and ``MR x MC`` candidate
  outputs, masks the ones outside the range, recomputes ``s`` and ``w`` from ``q``, the own
  key and the saved statistic, and accumulates ``w g`` (values) or ``gs q`` (keys; ``gw`` by
  a loop over channel blocks). The value and key gradients are separate kernels because
  the key gradient needs all ``C`` channels for ``gw`` while the value gradient is tiled
  over channels.

No atomics, no ``(B, K*K, H', W')`` tensor, fixed loop orders: gradients are bitwise
reproducible from run to run. The forward saves ``q, k, v``, the output (for ``D``; in
half precision ``D`` is computed from the rounded output, as FlashAttention does) and the
per-pixel statistic. The price of not storing ``gs`` is arithmetic: the similarities are
recomputed by every backward kernel and ``gw_p`` (``C`` multiply-adds per output pixel and
window position) both by ``_sapa_bwd_q_kernel`` and ``_sapa_bwd_k_kernel``; for SAPA's
small ``d`` and ``K`` the kernels stay memory-bound anyway.

Running without a GPU
---------------------
Triton decides between compiling and its numpy interpreter when it is imported:
``TRITON_INTERPRET=1`` set *before* the first ``import triton`` turns ``triton.jit`` (and
Triton's own library functions such as ``tl.sum``) into interpreted functions that run on
CPU tensors, one program after the other; setting the variable later has no effect. So
the CPU path is a property of the process: :data:`INTERPRETED` records it, :func:`available`
accepts CPU tensors only in such a process (and CUDA tensors only outside one). The tests
run the interpreter in a child process started with the variable set. The interpreter is
slow (every kernel statement is a numpy call per program) and meant for tests only.
:func:`compile_kernels_aot` compiles every kernel to PTX and cubin for a given GPU
architecture without a GPU (``ptxas`` ships with the Triton wheel), in a process without
``TRITON_INTERPRET``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except Exception as exc:  # pragma: no cover - exercised only without triton
    raise ImportError(f"sapa.backends.triton needs Triton: {exc}") from exc

from ..normalize import NORM_EPS

__all__ = ["sapa_triton", "available", "compile_kernels_aot", "KERNEL_NAMES", "INTERPRETED"]

_NORM_CODE = {"softmax": 0, "relu": 1, "sigmoid": 2, "softplus": 3, "none": 4}


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------
@triton.jit
def _sapa_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, stat_ptr,
    d, C, Hq, Wq, H, W, eps,
    K: tl.constexpr, NORM: tl.constexpr, IGNORE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    R: tl.constexpr = K // 2
    HWq = Hq * Wq
    HW = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < HWq
    i = offs_p // Wq
    j = offs_p % Wq
    ci = (i * H) // Hq
    cj = (j * W) // Wq
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < d
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C

    q_base = q_ptr + pid_b * d * HWq
    k_base = k_ptr + pid_b * d * HW
    v_base = v_ptr + pid_b * C * HW
    q = tl.load(q_base + offs_d[None, :] * HWq + offs_p[:, None],
                mask=mask_p[:, None] & mask_d[None, :], other=0.0).to(tl.float32)

    m_i = tl.full([BLOCK_P], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_P], tl.float32)
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for dy in range(K):
        y = ci + (dy - R)
        in_y = (y >= 0) & (y < H)
        for dx in range(K):
            x = cj + (dx - R)
            inb = in_y & (x >= 0) & (x < W) & mask_p
            pix = y * W + x
            kk = tl.load(k_base + offs_d[None, :] * HW + pix[:, None],
                         mask=inb[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            s = tl.sum(q * kk, axis=1)
            vv = tl.load(v_base + offs_c[None, :] * HW + pix[:, None],
                         mask=inb[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            if NORM == 0:
                if IGNORE:
                    s = tl.where(inb, s, float("-inf"))
                m_new = tl.maximum(m_i, s)
                alpha = tl.exp(m_i - m_new)
                e = tl.exp(s - m_new)
                l_i = l_i * alpha + e
                acc = acc * alpha[:, None] + e[:, None] * vv
                m_i = m_new
            elif NORM == 4:
                acc += s[:, None] * vv  # ignored positions: vv = 0 already
            else:
                if NORM == 1:
                    h = tl.maximum(s, 0.0)
                elif NORM == 2:
                    h = 1.0 / (1.0 + tl.exp(-s))
                else:
                    h = tl.maximum(s, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(s)))
                if IGNORE:
                    h = tl.where(inb, h, 0.0)
                l_i += h
                acc += h[:, None] * vv
    if NORM == 0:
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        stat = m_i + tl.log(l_safe)
    elif NORM == 4:
        out = acc
        stat = l_i
    else:
        den = l_i + eps
        out = acc / den[:, None]
        stat = den
    o_base = out_ptr + pid_b * C * HWq
    tl.store(o_base + offs_c[None, :] * HWq + offs_p[:, None], out.to(out_ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_c[None, :])
    tl.store(stat_ptr + pid_b * HWq + offs_p, stat, mask=mask_p & ((offs_p * 0 + pid_c) == 0))


@triton.jit
def _sapa_delta_kernel(
    g_ptr, o_ptr, delta_ptr, C, HWq,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < HWq
    base = pid_b * C * HWq
    acc = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = mask_p[:, None] & (offs_c < C)[None, :]
        off = base + offs_c[None, :] * HWq + offs_p[:, None]
        g = tl.load(g_ptr + off, mask=m, other=0.0).to(tl.float32)
        o = tl.load(o_ptr + off, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(g * o, axis=1)
    tl.store(delta_ptr + pid_b * HWq + offs_p, acc, mask=mask_p)


@triton.jit
def _sapa_bwd_q_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, stat_ptr, delta_ptr, gq_ptr,
    d, C, Hq, Wq, H, W,
    K: tl.constexpr, NORM: tl.constexpr, IGNORE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    R: tl.constexpr = K // 2
    HWq = Hq * Wq
    HW = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < HWq
    i = offs_p // Wq
    j = offs_p % Wq
    ci = (i * H) // Hq
    cj = (j * W) // Wq
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < d

    q_base = q_ptr + pid_b * d * HWq
    k_base = k_ptr + pid_b * d * HW
    v_base = v_ptr + pid_b * C * HW
    g_base = g_ptr + pid_b * C * HWq
    q = tl.load(q_base + offs_d[None, :] * HWq + offs_p[:, None],
                mask=mask_p[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    stat = tl.load(stat_ptr + pid_b * HWq + offs_p, mask=mask_p, other=1.0)
    delta = tl.load(delta_ptr + pid_b * HWq + offs_p, mask=mask_p, other=0.0)
    gq = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
    for dy in range(K):
        y = ci + (dy - R)
        in_y = (y >= 0) & (y < H)
        for dx in range(K):
            x = cj + (dx - R)
            inb = in_y & (x >= 0) & (x < W) & mask_p
            pix = y * W + x
            kk = tl.load(k_base + offs_d[None, :] * HW + pix[:, None],
                         mask=inb[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            s = tl.sum(q * kk, axis=1)
            gw = tl.zeros([BLOCK_P], tl.float32)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                mc = (offs_c < C)[None, :]
                g = tl.load(g_base + offs_c[None, :] * HWq + offs_p[:, None],
                            mask=mask_p[:, None] & mc, other=0.0).to(tl.float32)
                vv = tl.load(v_base + offs_c[None, :] * HW + pix[:, None],
                             mask=inb[:, None] & mc, other=0.0).to(tl.float32)
                gw += tl.sum(g * vv, axis=1)
            if NORM == 0:
                w = tl.exp(s - stat)
                gs = w * (gw - delta)
            elif NORM == 4:
                gs = gw
            else:
                if NORM == 1:
                    hp = tl.where(s > 0, 1.0, 0.0)
                elif NORM == 2:
                    sg = 1.0 / (1.0 + tl.exp(-s))
                    hp = sg * (1.0 - sg)
                else:
                    hp = 1.0 / (1.0 + tl.exp(-s))
                gs = hp * (gw - delta) / stat
            if IGNORE:
                gs = tl.where(inb, gs, 0.0)
            gq += gs[:, None] * kk
    tl.store(gq_ptr + pid_b * d * HWq + offs_d[None, :] * HWq + offs_p[:, None],
             gq.to(gq_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_d[None, :])


@triton.jit
def _sapa_bwd_v_kernel(
    q_ptr, k_ptr, g_ptr, stat_ptr, gv_ptr,
    d, C, Hq, Wq, H, W, MR, MC,
    K: tl.constexpr, NORM: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    R: tl.constexpr = K // 2
    HWq = Hq * Wq
    HW = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # low-res pixels (a, b)
    mask_p = offs_p < HW
    a = offs_p // W
    b = offs_p % W
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < d
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C

    q_base = q_ptr + pid_b * d * HWq
    g_base = g_ptr + pid_b * C * HWq
    st_base = stat_ptr + pid_b * HWq
    kk = tl.load(k_ptr + pid_b * d * HW + offs_d[None, :] * HW + offs_p[:, None],
                 mask=mask_p[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    gv = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for dy in range(K):
        r = a - (dy - R)  # centre row of the outputs that see (a, b) at row offset dy
        ok_r = (r >= 0) & (r < H) & mask_p
        r = tl.where(ok_r, r, 0)
        i0 = (r * Hq + H - 1) // H
        i1 = ((r + 1) * Hq + H - 1) // H
        for dx in range(K):
            c = b - (dx - R)
            ok_c = (c >= 0) & (c < W) & ok_r
            c = tl.where(ok_c, c, 0)
            j0 = (c * Wq + W - 1) // W
            j1 = ((c + 1) * Wq + W - 1) // W
            for u in range(MR):
                oi = i0 + u
                ok_i = ok_c & (oi < i1)
                for t in range(MC):
                    oj = j0 + t
                    ok = ok_i & (oj < j1)
                    opix = oi * Wq + oj
                    qq = tl.load(q_base + offs_d[None, :] * HWq + opix[:, None],
                                 mask=ok[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                    s = tl.sum(qq * kk, axis=1)
                    stat = tl.load(st_base + opix, mask=ok, other=1.0)
                    if NORM == 0:
                        w = tl.exp(s - stat)
                    elif NORM == 4:
                        w = s
                    else:
                        if NORM == 1:
                            h = tl.maximum(s, 0.0)
                        elif NORM == 2:
                            h = 1.0 / (1.0 + tl.exp(-s))
                        else:
                            h = tl.maximum(s, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(s)))
                        w = h / stat
                    w = tl.where(ok, w, 0.0)
                    g = tl.load(g_base + offs_c[None, :] * HWq + opix[:, None],
                                mask=ok[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
                    gv += w[:, None] * g
    tl.store(gv_ptr + pid_b * C * HW + offs_c[None, :] * HW + offs_p[:, None],
             gv.to(gv_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _sapa_bwd_k_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, stat_ptr, delta_ptr, gk_ptr,
    d, C, Hq, Wq, H, W, MR, MC,
    K: tl.constexpr, NORM: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    R: tl.constexpr = K // 2
    HWq = Hq * Wq
    HW = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # low-res pixels (a, b)
    mask_p = offs_p < HW
    a = offs_p // W
    b = offs_p % W
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < d

    q_base = q_ptr + pid_b * d * HWq
    v_base = v_ptr + pid_b * C * HW
    g_base = g_ptr + pid_b * C * HWq
    st_base = stat_ptr + pid_b * HWq
    de_base = delta_ptr + pid_b * HWq
    kk = tl.load(k_ptr + pid_b * d * HW + offs_d[None, :] * HW + offs_p[:, None],
                 mask=mask_p[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    gk = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
    for dy in range(K):
        r = a - (dy - R)
        ok_r = (r >= 0) & (r < H) & mask_p
        r = tl.where(ok_r, r, 0)
        i0 = (r * Hq + H - 1) // H
        i1 = ((r + 1) * Hq + H - 1) // H
        for dx in range(K):
            c = b - (dx - R)
            ok_c = (c >= 0) & (c < W) & ok_r
            c = tl.where(ok_c, c, 0)
            j0 = (c * Wq + W - 1) // W
            j1 = ((c + 1) * Wq + W - 1) // W
            for u in range(MR):
                oi = i0 + u
                ok_i = ok_c & (oi < i1)
                for t in range(MC):
                    oj = j0 + t
                    ok = ok_i & (oj < j1)
                    opix = oi * Wq + oj
                    qq = tl.load(q_base + offs_d[None, :] * HWq + opix[:, None],
                                 mask=ok[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                    s = tl.sum(qq * kk, axis=1)
                    gw = tl.zeros([BLOCK_P], tl.float32)
                    for c0 in range(0, C, BLOCK_C):
                        offs_c = c0 + tl.arange(0, BLOCK_C)
                        mc = (offs_c < C)[None, :]
                        g = tl.load(g_base + offs_c[None, :] * HWq + opix[:, None],
                                    mask=ok[:, None] & mc, other=0.0).to(tl.float32)
                        vv = tl.load(v_base + offs_c[None, :] * HW + offs_p[:, None],
                                     mask=mask_p[:, None] & mc, other=0.0).to(tl.float32)
                        gw += tl.sum(g * vv, axis=1)
                    if NORM == 4:
                        gs = gw
                    else:
                        stat = tl.load(st_base + opix, mask=ok, other=1.0)
                        delta = tl.load(de_base + opix, mask=ok, other=0.0)
                        if NORM == 0:
                            gs = tl.exp(s - stat) * (gw - delta)
                        else:
                            if NORM == 1:
                                hp = tl.where(s > 0, 1.0, 0.0)
                            elif NORM == 2:
                                sg = 1.0 / (1.0 + tl.exp(-s))
                                hp = sg * (1.0 - sg)
                            else:
                                hp = 1.0 / (1.0 + tl.exp(-s))
                            gs = hp * (gw - delta) / stat
                    gs = tl.where(ok, gs, 0.0)
                    gk += gs[:, None] * qq
    tl.store(gk_ptr + pid_b * d * HW + offs_d[None, :] * HW + offs_p[:, None],
             gk.to(gk_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_d[None, :])


_KERNELS = {
    "fwd": _sapa_fwd_kernel,
    "delta": _sapa_delta_kernel,
    "bwd_q": _sapa_bwd_q_kernel,
    "bwd_v": _sapa_bwd_v_kernel,
    "bwd_k": _sapa_bwd_k_kernel,
}
#: names of the kernels, in launch order
KERNEL_NAMES: Tuple[str, ...] = tuple(_KERNELS)

#: True when this process runs Triton's interpreter: TRITON_INTERPRET=1 was set when Triton
#: (its standard library, e.g. ``tl.sum``) and this module were imported.
INTERPRETED = isinstance(tl.sum, InterpretedFunction) and isinstance(_sapa_fwd_kernel, InterpretedFunction)


def available(query: torch.Tensor) -> bool:
    """Whether ``backend="triton"`` can run on ``query``'s device and dtype.

    CUDA tensors: yes (Triton imported in normal, compiled mode). CPU tensors: only in an
    interpreter process, i.e. ``TRITON_INTERPRET=1`` set before ``triton`` was first
    imported (Triton decides at import time; the numpy interpreter is slow and meant for
    tests). float64 is not supported (the kernels accumulate in float32); the ``"torch"``
    backend handles it.
    """
    if query.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    if query.is_cuda:
        return not INTERPRETED
    return query.device.type == "cpu" and INTERPRETED


# --------------------------------------------------------------------------------------
# launch configuration
# --------------------------------------------------------------------------------------
def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _max_per_centre(n_out: int, n_in: int) -> int:
    """max over r of #{i : floor(i * n_in / n_out) == r} = ceil(n_out / n_in)."""
    return -(-n_out // n_in)


#: largest pixel and channel tiles of an interpreter launch (powers of two). Tests lower
#: them to exercise several tiles and partial channel blocks on tiny inputs.
INTERPRETER_BLOCKS = {"max_p": 1024, "max_c": 256}


def _cuda_blocks(d: int, C: int) -> Tuple[int, int, int]:
    """GPU tiles: 64 pixels (fewer for large d or C) x d (padded) x up to 64 channels."""
    BLOCK_D = _pow2(d)
    BLOCK_C = min(_pow2(C), 64)
    BLOCK_P = max(16, min(64, 4096 // max(BLOCK_D, BLOCK_C)))
    return BLOCK_P, BLOCK_D, BLOCK_C


def _blocks(t: torch.Tensor, n_pix: int, d: int, C: int) -> Tuple[int, int, int]:
    """(BLOCK_P, BLOCK_D, BLOCK_C) for a launch over ``n_pix`` pixels."""
    if t.is_cuda:
        return _cuda_blocks(d, C)
    # interpreter: few, large programs (each program step is one numpy call)
    BLOCK_C = min(_pow2(C), INTERPRETER_BLOCKS["max_c"])
    BLOCK_P = min(_pow2(n_pix), INTERPRETER_BLOCKS["max_p"])
    return BLOCK_P, _pow2(d), BLOCK_C


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _SapaTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, kernel_size, normalization, padding):
        q, k, v = query.contiguous(), key.contiguous(), value.contiguous()
        B, d, Hq, Wq = q.shape
        C, H, W = v.shape[1:]
        norm = _NORM_CODE[normalization]
        ignore = padding == "ignore"
        kern = _KERNELS
        out = torch.empty(B, C, Hq, Wq, device=q.device, dtype=q.dtype)
        stat = torch.empty(B, Hq * Wq, device=q.device, dtype=torch.float32)
        BP, BD, BC = _blocks(q, Hq * Wq, d, C)
        grid = (_cdiv(Hq * Wq, BP), _cdiv(C, BC), B)
        kern["fwd"][grid](
            q, k, v, out, stat, d, C, Hq, Wq, H, W, NORM_EPS,
            K=kernel_size, NORM=norm, IGNORE=ignore, BLOCK_P=BP, BLOCK_D=BD, BLOCK_C=BC,
        )
        ctx.save_for_backward(q, k, v, out, stat)
        ctx.cfg = (kernel_size, norm, ignore)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, stat = ctx.saved_tensors
        K, norm, ignore = ctx.cfg
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        g = grad_out.contiguous()
        if g.dtype != q.dtype:
            g = g.to(q.dtype)
        B, d, Hq, Wq = q.shape
        C, H, W = v.shape[1:]
        kern = _KERNELS
        MR, MC = _max_per_centre(Hq, H), _max_per_centre(Wq, W)

        delta = stat  # unused placeholder for "none"
        if norm != 4 and (need_q or need_k):
            delta = torch.empty(B, Hq * Wq, device=q.device, dtype=torch.float32)
            BP, _, BC = _blocks(q, Hq * Wq, 1, C)
            kern["delta"][(_cdiv(Hq * Wq, BP), B)](g, out, delta, C, Hq * Wq, BLOCK_P=BP, BLOCK_C=BC)

        gq = gk = gv = None
        if need_q:
            gq = torch.empty_like(q)
            BP, BD, BC = _blocks(q, Hq * Wq, d, C)
            kern["bwd_q"][(_cdiv(Hq * Wq, BP), B)](
                q, k, v, g, stat, delta, gq, d, C, Hq, Wq, H, W,
                K=K, NORM=norm, IGNORE=ignore, BLOCK_P=BP, BLOCK_D=BD, BLOCK_C=BC,
            )
        if need_k:
            gk = torch.empty_like(k)
            BP, BD, BC = _blocks(q, H * W, d, C)
            kern["bwd_k"][(_cdiv(H * W, BP), B)](
                q, k, v, g, stat, delta, gk, d, C, Hq, Wq, H, W, MR, MC,
                K=K, NORM=norm, BLOCK_P=BP, BLOCK_D=BD, BLOCK_C=BC,
            )
        if need_v:
            gv = torch.empty_like(v)
            BP, BD, BC = _blocks(q, H * W, d, C)
            kern["bwd_v"][(_cdiv(H * W, BP), _cdiv(C, BC), B)](
                q, k, g, stat, gv, d, C, Hq, Wq, H, W, MR, MC,
                K=K, NORM=norm, BLOCK_P=BP, BLOCK_D=BD, BLOCK_C=BC,
            )
        return gq, gk, gv, None, None, None


def sapa_triton(query, key, value, kernel_size=5, normalization="softmax", padding="zeros"):
    """The fused operator (inputs already validated by :func:`sapa.sapa_upsample`)."""
    if not available(query):
        raise RuntimeError(
            f"the Triton kernels cannot run on {query.device} tensors of dtype {query.dtype} in this "
            f"process (interpreter mode: {INTERPRETED}); CPU tensors need TRITON_INTERPRET=1 set "
            "before triton is imported, CUDA tensors need it unset"
        )
    return _SapaTritonFn.apply(query, key, value, kernel_size, normalization, padding)


# --------------------------------------------------------------------------------------
# ahead-of-time compilation (no GPU needed): used by the compile test
# --------------------------------------------------------------------------------------
_TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _aot_signature(name: str, dtype: str):
    """Triton signature (argument name -> type string) of kernel ``name`` for ``dtype``."""
    fn = _KERNELS[name]
    sig = {}
    for param in fn.params:
        arg = param.name
        if param.is_constexpr:
            sig[arg] = "constexpr"
        elif arg in ("stat_ptr", "delta_ptr"):
            sig[arg] = "*fp32"
        elif arg.endswith("_ptr"):
            sig[arg] = "*" + dtype
        elif arg == "eps":
            sig[arg] = "fp32"
        else:
            sig[arg] = "i32"
    return sig


def compile_kernels_aot(
    arch: int = 75,
    dtype: torch.dtype = torch.float32,
    kernels=None,
    kernel_size: int = 5,
    normalization: str = "softmax",
    padding: str = "zeros",
    d: int = 32,
    C: int = 64,
    num_warps: int = 4,
) -> Dict[str, Dict[str, object]]:
    """Compile kernels for ``sm_<arch>`` ahead of time, without a GPU.

    One specialization per kernel: the given ``kernel_size``, ``normalization``, ``padding``
    and the block sizes a CUDA launch would use for ``d`` and ``C``. Returns
    ``{kernel name: {"ptx": str, "cubin": bytes, "n_regs"/"shared": ...}}``.
    Uses ``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch,
    32))``; ``ptxas`` ships in the Triton wheel.
    """
    from triton.backends.compiler import GPUTarget

    if INTERPRETED:
        raise RuntimeError("compile_kernels_aot needs a process without TRITON_INTERPRET=1")

    target = GPUTarget("cuda", int(arch), 32)
    tdt = _TRITON_DTYPE[dtype]
    BP, BD, BC = _cuda_blocks(d, C)
    consts_all = {
        "K": kernel_size, "NORM": _NORM_CODE[normalization], "IGNORE": padding == "ignore",
        "BLOCK_P": BP, "BLOCK_D": BD, "BLOCK_C": BC,
    }
    result = {}
    for name in kernels or KERNEL_NAMES:
        fn = _KERNELS[name]
        sig = _aot_signature(name, tdt)
        consts = {k: v for k, v in consts_all.items() if k in fn.arg_names}
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
        ck = triton.compile(src, target=target, options={"num_warps": num_warps})
        result[name] = {
            "ptx": ck.asm["ptx"],
            "cubin": ck.asm["cubin"],
            "n_regs": getattr(ck, "n_regs", None),
            "shared": ck.metadata.shared,
        }
    return result
