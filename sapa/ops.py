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

from ._checks import NORMALIZATIONS, PADDINGS, check_choice, check_kernel_size, check_qkv

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
# backend "torch": flat padded channels-last layout, strided windows, batched matmuls
# --------------------------------------------------------------------------------------
# Layout. key and value are zero-padded by R on every side and stored channels-last as one
# flat sequence of "positions" n = (b * Hp + r) * Wp + c over (B, Hp, Wp), Hp = H + 2R,
# Wp = W + 2R. The K x K window whose top-left corner is position n covers the positions
# n + dy * Wp + dx, so for a fixed dy the K windows rows of *all* positions are one strided
# view of shape (P, K, c) with strides (c, c, 1): no unfold, no copy. Window top-left n is
# the window *centred* on low-res pixel (r, c) of item b; positions with r >= H or c >= W
# are unused ("junk") and cost a little extra work (2R/H of the rows and columns).
#
# Output pixels are grouped by their window centre: output (i, j) with centre (a, bc) and
# phase (u, v) (its rank among the output rows/cols sharing that centre) lives at
# (position of (a, bc), phase u * mc + v) of a (positions, mr * mc, c) buffer. All output
# pixels of one position share one window, so the weights are one small matmul per dy.
class _Layout:
    """Index maps between (B, c, H', W') tensors and the flat (positions, phases, c) layout."""

    def __init__(self, B: int, Hq: int, Wq: int, H: int, W: int, K: int, device):
        R = K // 2
        self.B, self.Hq, self.Wq, self.H, self.W, self.K, self.R = B, Hq, Wq, H, W, K, R
        self.Hp, self.Wp = H + 2 * R, W + 2 * R
        self.total = B * self.Hp * self.Wp
        self.npos = self.total - (K - 1) * self.Wp - (K - 1)  # windows inside the buffer
        a, u, self.mr = self._axis(Hq, H, device)
        c, v, self.mc = self._axis(Wq, W, device)
        item = torch.arange(B, device=device)[:, None, None] * (self.Hp * self.Wp)
        pos = item + (a * self.Wp)[None, :, None] + c[None, None, :]  # (B, H', W')
        phase = (u[:, None] * self.mc + v[None, :]).expand(B, Hq, Wq)
        self.flat = (pos * (self.mr * self.mc) + phase).reshape(-1)  # (B*H'*W',)

    @staticmethod
    def _axis(n_out: int, n_in: int, device):
        centre = window_centres(n_out, n_in, device)
        first = torch.div(torch.arange(n_in, device=device) * n_out + n_in - 1, n_in, rounding_mode="floor")
        phase = torch.arange(n_out, device=device) - first[centre]
        return centre, phase, int(phase.max().item()) + 1

    @property
    def m(self) -> int:
        return self.mr * self.mc

    def to_phase(self, t: torch.Tensor) -> torch.Tensor:
        """(B, c, H', W') -> (positions, m, c), zeros at unused entries."""
        c = t.shape[1]
        out = t.new_zeros(self.total * self.m, c)
        out.index_copy_(0, self.flat, t.permute(0, 2, 3, 1).reshape(-1, c))
        return out.view(self.total, self.m, c)

    def from_phase(self, t: torch.Tensor) -> torch.Tensor:
        """(positions, m, c) -> (B, c, H', W') contiguous."""
        c = t.shape[-1]
        g = t.reshape(-1, c).index_select(0, self.flat)
        return g.view(self.B, self.Hq, self.Wq, c).permute(0, 3, 1, 2).contiguous()

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c, H, W) -> zero-padded flat channels-last (positions, c)."""
        R = self.R
        return F.pad(x, (R, R, R, R)).permute(0, 2, 3, 1).reshape(self.total, x.shape[1]).contiguous()

    def unpad(self, g: torch.Tensor, dtype) -> torch.Tensor:
        """Adjoint of :meth:`pad` for a gradient buffer: (positions, c) -> (B, c, H, W)."""
        R, c = self.R, g.shape[-1]
        g = g.view(self.B, self.Hp, self.Wp, c)[:, R : R + self.H, R : R + self.W]
        return g.permute(0, 3, 1, 2).contiguous().to(dtype)

    def window_rows(self, flat: torch.Tensor, n0: int, P: int, dy: int) -> torch.Tensor:
        """(P, K, c) strided view: window row dy of the windows at positions n0..n0+P-1."""
        c = flat.shape[-1]
        return flat.as_strided((P, self.K, c), (c, c, 1), flat.storage_offset() + (n0 + dy * self.Wp) * c)

    def valid(self, n0: int, P: int, device) -> torch.Tensor:
        """(P, 1, K*K) bool: window entry inside the map (unused positions: all True)."""
        n = torch.arange(n0, n0 + P, device=device)
        r = torch.div(n, self.Wp, rounding_mode="floor") % self.Hp
        c = n % self.Wp
        off = torch.arange(self.K, device=device) - self.R
        rr, cc = r[:, None] + off, c[:, None] + off  # (P, K) low-res coordinates
        ok = ((rr >= 0) & (rr < self.H))[:, :, None] & ((cc >= 0) & (cc < self.W))[:, None, :]
        junk = ((r >= self.H) | (c >= self.W))[:, None, None]
        return (ok | junk).reshape(P, 1, self.K * self.K)

    def chunks(self, c: int):
        """Yield (n0, P) chunks of positions sized to keep temporaries near 16 MB."""
        per_pos = self.K * max(c, 1) + self.m * self.K * self.K
        P = max(64, (1 << 22) // per_pos)
        for n0 in range(0, self.npos, P):
            yield n0, min(P, self.npos - n0)


def _chunk_weights(L: _Layout, qph, kflat, n0, P, normalization, padding):
    """Logits (P, m, K*K) and weights of the windows at positions n0..n0+P-1."""
    K = L.K
    qc = qph[n0 : n0 + P]
    logits = torch.cat([torch.bmm(qc, L.window_rows(kflat, n0, P, dy).transpose(1, 2)) for dy in range(K)], -1)
    valid = L.valid(n0, P, qph.device) if padding == "ignore" else None
    return logits, valid, normalize_logits(logits, valid, normalization, dim=-1)


class _SapaTorchFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, kernel_size, normalization, padding):
        ct = _compute_dtype(query.dtype)
        B, _, Hq, Wq = query.shape
        C, H, W = value.shape[1:]
        K = kernel_size
        L = _Layout(B, Hq, Wq, H, W, K, query.device)
        qph = L.to_phase(query.to(ct))
        kflat, vflat = L.pad(key.to(ct)), L.pad(value.to(ct))
        out = qph.new_empty(L.total, L.m, C)
        for n0, P in L.chunks(C):
            _, _, w = _chunk_weights(L, qph, kflat, n0, P, normalization, padding)
            o = out[n0 : n0 + P]
            for dy in range(K):
                wd = w[:, :, dy * K : (dy + 1) * K].contiguous()
                vd = L.window_rows(vflat, n0, P, dy)
                if dy == 0:
                    torch.bmm(wd, vd, out=o)
                else:
                    o.baddbmm_(wd, vd)
        ctx.save_for_backward(query, key, value)
        ctx.cfg = (kernel_size, normalization, padding)
        return L.from_phase(out).to(query.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value = ctx.saved_tensors
        kernel_size, normalization, padding = ctx.cfg
        ct = _compute_dtype(query.dtype)
        B, _, Hq, Wq = query.shape
        C, H, W = value.shape[1:]
        K = kernel_size
        L = _Layout(B, Hq, Wq, H, W, K, query.device)
        qph = L.to_phase(query.to(ct))
        gph = L.to_phase(grad_out.to(ct))
        kflat, vflat = L.pad(key.to(ct)), L.pad(value.to(ct))
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        gq = torch.zeros_like(qph) if need_q else None
        gk = torch.zeros_like(kflat) if need_k else None
        gv = torch.zeros_like(vflat) if need_v else None
        Wp = L.Wp
        for n0, P in L.chunks(C):
            logits, valid, w = _chunk_weights(L, qph, kflat, n0, P, normalization, padding)
            g = gph[n0 : n0 + P]
            if need_v:
                for dy in range(K):
                    wd = w[:, :, dy * K : (dy + 1) * K].transpose(1, 2).contiguous()
                    gvd = torch.bmm(wd, g)  # (P, K, C)
                    for dx in range(K):
                        s = n0 + dy * Wp + dx
                        gv[s : s + P].add_(gvd[:, dx])
            if need_q or need_k:
                gw = torch.cat([torch.bmm(g, L.window_rows(vflat, n0, P, dy).transpose(1, 2)) for dy in range(K)], -1)
                gl = _normalize_backward(logits, w, gw, valid, normalization, dim=-1)
                for dy in range(K):
                    gld = gl[:, :, dy * K : (dy + 1) * K].contiguous()
                    if need_q:
                        gq[n0 : n0 + P].baddbmm_(gld, L.window_rows(kflat, n0, P, dy))
                    if need_k:
                        gkd = torch.bmm(gld.transpose(1, 2).contiguous(), qph[n0 : n0 + P])  # (P, K, d)
                        for dx in range(K):
                            s = n0 + dy * Wp + dx
                            gk[s : s + P].add_(gkd[:, dx])
        return (
            L.from_phase(gq).to(query.dtype) if need_q else None,
            L.unpad(gk, key.dtype) if need_k else None,
            L.unpad(gv, value.dtype) if need_v else None,
            None,
            None,
            None,
        )


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
            raise ValueError(
                f"backend {backend!r} cannot run on {query.device} tensors of dtype {query.dtype}"
            )
    return _BACKENDS[backend](query, key, value, kernel_size, normalization, padding)
