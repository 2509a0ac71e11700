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
are computed in int64; offsets inside one batch item are int32, and
:func:`check_index_range` raises a ValueError before any launch where they could overflow
(``max(C, d, K*K) * H' * W' >= 2**31``, e.g. C = 512 at 2048 x 2048). Half-precision inputs are converted to float32 right after
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
``D = g . out = sum_p w_p gw_p`` (the analogue of FlashAttention's ``delta``), the logit
gradients are

* softmax: ``gs_p = w_p (gw_p - D)``, with ``w_p = exp(s_p - lse)`` recomputed;
* h-normalisations: ``gs_p = h'(s_p) (gw_p - D) / den`` with ``w_p = h(s_p) / den``;
* none: ``gs_p = gw_p``;

(ignored positions have ``w_p = gs_p = 0``) and then ``grad_q = sum_p gs_p k_p``,
``grad_k[l + p] += gs_p q``, ``grad_v[l + p] += w_p g``. Zero-padded positions need no
special case: their key and value are 0, so they contribute to ``D`` and ``lse`` (as they
should) but to no gradient. Three kernels:

* ``_sapa_bwd_q_kernel``, grid (output pixel tiles, B). Pass 1 loops over the window:
  ``gw_p`` by a loop over channel blocks of ``g`` and the gathered values (the only
  ``C``-long work of the backward, done once per output pixel and window position), kept in a
  float32 scratch ``(B, K*K, H'W')``, and ``D = sum_p w_p gw_p`` in float32 (from the
  weights, not from the stored output, which is rounded in half precision: no extra kernel
  and no read of the output). Pass 2 (after a barrier: it reads what other threads of the
  program stored) loops over the window again, recomputes ``s_p`` and ``w_p`` (``d``
  multiply-adds), turns ``gw_p`` into ``gs_p``, accumulates ``gs_p k_p`` in a
  ``BLOCK_P x BLOCK_D`` register block, and stores ``gs_p`` (for the key gradient) and
  ``w_p`` (for the value gradient) in the scratch.
* ``_sapa_bwd_gather_kernel``, launched twice (key gradient, value gradient), grid
  (low-res pixel tiles, feature blocks, B), gather instead of scatter: the gradient of
  low-res pixel ``(a, b)`` is computed by exactly one program. For window offset ``(dy, dx)`` the outputs that see ``(a, b)`` at
  that offset are those whose centre is ``(r, c) = (a - dy + R, b - dx + R)``; the output
  rows with centre ``r`` are the contiguous range ``[ceil(r H'/H), ceil((r+1) H'/H))``, at
  most ``MR = ceil(H'/H)`` rows (columns likewise, ``MC``). ``_gather_offset`` loops over the
  ``MR x MC`` candidates, masks the ones outside the range, and accumulates the stored
  coefficient times the output-resolution tensor: ``gs q`` (keys, blocks of ``d``) or
  ``w g`` (values, blocks of ``C``). Nothing is recomputed, and splitting the features into
  blocks gives the key gradient ``d / BLOCK_F`` times more programs.

No atomics, no saved ``(B, K*K, H', W')`` tensor (the scratch lives only during the
backward), fixed loop orders: gradients are bitwise reproducible from run to run. The
forward keeps ``q, k, v`` and the per-pixel statistic.

Launch configuration and registers
----------------------------------
:func:`cuda_config` picks the tiles and warps of every GPU launch. A thread keeps its share of
every ``BLOCK_P x BLOCK_C`` tile in registers, and Triton also holds one 64-bit address per
element of a gathered tile, so large tiles exceed the 255-register limit and *spill* to
local memory. The configurations use 4 warps with an explicit cap of 168 registers (three
programs per SM; without a cap ptxas sometimes picks 128 and spills) and tiles that fit
under it: ``tests/test_triton_compile.py`` compiles every launch for sm_80 and sm_90 with the
runtime's own argument specialisation and fails on any spill reported by ``ptxas -v``. The
window loops are ``range(K)`` loops over a compile-time ``K``: fully unrolled
(``tl.static_range``) the compiler hoists the loads of all ``K*K`` positions and the forward
spilled tens of kilobytes per thread.

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
:func:`compile_launch_aot` compiles a launch (:func:`launches_for_sizes`) to PTX and cubin
for a given GPU architecture without a GPU (``ptxas`` ships with the Triton wheel), in a
process without ``TRITON_INTERPRET``, and reports its registers and spills.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Tuple

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except Exception as exc:  # pragma: no cover - exercised only without triton
    raise ImportError(f"sapa.backends.triton needs Triton: {exc}") from exc

from ..normalize import NORM_EPS

__all__ = ["forward", "backward", "available", "auto", "sapa_triton", "triton_forward", "triton_backward",
           "check_index_range", "cuda_config", "launches_for_sizes", "compile_launch_aot", "KERNEL_NAMES",
           "INTERPRETED"]

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
def _sapa_bwd_q_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, stat_ptr, gq_ptr, w_ptr, gs_ptr,
    d, C, Hq, Wq, H, W,
    K: tl.constexpr, NORM: tl.constexpr, IGNORE: tl.constexpr,
    NEED_GQ: tl.constexpr, NEED_GS: tl.constexpr, NEED_W: tl.constexpr,
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
    sc_base = pid_b * (K * K) * HWq + offs_p  # scratch (B, K*K, H'W') offsets of window position 0
    q = tl.load(q_base + offs_d[None, :] * HWq + offs_p[:, None],
                mask=mask_p[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    stat = tl.load(stat_ptr + pid_b * HWq + offs_p, mask=mask_p, other=1.0)
    delta = tl.zeros([BLOCK_P], tl.float32)
    if NEED_GQ or NEED_GS:
        # pass 1: gw_p = g . v_p for every window position (C multiply-adds each), kept in the
        # logit-gradient scratch, and D = g . out = sum_p w_p gw_p (FlashAttention's "delta",
        # in float32 from the weights rather than from the rounded output)
        for dy in range(K):
            y = ci + (dy - R)
            in_y = (y >= 0) & (y < H)
            for dx in range(K):
                x = cj + (dx - R)
                inb = in_y & (x >= 0) & (x < W) & mask_p
                pix = y * W + x
                gw = tl.zeros([BLOCK_P], tl.float32)
                for c0 in range(0, C, BLOCK_C):
                    offs_c = c0 + tl.arange(0, BLOCK_C)
                    mc = (offs_c < C)[None, :]
                    g = tl.load(g_base + offs_c[None, :] * HWq + offs_p[:, None],
                                mask=mask_p[:, None] & mc, other=0.0).to(tl.float32)
                    vv = tl.load(v_base + offs_c[None, :] * HW + pix[:, None],
                                 mask=inb[:, None] & mc, other=0.0).to(tl.float32)
                    gw += tl.sum(g * vv, axis=1)
                if NORM != 4:
                    kk = tl.load(k_base + offs_d[None, :] * HW + pix[:, None],
                                 mask=inb[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                    s = tl.sum(q * kk, axis=1)
                    if NORM == 0:
                        w = tl.exp(s - stat)
                    elif NORM == 1:
                        w = tl.maximum(s, 0.0) / stat
                    elif NORM == 2:
                        w = 1.0 / (1.0 + tl.exp(-s)) / stat
                    else:
                        w = (tl.maximum(s, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(s)))) / stat
                    if IGNORE:
                        w = tl.where(inb, w, 0.0)
                    delta += w * gw
                tl.store(gs_ptr + sc_base + (dy * K + dx) * HWq, gw, mask=mask_p)
        tl.debug_barrier()  # pass 2 reads gw values that other threads of this program stored
    # pass 2: the weights w_p, the logit gradients gs_p, the query gradient sum_p gs_p k_p
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
            # the weight w and, for the h-normalisations, h'(s)
            if NORM == 0:
                w = tl.exp(s - stat)
            elif NORM == 4:
                w = s
            else:
                if NORM == 1:
                    h = tl.maximum(s, 0.0)
                    hp = tl.where(s > 0, 1.0, 0.0)
                elif NORM == 2:
                    h = 1.0 / (1.0 + tl.exp(-s))
                    hp = h * (1.0 - h)
                else:
                    h = tl.maximum(s, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(s)))
                    hp = 1.0 / (1.0 + tl.exp(-s))
                w = h / stat
            if IGNORE:
                w = tl.where(inb, w, 0.0)
            if NEED_W:
                tl.store(w_ptr + sc_base + (dy * K + dx) * HWq, w, mask=mask_p)
            if NEED_GQ or NEED_GS:
                gw = tl.load(gs_ptr + sc_base + (dy * K + dx) * HWq, mask=mask_p, other=0.0)
                if NORM == 0:
                    gs = w * (gw - delta)
                elif NORM == 4:
                    gs = gw
                else:
                    gs = hp * (gw - delta) / stat
                if IGNORE:
                    gs = tl.where(inb, gs, 0.0)
                if NEED_GS:
                    tl.store(gs_ptr + sc_base + (dy * K + dx) * HWq, gs, mask=mask_p)
                if NEED_GQ:
                    gq += gs[:, None] * kk
    if NEED_GQ:
        tl.store(gq_ptr + pid_b * d * HWq + offs_d[None, :] * HWq + offs_p[:, None],
                 gq.to(gq_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_d[None, :])


@triton.jit
def _gather_offset(acc, c_base, x_base, offs_f, mask_f, a, b, mask_p, Hq, Wq, H, W, MR, MC,
                   dy, dx, R: tl.constexpr, K: tl.constexpr):
    """acc += sum over the outputs o that see low-res pixel (a, b) at window offset (dy, dx)
    of coef[o, p] * x[o, features]; coef (B, K*K, H'W') float32, x (B, F, H'W')."""
    HWq = Hq * Wq
    r = a - (dy - R)  # centre row of the outputs that see (a, b) at row offset dy
    ok_r = (r >= 0) & (r < H) & mask_p
    r = tl.where(ok_r, r, 0)
    i0 = (r * Hq + H - 1) // H
    i1 = ((r + 1) * Hq + H - 1) // H
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
            coef = tl.load(c_base + (dy * K + dx) * HWq + opix, mask=ok, other=0.0)
            xx = tl.load(x_base + offs_f[None, :] * HWq + opix[:, None],
                         mask=ok[:, None] & mask_f[None, :], other=0.0).to(tl.float32)
            acc += coef[:, None] * xx
    return acc


@triton.jit
def _sapa_bwd_gather_kernel(
    coef_ptr, x_ptr, res_ptr,
    F, Hq, Wq, H, W, MR, MC,
    K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """res[l] = sum over the (output o, window position p) that see low-res pixel l of
    coef[o, p] x[o]: coef (B, K*K, H'W') float32, x (B, F, H'W'), res (B, F, H*W).

    Launched twice by the backward: the key gradient (coef = the logit gradients ``gs``,
    x = the query, F = d) and the value gradient (coef = the weights ``w``, x = ``grad_out``,
    F = C)."""
    pid_p = tl.program_id(0)
    pid_f = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    R: tl.constexpr = K // 2
    HWq = Hq * Wq
    HW = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # low-res pixels (a, b)
    mask_p = offs_p < HW
    a = offs_p // W
    b = offs_p % W
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)  # features (embedding or value channels)
    mask_f = offs_f < F
    c_base = coef_ptr + pid_b * (K * K) * HWq
    x_base = x_ptr + pid_b * F * HWq
    acc = tl.zeros([BLOCK_P, BLOCK_F], tl.float32)
    for dy in range(K):
        for dx in range(K):
            acc = _gather_offset(acc, c_base, x_base, offs_f, mask_f, a, b, mask_p, Hq, Wq, H, W, MR, MC,
                                 dy, dx, R, K)
    tl.store(res_ptr + pid_b * F * HW + offs_f[None, :] * HW + offs_p[:, None],
             acc.to(res_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_f[None, :])


_KERNELS = {
    "fwd": _sapa_fwd_kernel,
    "bwd_q": _sapa_bwd_q_kernel,
    "bwd_gather": _sapa_bwd_gather_kernel,
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


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _max_per_centre(n_out: int, n_in: int) -> int:
    """max over r of #{i : floor(i * n_in / n_out) == r} = ceil(n_out / n_in)."""
    return -(-n_out // n_in)


#: largest pixel and channel tiles of an interpreter launch (powers of two). Tests lower
#: them to exercise several tiles and partial channel blocks on tiny inputs.
INTERPRETER_BLOCKS = {"max_p": 1024, "max_c": 256}

INT32_LIMIT = 2 ** 31


def check_index_range(d: int, C: int, K: int, Hq: int, Wq: int, H: int, W: int) -> None:
    """Raise ValueError where the kernels' int32 index arithmetic would overflow.

    Offsets inside one batch item are int32 (batch offsets are int64): the largest are
    ``max(C, d, K*K) * H' * W'`` (a channel or window-position plane of a per-item tensor)
    and ``(H + 1) * H'``, ``(W + 1) * W'`` (the centre arithmetic of the backward gather).
    """
    worst = {
        "max(C, d, K*K) * H' * W'": max(C, d, K * K) * Hq * Wq,
        "(H + 1) * H'": (H + 1) * Hq,
        "(W + 1) * W'": (W + 1) * Wq,
    }
    for what, n in worst.items():
        if n >= INT32_LIMIT:
            raise ValueError(
                f"backend='triton' indexes one batch item in 32 bits, but {what} = {n} >= 2**31 "
                f"(d={d}, C={C}, K={K}, {H}x{W} -> {Hq}x{Wq}); split the value channels or use "
                "backend='torch'"
            )


#: GPU launch configuration per kernel and sizes: see :func:`cuda_config`.
def cuda_config(kernel: str, d: int, C: int) -> Dict[str, int]:
    """Tile sizes and warps of a CUDA launch of ``kernel`` (``"fwd"``, ``"bwd_q"``,
    ``"gather_k"``, ``"gather_v"``) for embedding ``d`` and ``C`` value channels.

    Chosen so that no kernel spills registers on sm_80 and sm_90 in float32 and bfloat16
    at the head sizes (``tests/test_triton_compile.py`` checks it with ``ptxas -v``).
    """
    BD = _pow2(d)
    # 4 warps and at most 168 registers per thread: 3 programs (12 warps) per SM. The explicit
    # cap keeps ptxas from choosing 128 registers and spilling (it does so by itself for some
    # specialisations); the tiles are small enough to fit under it with room to spare.
    if kernel == "fwd":
        cfg = {"BLOCK_P": 16, "BLOCK_D": BD, "BLOCK_C": min(_pow2(C), 64)}
    elif kernel == "bwd_q":
        cfg = {"BLOCK_P": 32, "BLOCK_D": BD, "BLOCK_C": min(_pow2(C), 16)}
    elif kernel == "gather_k":
        cfg = {"BLOCK_P": 32, "BLOCK_F": min(BD, 8)}
    elif kernel == "gather_v":
        cfg = {"BLOCK_P": 32, "BLOCK_F": min(_pow2(C), 32)}
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return {**cfg, "num_warps": 4, "maxnreg": 168}


def _config(cuda: bool, kernel: str, n_pix: int, d: int, C: int) -> Dict[str, int]:
    """Launch meta-parameters: :func:`cuda_config` on a GPU; few, large programs in the
    interpreter (each program step is one numpy call)."""
    if cuda:
        return cuda_config(kernel, d, C)
    BP = min(_pow2(n_pix), INTERPRETER_BLOCKS["max_p"])
    BC = min(_pow2(C), INTERPRETER_BLOCKS["max_c"])
    if kernel in ("fwd", "bwd_q"):
        return {"BLOCK_P": BP, "BLOCK_D": _pow2(d), "BLOCK_C": BC}
    if kernel == "gather_k":
        return {"BLOCK_P": BP, "BLOCK_F": min(_pow2(d), INTERPRETER_BLOCKS["max_c"])}
    return {"BLOCK_P": BP, "BLOCK_F": BC}


def _forward_launches(q, k, v, out, stat, K: int, norm: int, ignore: bool, cuda: bool):
    """The forward's kernel launches: a list of ``(kernel name, grid, args, meta)``.

    ``q, k, v, out, stat`` are tensors (or, for ahead-of-time compilation, objects with
    ``shape`` and ``dtype``); the runtime and :func:`compile_launches_aot` use the same list.
    """
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1:]
    cfg = _config(cuda, "fwd", Hq * Wq, d, C)
    grid = (_cdiv(Hq * Wq, cfg["BLOCK_P"]), _cdiv(C, cfg["BLOCK_C"]), B)
    args = (q, k, v, out, stat, d, C, Hq, Wq, H, W, NORM_EPS)
    return [("fwd", grid, args, dict(K=K, NORM=norm, IGNORE=ignore, **cfg))]


def _backward_launches(q, k, v, g, stat, gq, gk, gv, w, gs, K: int, norm: int, ignore: bool,
                       cuda: bool):
    """The backward's kernel launches (see :func:`_forward_launches`).

    ``gq``, ``gk``, ``gv``: the gradients to compute, or None. ``w`` and ``gs``: float32
    scratch of shape (B, K*K, H'*W') for the weights (when ``gv`` is wanted) and the logit
    gradients (when ``gq`` or ``gk`` is wanted), or None.
    """
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1:]
    MR, MC = _max_per_centre(Hq, H), _max_per_centre(Wq, W)
    launches = []
    cfg = _config(cuda, "bwd_q", Hq * Wq, d, C)
    launches.append((
        "bwd_q", (_cdiv(Hq * Wq, cfg["BLOCK_P"]), B),
        (q, k, v, g, stat, gq if gq is not None else q, w if w is not None else stat,
         gs if gs is not None else stat, d, C, Hq, Wq, H, W),
        dict(K=K, NORM=norm, IGNORE=ignore, NEED_GQ=gq is not None, NEED_GS=gk is not None,
             NEED_W=gv is not None, **cfg),
    ))
    # one gather kernel, launched for the key gradient (sum gs q) and the value gradient (sum w g)
    for label, coef, x, res, F in (("gather_k", gs, q, gk, d), ("gather_v", w, g, gv, C)):
        if res is None:
            continue
        cfg = _config(cuda, label, H * W, d, C)
        grid = (_cdiv(H * W, cfg["BLOCK_P"]), _cdiv(F, cfg["BLOCK_F"]), B)
        launches.append(("bwd_gather", grid, (coef, x, res, F, Hq, Wq, H, W, MR, MC), dict(K=K, **cfg)))
    return launches


def _launch(launches) -> None:
    for name, grid, args, meta in launches:
        _KERNELS[name][grid](*args, **meta)


def triton_forward(q, k, v, kernel_size: int, normalization: str, padding: str):
    """Forward launch: contiguous q (B, d, H', W'), k (B, d, H, W), v (B, C, H, W) ->
    ``(out (B, C, H', W'), stat (B, H'*W') float32)``; ``stat`` is what the backward needs."""
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1:]
    check_index_range(d, C, kernel_size, Hq, Wq, H, W)
    out = torch.empty(B, C, Hq, Wq, device=q.device, dtype=q.dtype)
    stat = torch.empty(B, Hq * Wq, device=q.device, dtype=torch.float32)
    _launch(_forward_launches(q, k, v, out, stat, kernel_size, _NORM_CODE[normalization],
                              padding == "ignore", q.is_cuda))
    return out, stat


def triton_backward(q, k, v, stat, grad_out, kernel_size: int, normalization: str, padding: str,
                    needs=(True, True, True)):
    """Backward launches: the gradients ``(grad_q, grad_k, grad_v)`` of :func:`triton_forward`
    (None where ``needs`` is False), deterministic (no atomics)."""
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1:]
    g = grad_out.contiguous()
    if g.dtype != q.dtype:
        g = g.to(q.dtype)
    need_q, need_k, need_v = needs
    if not (need_q or need_k or need_v):
        return None, None, None
    P = kernel_size * kernel_size
    scratch = lambda: torch.empty(B, P, Hq * Wq, device=q.device, dtype=torch.float32)  # noqa: E731
    gq = torch.empty_like(q) if need_q else None
    gk = torch.empty_like(k) if need_k else None
    gv = torch.empty_like(v) if need_v else None
    w = scratch() if need_v else None
    gs = scratch() if (need_q or need_k) else None
    _launch(_backward_launches(q, k, v, g, stat, gq, gk, gv, w, gs, kernel_size,
                               _NORM_CODE[normalization], padding == "ignore", q.is_cuda))
    return gq, gk, gv


class _SapaTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, kernel_size, normalization, padding):
        q, k, v = query.contiguous(), key.contiguous(), value.contiguous()
        out, stat = triton_forward(q, k, v, kernel_size, normalization, padding)
        ctx.save_for_backward(q, k, v, stat)
        ctx.cfg = (kernel_size, normalization, padding)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, stat = ctx.saved_tensors
        gq, gk, gv = triton_backward(q, k, v, stat, grad_out, *ctx.cfg, needs=ctx.needs_input_grad[:3])
        return gq, gk, gv, None, None, None


def sapa_triton(query, key, value, kernel_size=5, normalization="softmax", padding="zeros"):
    """The fused operator as one autograd.Function, without :func:`sapa.sapa_upsample`'s checks
    and dispatch (inputs must be valid: see :func:`sapa.sapa_upsample`)."""
    if not available(query):
        raise RuntimeError(
            f"the Triton kernels cannot run on {query.device} tensors of dtype {query.dtype} in this "
            f"process (interpreter mode: {INTERPRETED}); CPU tensors need TRITON_INTERPRET=1 set "
            "before triton is imported, CUDA tensors need it unset"
        )
    return _SapaTritonFn.apply(query, key, value, kernel_size, normalization, padding)


# ---- the backend interface (sapa.backends) ----------------------------------------------
#: the forward's ``stat`` (B, H'*W') is what the backward needs besides the inputs
SAVES_STAT = True


def forward(query, key, value, kernel_size, normalization, padding):
    """Backend forward: ``(out (B, C, H', W'), stat (B, H'*W') float32)``."""
    return triton_forward(query.contiguous(), key.contiguous(), value.contiguous(), kernel_size,
                          normalization, padding)


def backward(grad_out, query, key, value, out, stat, kernel_size, normalization, padding, needs):
    """Backend backward: ``(grad_query, grad_key, grad_value)``, None where ``needs`` is False
    (``out`` is not used: the kernels take ``g . out`` from the weights)."""
    return triton_backward(query.contiguous(), key.contiguous(), value.contiguous(), stat, grad_out,
                           kernel_size, normalization, padding, needs=tuple(needs))


def auto(query) -> bool:
    """``backend="auto"`` picks the fused kernels for CUDA tensors they run on."""
    return query.is_cuda and available(query)


# --------------------------------------------------------------------------------------
# ahead-of-time compilation (no GPU needed): used by the compile test
# --------------------------------------------------------------------------------------
def launches_for_sizes(dtype: torch.dtype, d: int, C: int, H: int, W: int, Hq: int, Wq: int,
                       kernel_size: int = 5, normalization: str = "softmax", padding: str = "zeros",
                       needs=(True, True, True), B: int = 2):
    """The CUDA launches (forward, then backward) that :func:`sapa_triton` makes for these
    sizes, with Triton ``MockTensor`` stand-ins (``data_ptr() == 0``: 16-byte aligned, as
    fresh CUDA allocations are) instead of tensors. Returns ``[(label, (name, grid, args,
    meta))]`` with labels ``"fwd"``, ``"bwd_q"``, ``"gather_k"``, ``"gather_v"``."""
    from triton.runtime.jit import MockTensor

    f32, P = torch.float32, kernel_size * kernel_size
    q, k = MockTensor(dtype, [B, d, Hq, Wq]), MockTensor(dtype, [B, d, H, W])
    v, out = MockTensor(dtype, [B, C, H, W]), MockTensor(dtype, [B, C, Hq, Wq])
    stat = MockTensor(f32, [B, Hq * Wq])
    need_q, need_k, need_v = needs
    grads = [MockTensor(dtype, list(t.shape)) if n else None for t, n in zip((q, k, v), needs)]
    w = MockTensor(f32, [B, P, Hq * Wq]) if need_v else None
    gs = MockTensor(f32, [B, P, Hq * Wq]) if (need_q or need_k) else None
    norm, ignore = _NORM_CODE[normalization], padding == "ignore"
    fwd = _forward_launches(q, k, v, out, stat, kernel_size, norm, ignore, cuda=True)
    bwd = _backward_launches(q, k, v, out, stat, *grads, w, gs, kernel_size, norm, ignore, cuda=True)
    labels = ["fwd", "bwd_q"] + (["gather_k"] if need_k else []) + (["gather_v"] if need_v else [])
    return list(zip(labels, fwd + bwd))


def _bind_like_runtime(launch, arch: int):
    """(fn, target, ASTSource, options) exactly as ``kernel[grid](*args, **meta)`` would build
    them on a ``sm_<arch>`` device: Triton's own binder specialises the arguments (integer
    values 1 and multiples of 16, 16-byte aligned pointers), and the launch options are
    parsed by the CUDA backend (``triton.runtime.jit.JITFunction.run``, without a device)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    name, _grid, args, meta = launch
    fn = _KERNELS[name]
    target = GPUTarget("cuda", int(arch), 32)
    backend = make_backend(target)
    kwargs = dict(meta)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return fn, target, ASTSource(fn, signature, constexprs, attrs), options


def launch_key(launch, arch: int) -> str:
    """A string that is equal for two launches exactly when the runtime compiles them to the
    same binary (same kernel, signature, constants, attributes and options)."""
    _fn, _target, src, options = _bind_like_runtime(launch, arch)
    return f"{arch}:{src.hash()}:{sorted(options.__dict__.items())}"


_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def parse_ptxas_log(log: str) -> Dict[str, int]:
    """Registers, spill bytes and stack frame from ``ptxas -v`` output (ValueError if absent)."""
    res = {}
    for key, rx in _PTXAS_RE.items():
        found = rx.findall(log)
        if not found:
            raise ValueError(f"no {key!r} in the ptxas log:\n{log}")
        res[key] = max(int(x) for x in found)
    return res


def compile_launch_aot(launch, arch: int) -> Dict[str, object]:
    """Compile one launch for ``sm_<arch>`` ahead of time, without a GPU, as the runtime would,
    and run ``ptxas -v`` (the Triton wheel's, with Triton's flags) on its PTX.

    Returns ``{"ptx_target", "entry", "cubin_bytes", "num_warps", "registers",
    "spill_stores", "spill_loads", "stack", "ptxas_log"}``.
    """
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import compile as triton_compile

    if INTERPRETED:
        raise RuntimeError("compile_launch_aot needs a process without TRITON_INTERPRET=1")
    fn, target, src, options = _bind_like_runtime(launch, arch)
    ck = triton_compile(src, target=target, options=options.__dict__)
    ptx = ck.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        fmad = [] if options.enable_fp_fusion else ["--fmad=false"]
        cmd = [get_ptxas(int(arch)).path, "-lineinfo", *fmad, "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(int(arch))}", path, "-o", path + ".o"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    log = proc.stderr + proc.stdout
    target_m = re.search(r"^\.target\s+(\S+)", ptx, re.M)
    return {
        "ptx_target": target_m.group(1) if target_m else None,
        "entry": f".entry {fn.__name__}" in ptx,
        "cubin_bytes": len(ck.asm["cubin"]),
        "num_warps": options.num_warps,
        "ptxas_log": log,
        **parse_ptxas_log(log),
    }
