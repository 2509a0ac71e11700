"""SAPA (and every other upsampler of the package) inside Hugging Face's SegFormer.

The paper measures SAPA in SegFormer's all-MLP head: the per-stage MLPs bring the encoder's
four hidden states (1/4, 1/8, 1/16, 1/32 of the image) to ``decoder_hidden_size`` channels,
then each of the three coarse stages is brought to 1/4 resolution by x2 steps (three for
1/32, two for 1/16, one for 1/8: six in all), each step guided by the feature at its
target resolution; the four 1/4-resolution maps are concatenated and fused. ::

    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    import sapa.hf

    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=6))
    sapa.hf.replace_upsampling(model, "sapa-b")             # in place; returns the model
    out = model(pixel_values, labels=labels)                # out.logits (B, 6, H/4, W/4), out.loss

**The guide** of a step is the target resolution's stage feature *after the head's
per-stage MLP* (``decoder_hidden_size`` channels), as in the official code: the SegFormer
logs of the SAPA release show every SAPA module with ``LayerNorm(256)`` and
``Linear(256 -> 32)`` on its guide (``embed_dim=256``), and FADE's published SegFormer head
calls ``upsamplers[i](_c3, _c4)`` with ``_c3`` the MLP-projected stage 3. Guide and feature
then have the same width, which FADE and SAPA-I require. ``guide="encoder"`` uses the raw
encoder hidden state instead (``hidden_sizes[j]`` channels; only for upsamplers that accept
another guide width).

**Bilinear** keeps the stock head's single resize per stage (``interpolate(..., size=1/4)``),
exactly what the official code does in its ``upsample_mode == 'bilinear'`` branch and what
the paper's Bilinear row measures: converting a model to ``"bilinear"`` leaves its logits
unchanged. Every other name builds six ``sapa.build_upsampler(name, D, D, 2, **options)``
modules in the official order (the 1/32 chain first, then 1/16, then 1/8).

The upsampler's name, options and guide choice are stored in ``model.config``
(``sapa_upsampler``, ``sapa_upsampler_options``, ``sapa_guide``), so ``save_pretrained``
writes them and :func:`from_pretrained` rebuilds the converted model (weights read with
safetensors, no code runs).

Command line (random initialisation, nothing is downloaded)::

    python -m sapa.hf --table                 # parameter / MAC overhead of the 15 upsamplers, B1 at 512
    python -m sapa.hf --train --seeds 0 1 2 --out book/results/segformer.csv

Needs ``transformers`` (``pip install sapa[hf]``); it is imported on first use.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["replace_upsampling", "segformer_with_upsampler", "UpsamplingDecodeHead", "from_pretrained",
           "tiny_config", "b1_config", "overhead_table", "format_overhead_table", "PAPER_B1",
           "train_segformer", "run_sweep", "load_results", "GUIDES"]

_HINT = "sapa.hf needs Hugging Face transformers: pip install sapa[hf]  (or: pip install transformers)"
GUIDES = ("projected", "encoder")
#: raw-file URL of the stored results when no checkout is around (e.g. on Colab)
from .results import RAW_URL as RESULTS_URL  # noqa: E402  where stored results are fetched from

#: The paper's Table 2, SegFormer-B1 column (ADE20K, 512 x 512): (mIoU, GFLOPs, M params); for the
#: upsamplers the FLOPs/params are the overhead over Bilinear (mmcv counts MACs as "FLOPs").
#: IndexNet's +12.60 M is six HIN blocks (six M2O blocks would be 26.7 M).
PAPER_B1 = {
    "bilinear": (41.68, 15.91, 13.74),
    "carafe": (42.82, 1.45, 0.44),
    "indexnet-hin": (41.50, 30.65, 12.60),
    "a2u": (41.45, 0.41, 0.06),
    "sapa-i": (43.05, 0.75, 0.00),
    "sapa-b": (43.20, 1.02, 0.10),
    "sapa-g": (44.39, 1.02, 0.10),
}
_TABLE1_LABEL = {"carafe": "CARAFE", "indexnet-hin": "IndexNet-HIN", "indexnet-m2o": "IndexNet-M2O",
                 "a2u": "A2U", "sapa-i": "SAPA-I", "sapa-b": "SAPA-B", "sapa-g": "SAPA-G"}


def _transformers():
    """Import transformers (its SegFormer classes) or raise an ImportError naming the extra."""
    try:
        import transformers
        from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: F401
    except ImportError as e:
        raise ImportError(_HINT) from e
    return transformers


def _sapa():
    import sapa

    return sapa


# --------------------------------------------------------------------------------------
# the decode head
# --------------------------------------------------------------------------------------
class UpsamplingDecodeHead(nn.Module):
    """SegFormer's all-MLP decode head with its upsampling replaced by ``upsampler``.

    Built from an existing ``SegformerDecodeHead`` (or another ``UpsamplingDecodeHead``): it
    *reuses* that head's modules (``linear_projections``, ``linear_fuse``, ``batch_norm``,
    ``activation``, ``dropout``, ``classifier``), so their state_dict keys and weights are
    kept, and adds ``upsamplers`` (six x2 steps for four stages; none for ``"bilinear"``).

    Args:
        head: the decode head to convert.
        config: the model's ``SegformerConfig``.
        upsampler: a name of ``sapa.available_upsamplers()``.
        guide: ``"projected"`` (default, the official choice: the stage feature after the
            head's MLP, D = decoder_hidden_size channels) or ``"encoder"`` (the raw hidden state).
        options: keyword options of ``sapa.build_upsampler`` (e.g. ``kernel_size``).

    ``forward(encoder_hidden_states)``: the encoder's S hidden states, stage j
    (B, hidden_sizes[j], H/2^(j+2), W/2^(j+2)) -> logits (B, num_labels, H/4, W/4).
    ``self.steps`` lists ``(stage, target_stage)`` of each upsampler, in module order.
    """

    def __init__(self, head: nn.Module, config, upsampler: str, guide: str = "projected",
                 options: Optional[dict] = None):
        super().__init__()
        for attr in ("linear_projections", "linear_fuse", "batch_norm", "activation", "dropout", "classifier"):
            setattr(self, attr, getattr(head, attr))
        self.config = config
        self.upsampler_name, self.guide, self.options = upsampler, guide, dict(options or {})
        S, D = int(config.num_encoder_blocks), int(config.decoder_hidden_size)
        self.steps: List[tuple] = []
        ups: List[nn.Module] = []
        if upsampler != "bilinear":
            build = _sapa().build_upsampler
            for k in range(S - 1, 0, -1):          # the official order: the coarsest stage first
                for j in range(k - 1, -1, -1):     # its steps into stages k-1, ..., 0
                    gc = D if guide == "projected" else int(config.hidden_sizes[j])
                    try:
                        ups.append(build(upsampler, D, gc, 2, **self.options))
                    except ValueError as e:
                        raise ValueError(f"upsampler {upsampler!r} with guide={guide!r} (feature {D} channels, "
                                         f"guide {gc}): {e}; guide='projected' gives both {D} channels") from e
                    self.steps.append((k, j))
        self.upsamplers = nn.ModuleList(ups)

    def extra_repr(self) -> str:
        return f"upsampler={self.upsampler_name!r}, guide={self.guide!r}, steps={len(self.steps)}"

    def _as_map(self, h: torch.Tensor, batch: int) -> torch.Tensor:
        if self.config.reshape_last_stage is False and h.ndim == 3:
            side = int(math.sqrt(h.shape[1]))
            h = h.reshape(batch, side, side, -1).permute(0, 3, 1, 2).contiguous()
        return h

    def forward(self, encoder_hidden_states, **kwargs) -> torch.Tensor:
        """encoder_hidden_states: S maps (B, C_j, H_j, W_j) -> logits (B, num_labels, H_0, W_0)."""
        hs = list(encoder_hidden_states)
        S = len(self.linear_projections)
        if len(hs) != S:
            raise ValueError(f"expected {S} encoder hidden states, got {len(hs)}")
        B = hs[-1].shape[0]
        maps = [self._as_map(h, B) for h in hs]
        proj = []
        for h, lin in zip(maps, self.linear_projections):
            height, width = h.shape[2], h.shape[3]
            proj.append(lin(h).transpose(1, 2).reshape(B, -1, height, width))
        size0 = proj[0].shape[-2:]
        if self.upsampler_name == "bilinear":
            outs = [F.interpolate(p, size=size0, mode="bilinear", align_corners=False) for p in proj]
        else:
            guides = proj if self.guide == "projected" else maps
            outs = [None] * S
            outs[0] = proj[0]
            i = 0
            for k in range(S - 1, 0, -1):
                u = proj[k]
                for j in range(k - 1, -1, -1):
                    g = guides[j]
                    try:
                        u = self.upsamplers[i](u, g)
                    except ValueError as e:
                        raise ValueError(f"upsampler {self.upsampler_name!r} (step {i}, stage {k} -> {j}): {e}; "
                                         f"image sides that are multiples of 32 make every stage exactly "
                                         f"twice the next") from e
                    if u.shape[-2:] != g.shape[-2:]:
                        raise ValueError(
                            f"upsampler {self.upsampler_name!r} (step {i}, stage {k} -> {j}) turned "
                            f"{tuple(proj[k].shape[-2:]) if j == k - 1 else 'a map'} into {tuple(u.shape[-2:])}, "
                            f"but stage {j} is {tuple(g.shape[-2:])}: integer-scale upsamplers need every "
                            f"stage exactly twice the next, i.e. image sides that are multiples of 32")
                    i += 1
                outs[k] = u
        hidden = self.linear_fuse(torch.cat(outs[::-1], dim=1))
        hidden = self.dropout(self.activation(self.batch_norm(hidden)))
        return self.classifier(hidden)


def _check_model(model):
    tf = _transformers()
    if not isinstance(model, tf.SegformerForSemanticSegmentation):
        raise TypeError(f"model must be a transformers SegformerForSemanticSegmentation, got {type(model).__name__}")
    return tf


def _check_name(upsampler, guide, options):
    if not isinstance(upsampler, str):
        raise TypeError(f"upsampler must be a string name, got {type(upsampler).__name__}")
    names = _sapa().available_upsamplers()
    if upsampler not in names:
        raise ValueError(f"unknown upsampler {upsampler!r}; available: {', '.join(names)}")
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
    try:
        json.dumps(options)
    except (TypeError, ValueError) as e:
        raise TypeError(f"upsampler options must be JSON values (they are stored in model.config): {e}") from e


def replace_upsampling(model, upsampler: str, guide: str = "projected", **options):
    """Turn the decode head's upsampling of a SegFormer into ``upsampler``, in place.

    Args:
        model: a ``transformers.SegformerForSemanticSegmentation`` (stock or converted before).
        upsampler: one of ``sapa.available_upsamplers()`` (15 names).
        guide: ``"projected"`` (default, as the official code) or ``"encoder"``; see the module
            docstring.
        **options: options of ``sapa.build_upsampler`` (e.g. ``kernel_size=5, embedding_dim=32``).

    Returns the same model: ``model(pixel_values (B, 3, H, W), labels=None)`` returns the usual
    ``SemanticSegmenterOutput`` (``logits`` (B, num_labels, H/4, W/4); ``loss`` with labels
    (B, H, W)). The head's MLPs, fuse layer and classifier keep their weights; the new
    upsamplers are random-initialised (their own default init) on the head's device and dtype.
    The choice is recorded in ``model.config`` (``sapa_upsampler``, ``sapa_upsampler_options``,
    ``sapa_guide``). Raises TypeError for a non-SegFormer model or a non-string name,
    ValueError for an unknown name or guide (before anything is changed).
    """
    _check_model(model)
    _check_name(upsampler, guide, options)
    old = model.decode_head
    head = UpsamplingDecodeHead(old, model.config, upsampler, guide, options)
    p = next(old.parameters())
    head.upsamplers.to(device=p.device, dtype=p.dtype)
    model.decode_head = head
    model.config.sapa_upsampler = upsampler
    model.config.sapa_upsampler_options = dict(options)
    model.config.sapa_guide = guide
    return model


def segformer_with_upsampler(config, upsampler: str, guide: str = "projected", **options):
    """A random-initialised ``SegformerForSemanticSegmentation(config)`` with its head's
    upsampling replaced by ``upsampler`` (see :func:`replace_upsampling`). The encoder and
    head are built first, so one ``torch.manual_seed`` gives every upsampler the same
    encoder and MLP weights."""
    tf = _transformers()
    if not isinstance(config, tf.SegformerConfig):
        raise TypeError(f"config must be a transformers SegformerConfig, got {type(config).__name__}")
    _check_name(upsampler, guide, options)
    return replace_upsampling(tf.SegformerForSemanticSegmentation(config), upsampler, guide, **options)


def from_pretrained(path, device="cpu"):
    """Rebuild a converted model saved with ``save_pretrained(path)`` (a local folder).

    The encoder and head weights load through ``SegformerForSemanticSegmentation.from_pretrained``
    (which maps the checkpoint's key names), then the head is converted as the config's
    ``sapa_upsampler`` / ``sapa_upsampler_options`` / ``sapa_guide`` say (``"bilinear"``, the
    stock head, when absent) and the upsamplers' weights are read from ``model.safetensors``
    (safetensors: data only, no code runs). Returns the model in eval mode.
    """
    tf = _transformers()
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / "model.safetensors"
    if not (path / "config.json").is_file() or not weights.is_file():
        raise FileNotFoundError(f"{path} holds no config.json and model.safetensors (save_pretrained output)")
    level = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()   # the upsamplers' keys are "unexpected" to the stock class
    try:
        model = tf.SegformerForSemanticSegmentation.from_pretrained(str(path))
    finally:
        tf.logging.set_verbosity(level)
    cfg = model.config
    name = getattr(cfg, "sapa_upsampler", "bilinear")
    replace_upsampling(model, name, getattr(cfg, "sapa_guide", "projected"),
                       **dict(getattr(cfg, "sapa_upsampler_options", None) or {}))
    prefix = "decode_head.upsamplers."
    ups = {k[len(prefix):]: v for k, v in load_file(str(weights)).items() if k.startswith(prefix)}
    model.decode_head.upsamplers.load_state_dict(ups, strict=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------
def tiny_config(num_labels: int = 6, hidden_sizes: Sequence[int] = (16, 32, 64, 128),
                decoder_hidden_size: int = 32, depths: Sequence[int] = (1, 1, 1, 1), **kwargs):
    """A small random-init ``SegformerConfig`` (four stages, strides 4, 2, 2, 2) for tests and
    the toy experiment; ``kwargs`` go to ``SegformerConfig``."""
    tf = _transformers()
    heads = [max(1, h // 32) for h in hidden_sizes]
    args = dict(num_labels=num_labels, hidden_sizes=list(hidden_sizes), depths=list(depths),
                num_attention_heads=heads, decoder_hidden_size=decoder_hidden_size, drop_path_rate=0.0)
    args.update(kwargs)
    return tf.SegformerConfig(**args)


def b1_config(num_labels: int = 150):
    """SegFormer-B1's configuration (MiT-B1 encoder, decoder width 256), ADE20K's 150 classes."""
    tf = _transformers()
    return tf.SegformerConfig(num_labels=num_labels, hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2],
                              num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=256)


# --------------------------------------------------------------------------------------
# complexity
# --------------------------------------------------------------------------------------
def _stage_sizes(config, size: int) -> List[int]:
    s, out = size, []
    for k, p in zip(config.strides, config.patch_sizes):
        s = (s + 2 * (p // 2) - p) // k + 1       # conv with padding p // 2
        out.append(s)
    return out


@torch.no_grad()
def overhead_table(config=None, size: int = 512, names: Optional[Iterable[str]] = None,
                   with_model: bool = True, **options) -> Dict[str, object]:
    """Parameters and MACs the head's upsampling costs with each upsampler, for ``config``
    (default :func:`b1_config`) at a ``size`` x ``size`` image, batch 1.

    Counted with :func:`sapa.complexity.count_flops` on each upsampling step alone (on the
    ``meta`` device: shapes only, no arithmetic, so B1 at 512 takes seconds; MACs in the
    paper's convention, normalisation left out) and
    :func:`sapa.complexity.count_params`. ``"bilinear"`` is the stock head's three resizes.

    Returns a dict: ``rows`` (one per name: ``name``, ``params``, ``macs``, ``d_params`` and
    ``d_macs`` (overhead over bilinear), ``table1_params``/``table1_macs`` (the paper's Table 1
    formula per step times the steps' low-res pixels, C = decoder width, d = 32, K = 5; None
    where the table has no row), ``paper_d_gflops``/``paper_d_mparams`` (Table 2, B1; None
    where absent)), ``steps`` [(stage, target, (h, w) low-res)], ``size``, and with
    ``with_model`` the stock model's ``model_params`` and ``model_macs`` (FlopCounterMode).
    """
    from .complexity import count_flops, count_params, paper_table1

    tf = _transformers()
    config = b1_config() if config is None else config
    if not isinstance(config, tf.SegformerConfig):
        raise TypeError(f"config must be a transformers SegformerConfig, got {type(config).__name__}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
        raise ValueError(f"size must be a positive multiple of 32 (every stage twice the next), got {size!r}")
    names = list(_sapa().available_upsamplers() if names is None else names)
    for n in names:
        _check_name(n, "projected", options)
    sides = _stage_sizes(config, size)
    D, S = int(config.decoder_hidden_size), int(config.num_encoder_blocks)
    steps = [(k, j, sides[j + 1]) for k in range(S - 1, 0, -1) for j in range(k - 1, -1, -1)]
    lowres_hw = sum(h * h for _, _, h in steps)
    formulas = paper_table1(C=D, d=options.get("embedding_dim", 32), K=options.get("kernel_size", 5))
    meta = torch.device("meta")   # shapes only: the counts need no arithmetic
    rows = []
    for n in names:
        params = macs = 0
        if n == "bilinear":
            with meta:
                up = _sapa().build_upsampler("bilinear", D, D, 2)
                y = torch.empty(1, D, sides[0], sides[0])
                for k in range(1, S):
                    macs += count_flops(up, torch.empty(1, D, sides[k], sides[k]), y)["macs"]
        else:
            for k, j, h in steps:
                with meta:
                    up = _sapa().build_upsampler(n, D, D, 2, **options)
                    x, y = torch.empty(1, D, h, h), torch.empty(1, D, 2 * h, 2 * h)
                params += count_params(up)
                macs += count_flops(up, x, y)["macs"]
        label = _TABLE1_LABEL.get(n)
        paper = PAPER_B1.get(n)
        rows.append(dict(name=n, params=params, macs=macs,
                         table1_params=6 * formulas[label][1] if label else (0 if n == "bilinear" else None),
                         table1_macs=lowres_hw * formulas[label][0] if label else None,
                         paper_d_gflops=(0.0 if n == "bilinear" else paper[1]) if paper else None,
                         paper_d_mparams=(0.0 if n == "bilinear" else paper[2]) if paper else None))
    base = next((r for r in rows if r["name"] == "bilinear"), None)
    for r in rows:
        r["d_params"] = r["params"] - (base["params"] if base else 0)
        r["d_macs"] = r["macs"] - (base["macs"] if base else 0)
    out = dict(rows=rows, steps=[(k, j, (h, h)) for k, j, h in steps], size=size, decoder_width=D)
    if with_model:
        from torch.utils.flop_counter import FlopCounterMode

        with meta:
            model = tf.SegformerForSemanticSegmentation(config).eval()
            with FlopCounterMode(display=False) as fc:
                model(torch.empty(1, config.num_channels, size, size))
        out["model_params"] = count_params(model)
        out["model_macs"] = int(fc.get_total_flops()) // 2
    return out


def format_overhead_table(table: Dict[str, object]) -> str:
    """Markdown table of :func:`overhead_table` (MACs in G, params in M), the paper's figures beside."""
    def f(v, scale, digits):
        return "–" if v is None else f"{v / scale:.{digits}f}"

    lines = []
    if "model_params" in table:
        lines.append(f"stock model ({table['size']} x {table['size']}, bilinear head): "
                     f"{table['model_params'] / 1e6:.2f} M params, {table['model_macs'] / 1e9:.2f} GMACs counted "
                     f"(paper, SegFormer-B1: 13.74 M, 15.91 GFLOPs)")
    head = ["upsampler", "GMACs of the upsampling", "+GMACs over bilinear", "Table 1 formula x steps (GMACs)",
            "paper +GFLOPs (Table 2)", "+M params", "Table 1 formula x 6 (M)", "paper +M params (Table 2)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        lines.append("| " + " | ".join([
            r["name"], f(r["macs"], 1e9, 3), f(r["d_macs"], 1e9, 2), f(r["table1_macs"], 1e9, 2),
            f(r["paper_d_gflops"], 1, 2), f(r["d_params"], 1e6, 3), f(r["table1_params"], 1e6, 3),
            f(r["paper_d_mparams"], 1, 2)]) + " |")
    lines.append("")
    lines.append("MACs in the paper's convention (sapa.complexity: one per multiply-accumulate, "
                 "normalisation left out); the paper's FLOPs are mmcv counts, i.e. MACs, and its Bilinear "
                 "row counts the resizes as free. Table 1 formula: C = decoder width, d = 32, K = 5, "
                 "summed over the six steps' low-res pixels.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# the toy experiment: a tiny random-init SegFormer on the textures task
# --------------------------------------------------------------------------------------
#: the stored experiment's settings (``python -m sapa.hf --train``); ``quick`` is the chapter's live run
EXPERIMENT = dict(hidden_sizes=(16, 32, 64, 128), decoder_hidden_size=32, size=64, num_classes=6,
                  train_samples=512, val_samples=128, batch_size=16, epochs=12, lr=2e-3, weight_decay=0.01)
QUICK = dict(EXPERIMENT, train_samples=256, epochs=3)

CSV_FIELDS = ["upsampler", "seed", "epochs", "train_samples", "steps", "miou", "boundary_iou", "pixel_acc",
              "val_loss", "first_loss", "last_loss", "params", "seconds", "setup"]


def _setup_key(s: dict) -> str:
    keys = ("hidden_sizes", "decoder_hidden_size", "size", "num_classes", "train_samples", "val_samples",
            "batch_size", "epochs", "lr", "weight_decay")
    return ";".join(f"{k}={list(s[k]) if isinstance(s[k], tuple) else s[k]}" for k in keys)


def _batches(ds, order: List[int], batch_size: int):
    for i in range(0, len(order), batch_size):
        items = [ds[j] for j in order[i:i + batch_size]]
        yield torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


@torch.no_grad()
def _evaluate(model, ds, batch_size: int, num_classes: int) -> Dict[str, float]:
    from .metrics import SegmentationMeter

    meter, losses = SegmentationMeter(num_classes), []
    model.eval()
    for img, mask in _batches(ds, list(range(len(ds))), batch_size):
        out = model(pixel_values=img, labels=mask)
        up = F.interpolate(out.logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        meter.update(up.argmax(1), mask)
        losses.append(float(out.loss) * len(img))
    model.train()
    m = meter.compute()
    return dict(miou=m["miou"], boundary_iou=m["boundary_iou"], pixel_acc=m["pixel_acc"],
                val_loss=sum(losses) / len(ds))


def train_segformer(upsampler: str, seed: int = 0, setup: Optional[dict] = None, log=None) -> Dict[str, object]:
    """Train a tiny random-init SegFormer with ``upsampler`` on ``sapa.data.TexturedRegions``.

    ``setup`` (default :data:`EXPERIMENT`): model widths, image size, samples, batch size,
    epochs, AdamW lr / weight decay (warm-up then cosine, :func:`sapa.train.lr_at`). The seed
    fixes the initialisation (encoder and MLPs identical across upsamplers), the training
    samples (fresh each epoch) and their order, so two upsamplers with one seed are a pair.
    The validation set (``val_samples`` images, data seed 10_000) is the same for every run.

    Returns a dict of the CSV fields (``miou``, ``boundary_iou``, ``pixel_acc``, ``val_loss``
    of the last epoch at full resolution, ``first_loss``/``last_loss`` the mean training loss
    of the first and last epoch, ``steps``, ``params``, ``seconds``) plus ``curve`` (per
    epoch: ``epoch``, ``train_loss``, ``val_loss``, ``miou``, ``boundary_iou``).
    """
    from .data import TexturedRegions
    from .train import lr_at

    s = dict(EXPERIMENT if setup is None else setup)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    cfg = tiny_config(num_labels=s["num_classes"], hidden_sizes=tuple(s["hidden_sizes"]),
                      decoder_hidden_size=s["decoder_hidden_size"])
    model = segformer_with_upsampler(cfg, upsampler)
    model.train()
    train_ds = TexturedRegions(s["train_samples"], size=s["size"], num_classes=s["num_classes"], seed=seed)
    val_ds = TexturedRegions(s["val_samples"], size=s["size"], num_classes=s["num_classes"], seed=10_000,
                             split="val")
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    per_epoch = math.ceil(s["train_samples"] / s["batch_size"])
    total = per_epoch * s["epochs"]
    gen = torch.Generator().manual_seed(seed)
    step, curve = 0, []
    for epoch in range(s["epochs"]):
        train_ds.set_epoch(epoch)
        order = torch.randperm(len(train_ds), generator=gen).tolist()
        losses = []
        for img, mask in _batches(train_ds, order, s["batch_size"]):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, s["lr"])
            loss = model(pixel_values=img, labels=mask).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
            step += 1
        ev = _evaluate(model, val_ds, s["batch_size"], s["num_classes"])
        curve.append(dict(epoch=epoch + 1, train_loss=sum(losses) / len(losses), **ev))
        if log is not None:
            log(f"{upsampler} seed {seed} epoch {epoch + 1}/{s['epochs']}: train loss {curve[-1]['train_loss']:.4f}, "
                f"val mIoU {ev['miou']:.4f}, boundary IoU {ev['boundary_iou']:.4f}")
    last = curve[-1]
    return dict(upsampler=upsampler, seed=seed, epochs=s["epochs"], train_samples=s["train_samples"], steps=step,
                miou=last["miou"], boundary_iou=last["boundary_iou"], pixel_acc=last["pixel_acc"],
                val_loss=last["val_loss"], first_loss=curve[0]["train_loss"], last_loss=last["train_loss"],
                params=sum(p.numel() for p in model.parameters()), seconds=time.perf_counter() - t0,
                setup=_setup_key(s), curve=curve)


def _read_rows(path: Path) -> List[Dict[str, object]]:
    ints, floats = {"seed", "epochs", "train_samples", "steps", "params"}, {
        "miou", "boundary_iou", "pixel_acc", "val_loss", "first_loss", "last_loss", "seconds"}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ints & r.keys():
            r[k] = int(r[k])
        for k in floats & r.keys():
            r[k] = float(r[k])
    return rows


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_sweep(out, upsamplers: Sequence[str] = ("bilinear", "sapa-b"), seeds: Sequence[int] = (0, 1, 2),
              setup: Optional[dict] = None, command: Optional[str] = None, log=print) -> List[Dict[str, object]]:
    """Train every (upsampler, seed) pair not yet in the CSV ``out`` and append its row.

    Append-only and resumable: finished rows (same upsampler, seed and setup) are skipped,
    each new row is appended (and flushed) as soon as its run ends, and the JSON beside the
    CSV (``out`` with ``.json``) is rewritten after each run with ``command``, ``seconds``
    (wall time summed over the runs), ``date``, ``machine``, versions, the setup and the
    per-epoch ``curves`` (keyed ``"<upsampler>/<seed>"``). A CSV of another setup raises
    ValueError (nothing is overwritten). Returns the rows of the CSV.
    """
    out = Path(out)
    if out.suffix != ".csv":
        raise ValueError(f"out must name a .csv file (its .json goes beside it), got {out}")
    s = dict(EXPERIMENT if setup is None else setup)
    key = _setup_key(s)
    for n in upsamplers:
        _check_name(n, "projected", {})
    rows = _read_rows(out) if out.is_file() else []
    if rows and (list(rows[0].keys()) != CSV_FIELDS or any(r["setup"] != key for r in rows)):
        raise ValueError(f"{out} holds results of another setup or format; pass another --out")
    meta_path = out.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    done = {(r["upsampler"], int(r["seed"])) for r in rows}
    todo = [(n, sd) for sd in seeds for n in upsamplers if (n, sd) not in done]
    if not todo:
        log(f"{out}: all {len(done)} runs already there")
        return rows
    out.parent.mkdir(parents=True, exist_ok=True)
    tf = _transformers()
    for n, sd in todo:
        res = train_segformer(n, sd, s, log=log)
        curve = res.pop("curve")
        new = not out.is_file() or out.stat().st_size == 0
        with open(out, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in res.items()})
        rows.append(res)
        meta.setdefault("curves", {})[f"{n}/{sd}"] = curve
        meta.update(command=command or meta.get("command"), setup={k: (list(v) if isinstance(v, tuple) else v)
                                                                   for k, v in s.items()},
                    seconds=round(meta.get("seconds", 0.0) + res["seconds"], 1),
                    date=time.strftime("%Y-%m-%d"),
                    machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads: {torch.get_num_threads()}, "
                            f"{platform.system()}",
                    torch=torch.__version__, transformers=tf.__version__)
        _write_json(meta_path, meta)
        log(f"{n} seed {sd}: mIoU {res['miou']:.4f}, boundary IoU {res['boundary_iou']:.4f} "
            f"({res['seconds']:.0f} s) -> {out}")
    return _read_rows(out)


def load_results(name: str = "segformer", start=None):
    """The stored toy experiment: ``(rows, meta)`` from ``<results>/<name>.csv`` and ``.json``.

    Looks in :func:`sapa.results.results_dir` (``$SAPA_RESULTS_DIR``, or ``book/results`` of
    the repository checkout), then falls back to the repository's raw files on GitHub
    (:func:`sapa.results.stored_file`, e.g. on Colab, where the package is installed without them). Rows
    are dicts with numbers converted; reading runs no code (CSV and JSON only).
    """
    from .results import stored_file

    csv_path = stored_file(f"{name}.csv", start)  # the checkout's copy, else fetched once (Colab)
    try:
        meta = json.loads(stored_file(f"{name}.json", start).read_text())
    except FileNotFoundError:
        meta = {}
    return _read_rows(csv_path), meta


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sapa.hf", description="SAPA in a Hugging Face SegFormer")
    p.add_argument("--table", action="store_true", help="print the parameter / MAC overhead of every upsampler")
    p.add_argument("--size", type=int, default=512, help="image side for --table (default 512)")
    p.add_argument("--config", choices=("b1", "tiny"), default="b1", help="model for --table (default b1)")
    p.add_argument("--train", action="store_true", help="train the toy experiment (resumable, append-only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--upsamplers", nargs="+", default=["bilinear", "sapa-b"])
    p.add_argument("--out", default="book/results/segformer.csv", help="CSV of --train (a .json goes beside)")
    p.add_argument("--quick", action="store_true", help="--train with the chapter's quick setup")
    p.add_argument("--epochs", type=int, default=None, help="override the setup's epochs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _transformers()
        if args.threads:
            torch.set_num_threads(args.threads)
        if not (args.table or args.train):
            raise ValueError("pass --table and/or --train (see --help)")
        if args.table:
            cfg = b1_config() if args.config == "b1" else tiny_config()
            print(format_overhead_table(overhead_table(cfg, args.size)))
        if args.train:
            setup = dict(QUICK if args.quick else EXPERIMENT)
            if args.epochs is not None:
                if args.epochs < 1:
                    raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
                setup["epochs"] = args.epochs
            command = "python -m sapa.hf " + " ".join(argv if argv is not None else sys.argv[1:])
            run_sweep(args.out, args.upsamplers, args.seeds, setup, command=command)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are stored; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
