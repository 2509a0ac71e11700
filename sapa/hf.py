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

The book's trained toy experiment (a tiny SegFormer on the textures task) is in the book's
laboratory, :mod:`sapa.lab.hf` (``python -m sapa.lab.hf --train ...``).

Needs ``transformers`` (``pip install sapa[hf]``); it is imported on first use.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["replace_upsampling", "segformer_with_upsampler", "UpsamplingDecodeHead", "from_pretrained",
           "tiny_config", "b1_config", "overhead_table", "format_overhead_table", "PAPER_B1", "GUIDES"]

_HINT = "sapa.hf needs Hugging Face transformers: pip install sapa[hf]  (or: pip install transformers)"
GUIDES = ("projected", "encoder")

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
# command line
# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sapa.hf", description="SAPA in a Hugging Face SegFormer: overhead table "
                                "(the trained toy experiment: python -m sapa.lab.hf --train)")
    p.add_argument("--table", action="store_true", help="print the parameter / MAC overhead of every upsampler")
    p.add_argument("--size", type=int, default=512, help="image side for --table (default 512)")
    p.add_argument("--config", choices=("b1", "tiny"), default="b1", help="model for --table (default b1)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _transformers()
        if not args.table:
            raise ValueError("pass --table (see --help; training: python -m sapa.lab.hf --train)")
        cfg = b1_config() if args.config == "b1" else tiny_config()
        print(format_overhead_table(overhead_table(cfg, args.size)))
    except (ValueError, TypeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
