"""Parameter and operation counts of upsamplers, and the paper's Table 1 recomputed.

Convention
----------
Everything is reported in **multiply-accumulates (MACs)**, the unit of the paper's Table 1
(its CARAFE row, Cd + 36K^2 d + 4K^2 C, counts one per weight per output element).
``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per MAC for the ops it sees
(mm, addmm, bmm, convolutions, transposed convolutions); we divide by 2. Biases are not
counted (neither does the counter nor the paper).

The counter does not see elementwise ops. They are added explicitly, by category, from the
shapes (each upsampler in :mod:`sapa.upsamplers` reports them in ``uncounted_macs``):

``weighted_sum``  one MAC per multiply of a kernel weight with a feature value (CARAFE-style
                  reassembly K^2 per output element; IndexNet's index * x one; A2U's channel
                  sum of u * v one per channel; SAPA-D's weighted sum of sampled values).
                  SAPA-I/B/P/G need none: while counting, :class:`sapa.SAPA` modules run on
                  the ``"reference"`` backend, whose einsums (bmm's) for the inner products
                  and the weighted sum are seen by the counter with exactly the arithmetic
                  of Eq. 2-3 (the fast backends' layouts do a little extra work on padding).
``similarity``    SAPA-D's dot products with sampled keys (elementwise, not a matmul).
``gate``          one MAC per multiply in a gated mix (g * a + (1 - g) * b: two per element;
                  A2U's per-sample 1x1 conv of its one-channel affinity: one per output channel).
``sampling``      bilinear reads: 4 MACs per sampled element (interpolate / grid_sample).
``norm``          LayerNorm / GroupNorm / BatchNorm: 2 MACs per output element (normalise
                  and affine; the mean/variance reductions are ignored). Counted with forward
                  hooks and reported apart, because the paper leaves normalisation out.

Not counted at all: softmax, sigmoid, ReLU and other activations, additions of two maps,
scalings by constants, pooling, pixel shuffles and index copies (nearest upsampling).

``macs`` = counter + explicit categories except ``norm`` (the paper's convention);
``macs_with_norm`` adds ``norm``; ``flops`` = 2 * ``macs_with_norm``.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .modules import SAPA

__all__ = ["count_params", "count_flops", "paper_table1", "table1", "format_table"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (biases and normalisation affines included)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _explicit(module: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor]) -> Dict[str, int]:
    if hasattr(module, "uncounted_macs"):
        return dict(module.uncounted_macs(x, y))
    if isinstance(module, SAPA) and module.variant == "G":
        return {"gate": 2 * x.shape[0] * module.embedding_dim * y.shape[-2] * y.shape[-1]}
    return {}


@torch.no_grad()
def count_flops(module: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> Dict[str, int]:
    """Count the operations of one forward pass ``module(x, y)`` (or ``module(x)``), in MACs.

    Args:
        module: an upsampler from :func:`sapa.build_upsampler`, a :class:`sapa.SAPA`, or any
            module (then only the counter and normalisation layers are seen).
        x: (B, C, H, W) low-res input; y: (B, C_y, H', W') guide or None.

    Returns:
        dict with ``counter`` (matmul/conv MACs seen by FlopCounterMode), the explicit
        categories (``weighted_sum``, ``similarity``, ``gate``, ``sampling``; see the module
        docstring), ``norm``, ``macs`` (all but ``norm``), ``macs_with_norm`` and ``flops``
        (= 2 * macs_with_norm). Totals are for the whole batch. The module's buffers (e.g.
        BatchNorm running statistics) are restored after the probe pass.
    """
    norm = [0]

    def hook(mod, inp, out):
        norm[0] += 2 * out.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, _NORMS)]
    # SAPA modules run on the "reference" backend while counting: its einsums are bmm's with
    # exactly the arithmetic of Eq. 2-3, whatever layout tricks the fast backends use.
    sapas = [(m, m.backend) for m in module.modules() if isinstance(m, SAPA)]
    buffers = [(b, b.clone()) for b in module.buffers()]  # BatchNorm running stats
    try:
        for m, _ in sapas:
            m.backend = "reference"
        with FlopCounterMode(display=False) as fc:
            module(x) if y is None else module(x, y)
    finally:
        for h in handles:
            h.remove()
        for m, backend in sapas:
            m.backend = backend
        for b, saved in buffers:
            b.copy_(saved)
    counts = {"counter": int(fc.get_total_flops()) // 2}
    for k in ("weighted_sum", "similarity", "gate", "sampling"):
        counts[k] = 0
    for k, v in _explicit(module, x, y).items():
        counts[k] = counts.get(k, 0) + int(v)
    counts["norm"] = norm[0]
    counts["macs"] = sum(v for k, v in counts.items() if k != "norm")
    counts["macs_with_norm"] = counts["macs"] + counts["norm"]
    counts["flops"] = 2 * counts["macs_with_norm"]
    return counts


# --------------------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------------------
def paper_table1(C: int = 256, d: int = 32, K: int = 5, d_carafe: int = 64, K_carafe: int = 5, K_a2u: int = 3):
    """The paper's Table 1 formulas: {module: (MACs per low-res pixel, params)}.

    C channels, d SAPA's embedding dimension, K SAPA's window; CARAFE uses d_carafe = 64 and
    K_carafe = 5, A2U K_a2u = 3 (the defaults stated in the table caption).
    """
    dc, Kc, Ka = d_carafe, K_carafe, K_a2u
    return {
        "CARAFE": (C * dc + 36 * Kc**2 * dc + 4 * Kc**2 * C, C * dc + 36 * Kc**2 * dc),
        "IndexNet-HIN": (32 * C**2 + 12 * C, 32 * C**2 + 8 * C),
        "IndexNet-M2O": (68 * C**2 + 4 * C, 68 * C**2),
        "A2U": (73 * C + 4 * Ka**2 + 4 * Ka**2 * C, 4 * Ka**2 * C + 2 * C),
        "SAPA-I": (8 * K**2 * C, 0),
        "SAPA-B": (5 * C * d + 4 * K**2 * d + 4 * K**2 * C, 2 * C * d),
        "SAPA-G": (5 * C * d + 4 * K**2 * d + 4 * K**2 * C + C + 5 * d, 2 * C * d + C),
    }


def _notes(C: int, d: int, K: int) -> Dict[str, str]:
    return {
        "CARAFE": (
            "MACs match the formula exactly (Cd + 36K^2d from the 1x1 and 3x3 convs, 4K^2C "
            f"assembly). Params: +{64 + 4 * 25} biases of the two convs."
        ),
        "IndexNet-HIN": (
            "MACs match (32C^2 conv 4x4 C->2C at stride 2, 8C 1x1 2C->4, 4C index*x). "
            f"Params: +4C = {4 * C} for BatchNorm(2C); norm MACs are the BatchNorm."
        ),
        "IndexNet-M2O": (
            "MACs match (4 x (16C^2 + C^2) = 68C^2, 4C index*x). Params: +8C = "
            f"{8 * C} for the four BatchNorm(C); norm MACs are the BatchNorms."
        ),
        "A2U": (
            "Per-pixel MACs match 73C + 4K^2 + 4K^2C (two stride-2 6x6 filters 72C, u.v sum C, "
            "a*P 4K^2, assembly). The counter also sees the per-sample 1x1 convs that make the "
            "filters from pooled features (36*2C + 4K^2C per sample, divided by HW here; the "
            "paper ignores them). Params: +4C GroupNorm affines, +2 + 4K^2 biases. The paper's "
            "FLOPs total omits the GroupNorms (norm column)."
        ),
        "SAPA-I": (
            "MACs match 8K^2C (inner product and assembly, both as matmuls). Params: the "
            f"paper says 0; the two LayerNorms have 4C = {4 * C} affine parameters."
        ),
        "SAPA-B": (
            "MACs match 5Cd + 4K^2d + 4K^2C. Params: 2Cd + 2d biases + 4C LayerNorm affines "
            f"(+{2 * d + 4 * C}). LayerNorm on both inputs (10C per low-res pixel) is in the norm column."
        ),
        "SAPA-G": (
            "Counted: 6Cd + C + 8d + 4K^2d + 4K^2C. The paper's 5Cd omits the query projection "
            "of the decoder feature (P_xx: Cd, because sapa.SAPA projects x at low resolution "
            "and then upsamples, which commutes with nearest upsampling; projecting after the "
            "upsampling, as the official code does, costs 4Cd), and its total writes 5d for the gated "
            "mix where its own row (2) says 8d (2 multiplies x d x 4 pixels). Params: the paper's "
            "2Cd + C also omits P_xx (Cd); +3d + 1 biases, +4C LayerNorm affines."
        ),
    }


def table1(C: int = 256, d: int = 32, size: int = 16, K: int = 5) -> List[dict]:
    """Recompute the paper's Table 1 by counting the project's modules.

    Args:
        C: channels of decoder and encoder features (the paper assumes they are equal).
        d: SAPA's embedding dimension (CARAFE keeps its own d = 64, A2U K = 3).
        size: low-res side H = W of the probe input (the guide is 2H x 2W, batch 1).
        K: SAPA's window.

    Returns:
        one dict per module (CARAFE, IndexNet-HIN, IndexNet-M2O, A2U, SAPA-I, SAPA-B, SAPA-G)
        with ``module``, ``macs_per_hw`` (counted, paper convention, per low-res pixel),
        ``norm_macs_per_hw``, ``paper_macs_per_hw``, ``params``, ``paper_params`` and ``note``.
    """
    from .upsamplers import build_upsampler

    names = {
        "CARAFE": ("carafe", {}),
        "IndexNet-HIN": ("indexnet-hin", {}),
        "IndexNet-M2O": ("indexnet-m2o", {}),
        "A2U": ("a2u", {}),
        "SAPA-I": ("sapa-i", {"kernel_size": K}),
        "SAPA-B": ("sapa-b", {"kernel_size": K, "embedding_dim": d}),
        "SAPA-G": ("sapa-g", {"kernel_size": K, "embedding_dim": d}),
    }
    paper = paper_table1(C, d, K)
    notes = _notes(C, d, K)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, C, size, size, generator=g)
    y = torch.randn(1, C, 2 * size, 2 * size, generator=g)
    rows = []
    for label, (name, opts) in names.items():
        torch.manual_seed(0)
        m = build_upsampler(name, C, C, **opts)
        c = count_flops(m, x, y)
        hw = size * size
        rows.append(
            {
                "module": label,
                "macs_per_hw": c["macs"] / hw,
                "norm_macs_per_hw": c["norm"] / hw,
                "paper_macs_per_hw": paper[label][0],
                "params": count_params(m),
                "paper_params": paper[label][1],
                "note": notes[label],
            }
        )
    return rows


def _human(v: float) -> str:
    for unit, f in (("M", 1e6), ("K", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.3g}{unit}"
    return f"{v:.4g}"


def format_table(rows: List[dict], notes: bool = True) -> str:
    """Markdown table of :func:`table1` rows (numbers in K/M, exact values in the dicts)."""
    head = ["module", "MACs/HW counted", "paper", "norm MACs/HW", "params counted", "paper params"]
    if notes:
        head.append("note")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["module"],
            _human(r["macs_per_hw"]),
            _human(r["paper_macs_per_hw"]),
            _human(r["norm_macs_per_hw"]),
            _human(r["params"]),
            _human(r["paper_params"]),
        ]
        if notes:
            cells.append(r["note"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
