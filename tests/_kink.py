"""Inputs for finite-difference checks of the relu normalisation that stay away from its kink."""
import torch
import torch.nn.functional as F

import sapa


def min_abs_logit(q: torch.Tensor, k: torch.Tensor, K: int) -> float:
    """Smallest |q . k| over every output pixel's in-map window positions (positions outside
    the map have a logit of exactly 0 whatever q is, so no finite difference crosses a kink
    there). q (B, d, H', W'), k (B, d, H, W)."""
    B, d, Hq, Wq = q.shape
    H, W = k.shape[-2:]
    ku = F.unfold(k.detach(), K, padding=K // 2).view(B, d, K * K, H, W)
    inside = F.unfold(torch.ones(1, 1, H, W, dtype=k.dtype), K, padding=K // 2).view(1, K * K, H, W) > 0
    ri, ci = sapa.window_centres(Hq, H), sapa.window_centres(Wq, W)
    kw = ku[:, :, :, ri][..., ci]  # (B, d, K*K, H', W')
    logits = (q.detach().unsqueeze(2) * kw).sum(1)  # (B, K*K, H', W')
    mask = inside[:, :, ri][..., ci].expand_as(logits)
    return float(logits[mask].abs().min())


def away_from_kink(q: torch.Tensor, k: torch.Tensor, K: int, margin: float = 0.05) -> None:
    """Make every in-map logit q . k at least ``margin`` away from relu's kink, in place, with
    both signs present: k's entries and q's magnitudes are moved to >= 0.2, and q is positive on
    a checkerboard of output pixels and negative on the rest (so q . k >= 0.04 d or <= -0.04 d)."""
    d = q.shape[1]
    if 0.04 * d < margin:
        raise ValueError(f"d = {d} cannot give a margin of {margin}")
    with torch.no_grad():
        k.copy_(k.abs() + 0.2)
        Hq, Wq = q.shape[-2:]
        sign = 1 - 2 * ((torch.arange(Hq).view(-1, 1) + torch.arange(Wq).view(1, -1)) % 2).to(q.dtype)
        q.copy_((q.abs() + 0.2) * sign)
    assert min_abs_logit(q, k, K) >= margin
