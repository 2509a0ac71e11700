"""Backend ``"torch"``: memory-efficient pure PyTorch, any device.

Groups output pixels by their window centre ("phases"), so that every window is a plain
shift of the low-resolution map; processes row chunks with batched matmuls in channels-last
layout and never materialises the unfolded value tensor of the whole map. The backward
recomputes the weights chunk by chunk (nothing but the inputs is saved).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..normalize import compute_dtype, normalize_backward, normalize_logits
from ..windows import max_per_centre, window_centres

__all__ = ["forward", "backward"]


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
        return centre, phase, max_per_centre(n_out, n_in)

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


def forward(query, key, value, kernel_size, normalization, padding) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H', W') output (contiguous, dtype of the inputs) and an empty statistic."""
    ct = compute_dtype(query.dtype)
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
    return ph.from_phase(out_ph).to(query.dtype), query.new_empty(0, dtype=torch.float32)


def backward(grad_out, query, key, value, out, stat, kernel_size, normalization, padding, needs):
    """(grad_query, grad_key, grad_value), None where ``needs`` (3 bools) is False."""
    ct = compute_dtype(query.dtype)
    q, k, v = query.to(ct), key.to(ct), value.to(ct)
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1:]
    K, R = kernel_size, kernel_size // 2
    ph = _Phases(Hq, Wq, H, W, q.device)
    m = ph.mr * ph.mc
    qph = ph.to_phase(q)
    gph = ph.to_phase(grad_out.to(ct))  # (B, H, W, m, C)
    kpad, vpad = _pad_cl(k, R), _pad_cl(v, R)
    need_q, need_k, need_v = needs
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
            gl = normalize_backward(logits, w, gw, valid, normalization, dim=-1)
            if need_q:
                gq_ph[:, r0:r1] = torch.matmul(gl, kwin)
            if need_k:
                _fold_add_(gkpad, torch.matmul(gl.transpose(-1, -2), qc), r0, K)

    def unpad(g, dtype):
        return g[:, R : R + H, R : R + W].permute(0, 3, 1, 2).contiguous().to(dtype)

    gq: Optional[torch.Tensor] = ph.from_phase(gq_ph).to(query.dtype) if need_q else None
    gk = unpad(gkpad, key.dtype) if need_k else None
    gv = unpad(gvpad, value.dtype) if need_v else None
    return gq, gk, gv
