"""The SAPA operator: similarity-aware kernels and feature assembly (paper Eq. 2-3).

``sapa_upsample(query, key, value)`` computes, for every output pixel ``l' = (i, j)``,

    centre  l  = (floor(i * H / H'), floor(j * W / W'))
    logits  s_p = <query[:, :, i, j], key[:, :, l + p]>          p in the K x K window
    weights w_p = h(s_p) / (sum_q h(s_q) + eps)   (softmax for h = exp)
    output      = sum_p w_p * value[:, :, l + p]

Backends
--------
``"reference"``  unfold + einsum, materialises the (B, C, K*K, H', W') gathered values.
                 The teaching version and the test oracle.
``"torch"``      pure PyTorch, any device. Groups output pixels by their window centre
                 ("phases"), so that every window is a plain shift of the low-resolution
                 map; processes row chunks with batched matmuls in channels-last layout and
                 never materialises the unfolded value tensor of the whole map. A custom
                 ``autograd.Function`` whose backward recomputes the weights.
``"triton"``     the fused GPU kernels (``sapa.triton_ops``), registered when Triton imports.
``"auto"``       ``"triton"`` for CUDA tensors when available, otherwise ``"torch"``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ._checks import NORMALIZATIONS, PADDINGS, check_choice, check_kernel_size, check_qkv, check_tensor

#: eps in w = h(s) / (sum h(s) + eps) for the relu, sigmoid and softplus normalisations
#: (it keeps the relu kernel finite when every similarity in a window is negative).
NORM_EPS = 1e-6

__all__ = [
    "sapa_upsample",
    "sapa_kernels",
    "window_centres",
    "nearest_upsample_to",
    "available_backends",
    "register_backend",
    "NORM_EPS",
]

BackendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, str, str], torch.Tensor]
_BACKENDS: Dict[str, BackendFn] = {}
_BACKEND_AVAILABLE: Dict[str, Callable[[torch.Tensor], bool]] = {}


def register_backend(name: str, fn: BackendFn, available: Optional[Callable[[torch.Tensor], bool]] = None):
    """Register ``fn(query, key, value, kernel_size, normalization, padding) -> output``.

    ``available(query)`` tells whether the backend can run on that tensor (used by "auto").
    """
    _BACKENDS[name] = fn
    _BACKEND_AVAILABLE[name] = available or (lambda t: True)


def available_backends() -> Tuple[str, ...]:
    """Names accepted by ``backend=`` (besides ``"auto"``)."""
    _load_optional_backends()
    return tuple(_BACKENDS)


def _load_optional_backends() -> None:
    if "triton" not in _BACKENDS:
        try:  # registers itself on import
            from . import triton_ops  # noqa: F401
        except ImportError:
            pass


def window_centres(n_out: int, n_in: int, device=None) -> torch.Tensor:
    """Low-res index of the window centre of each of ``n_out`` output rows: floor(i*n_in/n_out).

    Returns a (n_out,) int64 tensor. Equals ``i // s`` when ``n_out = s * n_in``.
    """
    i = torch.arange(n_out, device=device, dtype=torch.int64)
    return torch.div(i * n_in, n_out, rounding_mode="floor")


def nearest_upsample_to(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling (B, C, H, W) -> (B, C, H', W') with SAPA's centre rule.

    Output pixel (i, j) copies x[..., floor(i*H/H'), floor(j*W/W')], exactly the window centre
    used by :func:`sapa_upsample` (``F.interpolate(mode="nearest")`` can differ by one pixel
    for some sizes because it works in floating point).
    """
    H, W = x.shape[-2:]
    rows = window_centres(size[0], H, x.device)
    cols = window_centres(size[1], W, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


# --------------------------------------------------------------------------------------
# normalisation h(s) / sum h(s): forward and its hand-written backward
# --------------------------------------------------------------------------------------
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


def _normalize_backward(
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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------
# backend "reference": the direct, materialised formulation
# --------------------------------------------------------------------------------------
def _reference_weights(q, k, kernel_size, normalization, padding):
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


def sapa_kernels(
    query: torch.Tensor, key: torch.Tensor, kernel_size: int = 5, normalization: str = "softmax",
    padding: str = "zeros",
) -> torch.Tensor:
    """The upsampling kernels of :func:`sapa_upsample`: (B, K*K, H', W') weights.

    query (B, d, H', W'), key (B, d, H, W). Entry p = dy * K + dx weighs the low-res pixel
    centre + (dy - K//2, dx - K//2). Materialises the weights (for inspection and plots).
    """
    check_tensor("key", key)
    value = key.new_empty(key.shape[0], 1, *key.shape[-2:])
    check_qkv(query, key, value)
    kernel_size = check_kernel_size(kernel_size)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("padding", padding, PADDINGS)
    ct = _compute_dtype(query.dtype)
    return _reference_weights(query.to(ct), key.to(ct), kernel_size, normalization, padding).to(query.dtype)


def _reference(query, key, value, kernel_size, normalization, padding):
    out_dtype = query.dtype
    ct = _compute_dtype(out_dtype)
    q, k, v = query.to(ct), key.to(ct), value.to(ct)
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1:]
    K, R = kernel_size, kernel_size // 2
    rows = window_centres(Hq, H, q.device)
    cols = window_centres(Wq, W, q.device)
    # the zero-padded K x K windows of every low-res pixel, (B, C, K*K, H, W), gathered at the
    # window centre of every output pixel: (B, C, K*K, H', W')
    v_unf = F.unfold(v, K, padding=R).view(B, C, K * K, H, W)[..., rows, :][..., cols]
    weights = _reference_weights(q, k, K, normalization, padding)
    out = torch.einsum("bkhw,bckhw->bchw", weights, v_unf)
    return out.to(out_dtype)


# --------------------------------------------------------------------------------------
# backend "torch": phase-grouped, row-chunked, channels-last batched matmuls
# --------------------------------------------------------------------------------------
class _Phases:
    """Index maps between output pixels (i, j) and (centre a, b; phase u, v).

    Output row i has centre a = floor(i*H/H') and phase u = i - first(a), where first(a) is
    the first output row with centre a; ``mr`` = max number of rows sharing a centre.
    """

    def __init__(self, Hq: int, Wq: int, H: int, W: int, device):
        self.a, self.u, self.mr = self._axis(Hq, H, device)
        self.b, self.v, self.mc = self._axis(Wq, W, device)
        self.H, self.W = H, W
        # integer scales (H' = s H, W' = t W): phases are plain strides, no index maps needed
        self.exact = Hq == self.mr * H and Wq == self.mc * W

    @staticmethod
    def _axis(n_out: int, n_in: int, device):
        centre = window_centres(n_out, n_in, device)
        first = torch.div(torch.arange(n_in, device=device) * n_out + n_in - 1, n_in, rounding_mode="floor")
        phase = torch.arange(n_out, device=device) - first[centre]
        return centre, phase, int(phase.max().item()) + 1

    def to_phase(self, t: torch.Tensor) -> torch.Tensor:
        """(B, c, H', W') -> channels-last phased (B, H, W, mr*mc, c), zeros where unused."""
        B, c = t.shape[:2]
        if self.exact:  # (B, c, H, mr, W, mc) -> (B, H, W, mr, mc, c)
            t = t.reshape(B, c, self.H, self.mr, self.W, self.mc).permute(0, 2, 4, 3, 5, 1)
            return t.reshape(B, self.H, self.W, self.mr * self.mc, c)
        out = t.new_zeros(B, self.H, self.W, self.mr, self.mc, c)
        out[:, self.a[:, None], self.b[None, :], self.u[:, None], self.v[None, :]] = t.permute(0, 2, 3, 1)
        return out.view(B, self.H, self.W, self.mr * self.mc, c)

    def from_phase(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_phase`: (B, H, W, mr*mc, c) -> (B, c, H', W') (contiguous)."""
        B, c = t.shape[0], t.shape[-1]
        t = t.view(B, self.H, self.W, self.mr, self.mc, c)
        if self.exact:  # (B, H, W, mr, mc, c) -> (B, c, H, mr, W, mc)
            g = t.permute(0, 5, 1, 3, 2, 4).reshape(B, c, self.H * self.mr, self.W * self.mc)
            return g.contiguous()
        g = t[:, self.a[:, None], self.b[None, :], self.u[:, None], self.v[None, :]]
        return g.permute(0, 3, 1, 2).contiguous()


def _windows(xpad_cl: torch.Tensor, r0: int, r1: int, K: int) -> torch.Tensor:
    """K x K windows of low-res rows [r0, r1): (B, r1-r0, W, K*K, c) from padded channels-last."""
    blk = xpad_cl[:, r0 : r1 + K - 1]
    B, _, _, c = blk.shape
    win = blk.unfold(1, K, 1).unfold(2, K, 1)  # (B, T, W, c, K, K), a view
    T, W = win.shape[1], win.shape[2]
    return win.permute(0, 1, 2, 4, 5, 3).reshape(B, T, W, K * K, c)


def _fold_add_(gpad_cl: torch.Tensor, gwin: torch.Tensor, r0: int, K: int) -> None:
    """Adjoint of :func:`_windows`: add (B, T, W, K*K, c) window gradients into the padded map."""
    T, W = gwin.shape[1], gwin.shape[2]
    for p in range(K * K):
        dy, dx = divmod(p, K)
        gpad_cl[:, r0 + dy : r0 + dy + T, dx : dx + W].add_(gwin[:, :, :, p])


def _valid_windows(H: int, W: int, K: int, r0: int, r1: int, device, dtype) -> torch.Tensor:
    ones = F.pad(torch.ones(1, H, W, 1, device=device, dtype=dtype), (0, 0, K // 2, K // 2, K // 2, K // 2))
    return _windows(ones, r0, r1, K)[..., 0].unsqueeze(-2) > 0  # (1, T, W, 1, K*K)


def _row_chunk(B: int, W: int, K: int, C: int, m: int, budget: int = 1 << 22) -> int:
    per_row = B * W * K * K * max(C, 1) + B * W * m * C
    return max(1, budget // max(per_row, 1))


def _pad_cl(x: torch.Tensor, R: int) -> torch.Tensor:
    return F.pad(x, (R, R, R, R)).permute(0, 2, 3, 1).contiguous()


class _SapaTorchFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, kernel_size, normalization, padding):
        ct = _compute_dtype(query.dtype)
        q, k, v = query.to(ct), key.to(ct), value.to(ct)
        B, d, Hq, Wq = q.shape
        C, H, W = v.shape[1:]
        K, R = kernel_size, kernel_size // 2
        ph = _Phases(Hq, Wq, H, W, q.device)
        m = ph.mr * ph.mc
        qph = ph.to_phase(q)  # (B, H, W, m, d)
        kpad, vpad = _pad_cl(k, R), _pad_cl(v, R)
        out_ph = q.new_empty(B, H, W, m, C)
        T = _row_chunk(B, W, K, C, m)
        for r0 in range(0, H, T):
            r1 = min(H, r0 + T)
            kwin = _windows(kpad, r0, r1, K)  # (B, T, W, K*K, d)
            logits = torch.matmul(qph[:, r0:r1], kwin.transpose(-1, -2))  # (B, T, W, m, K*K)
            valid = _valid_windows(H, W, K, r0, r1, q.device, ct) if padding == "ignore" else None
            w = normalize_logits(logits, valid, normalization, dim=-1)
            out_ph[:, r0:r1] = torch.matmul(w, _windows(vpad, r0, r1, K))
        ctx.save_for_backward(query, key, value)
        ctx.cfg = (kernel_size, normalization, padding)
        return ph.from_phase(out_ph).to(query.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value = ctx.saved_tensors
        kernel_size, normalization, padding = ctx.cfg
        ct = _compute_dtype(query.dtype)
        q, k, v = query.to(ct), key.to(ct), value.to(ct)
        B, d, Hq, Wq = q.shape
        C, H, W = v.shape[1:]
        K, R = kernel_size, kernel_size // 2
        ph = _Phases(Hq, Wq, H, W, q.device)
        m = ph.mr * ph.mc
        qph = ph.to_phase(q)
        gph = ph.to_phase(grad_out.to(ct))  # (B, H, W, m, C)
        kpad, vpad = _pad_cl(k, R), _pad_cl(v, R)
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        gq_ph = torch.zeros_like(qph) if need_q else None
        gkpad = torch.zeros_like(kpad) if need_k else None
        gvpad = torch.zeros_like(vpad) if need_v else None
        T = _row_chunk(B, W, K, C, m)
        for r0 in range(0, H, T):
            r1 = min(H, r0 + T)
            kwin = _windows(kpad, r0, r1, K)
            vwin = _windows(vpad, r0, r1, K)  # (B, T, W, K*K, C)
            qc, gc = qph[:, r0:r1], gph[:, r0:r1]
            logits = torch.matmul(qc, kwin.transpose(-1, -2))
            valid = _valid_windows(H, W, K, r0, r1, q.device, ct) if padding == "ignore" else None
            w = normalize_logits(logits, valid, normalization, dim=-1)
            if need_v:
                _fold_add_(gvpad, torch.matmul(w.transpose(-1, -2), gc), r0, K)
            if need_q or need_k:
                gw = torch.matmul(gc, vwin.transpose(-1, -2))  # (B, T, W, m, K*K)
                gl = _normalize_backward(logits, w, gw, valid, normalization, dim=-1)
                if need_q:
                    gq_ph[:, r0:r1] = torch.matmul(gl, kwin)
                if need_k:
                    _fold_add_(gkpad, torch.matmul(gl.transpose(-1, -2), qc), r0, K)

        def unpad(g, dtype):
            return g[:, R : R + H, R : R + W].permute(0, 3, 1, 2).contiguous().to(dtype)

        gq = ph.from_phase(gq_ph).to(query.dtype) if need_q else None
        gk = unpad(gkpad, key.dtype) if need_k else None
        gv = unpad(gvpad, value.dtype) if need_v else None
        return gq, gk, gv, None, None, None


def _torch_backend(query, key, value, kernel_size, normalization, padding):
    return _SapaTorchFn.apply(query, key, value, kernel_size, normalization, padding)


register_backend("reference", _reference)
register_backend("torch", _torch_backend)


# --------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------
def sapa_upsample(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int = 5,
    normalization: str = "softmax",
    padding: str = "zeros",
    backend: str = "auto",
) -> torch.Tensor:
    """Similarity-aware upsampling of ``value`` to the size of ``query``.

    Args:
        query: (B, d, H', W') embedding of the high-res guide (encoder feature).
        key:   (B, d, H, W) embedding of the low-res feature.
        value: (B, C, H, W) low-res feature to upsample (the raw decoder feature in SAPA).
        kernel_size: odd window size K (the window is K x K around the centre).
        normalization: ``"softmax"`` (h = exp), ``"relu"``, ``"sigmoid"``, ``"softplus"``
            (w = h(s) / (sum h(s) + NORM_EPS)) or ``"none"`` (the raw similarities).
        padding: ``"zeros"`` (official: positions outside the map have logit 0 and value 0
            and take part in the normalisation) or ``"ignore"`` (they are left out of it).
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        (B, C, H', W'), dtype of the inputs. Half-precision inputs are accumulated in float32.

    The window centre of output pixel (i, j) is (floor(i*H/H'), floor(j*W/W')), so any
    H' >= H, W' >= W works (e.g. a skip connection of size 2H+1).
    """
    check_qkv(query, key, value)
    kernel_size = check_kernel_size(kernel_size)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("padding", padding, PADDINGS)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    _load_optional_backends()
    if backend == "auto":
        use_triton = query.is_cuda and "triton" in _BACKENDS and _BACKEND_AVAILABLE["triton"](query)
        backend = "triton" if use_triton else "torch"
    else:
        check_choice("backend", backend, tuple(_BACKENDS) + ("auto",))
        if not _BACKEND_AVAILABLE[backend](query):
            hint = ""
            if backend == "triton":
                hint = (" (the Triton backend runs on CUDA tensors in float32/float16/bfloat16; on CPU "
                        "tensors only in a process started with TRITON_INTERPRET=1)")
            raise ValueError(
                f"backend {backend!r} cannot run on {query.device} tensors of dtype {query.dtype}{hint}"
            )
    return _BACKENDS[backend](query, key, value, kernel_size, normalization, padding)
