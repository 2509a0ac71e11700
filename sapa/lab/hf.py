"""The book's SegFormer experiment: a tiny random-init Hugging Face SegFormer trained on the
textures task with each upsampler (chapter 9), stored in ``book/results/segformer.csv``.

The adapter itself (:func:`sapa.hf.replace_upsampling`, the configs, the overhead table) is
part of the library, :mod:`sapa.hf`. ::

    python -m sapa.lab.hf --train --seeds 0 1 2 --threads 1 --out book/results/segformer.csv
    python -m sapa.lab.hf --train --quick --out /tmp/segformer.csv     # the chapter's live run

Needs ``transformers`` (``pip install sapa[hf]``).
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
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..hf import _check_name, _transformers, segformer_with_upsampler, tiny_config
from .stats import signed

__all__ = ["EXPERIMENT", "QUICK", "CSV_FIELDS", "STORED_COMMAND", "train_segformer", "run_sweep", "load_results",
           "stored_results", "overhead_rows", "sapa_g_gap", "sapa_g_sentence", "head_summary", "runs_table",
           "run_details", "curves_figure", "convergence", "convergence_sentence", "paired", "paired_table",
           "paired_sentence", "reading_sentence", "summary_sentence", "main"]

#: the command that wrote book/results/segformer.csv (and its .json)
STORED_COMMAND = "python -m sapa.lab.hf --train --seeds 0 1 2 --threads 1 --out book/results/segformer.csv"


# --------------------------------------------------------------------------------------
# the toy experiment: a tiny random-init SegFormer on the textures task
# --------------------------------------------------------------------------------------
#: the stored experiment's settings (``python -m sapa.lab.hf --train``); ``quick`` is the chapter's live run
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
    """Train a tiny random-init SegFormer with ``upsampler`` on ``sapa.lab.data.TexturedRegions``.

    ``setup`` (default :data:`EXPERIMENT`): model widths, image size, samples, batch size,
    epochs, AdamW lr / weight decay (warm-up then cosine, :func:`sapa.lab.train.lr_at`). The seed
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

    Looks in :func:`sapa.lab.results.results_dir` (``$SAPA_RESULTS_DIR``, or ``book/results`` of
    the repository checkout), then falls back to the repository's raw files on GitHub
    (:func:`sapa.lab.results.stored_file`, e.g. on Colab, where the package is installed without
    them). Rows are dicts with numbers converted; reading runs no code (CSV and JSON only); a
    missing JSON gives ``meta = {}``.

    Raises FileNotFoundError (:class:`sapa.lab.results.StoredFileUnavailable` with ``reason``
    "missing" or "download") when the CSV cannot be had; :func:`stored_results` words that.
    """
    from .results import stored_file

    csv_path = stored_file(f"{name}.csv", start)  # the checkout's copy, else fetched once (Colab)
    try:
        meta = json.loads(stored_file(f"{name}.json", start).read_text())
    except FileNotFoundError:
        meta = {}
    return _read_rows(csv_path), meta


# --------------------------------------------------------------------------------------
# the chapter's analysis: tables, figure and sentences from the stored result
# --------------------------------------------------------------------------------------
def _name(upsampler: str) -> str:
    from .plotting import DISPLAY_NAMES

    return DISPLAY_NAMES.get(upsampler, upsampler)


def _plural(n: int, word: str, plural: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _join(items: Sequence[str]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _signed(value: float, digits: int = 2) -> str:
    """:func:`sapa.lab.stats.signed` with a typeset minus (U+2212)."""
    return signed(value, digits, minus="\u2212")


def stored_results(name: str = "segformer", start=None):
    """The stored experiment for the chapter: ``(rows, meta, status)``.

    ``rows``/``meta`` as :func:`load_results`, or ``(None, {})`` when the CSV cannot be had;
    ``status`` is one Markdown sentence: what the file holds, or why it is not shown (not
    computed yet, with :data:`STORED_COMMAND`; or could not be downloaded, and why)."""
    from .results import unavailable_sentence

    try:
        rows, meta = load_results(name, start)
    except FileNotFoundError as err:
        if getattr(err, "reason", None) in ("missing", "download"):
            return None, {}, unavailable_sentence(err, STORED_COMMAND)
        reason = getattr(err, "reason", None) or str(err)  # an older stored_file: only a message
        return None, {}, f"The stored result `{name}.csv` could not be read ({reason}). `{STORED_COMMAND}` writes it."
    ups = list(dict.fromkeys(r["upsampler"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    status = (f"The stored `{name}.csv` holds {_plural(len(rows), 'run')}: "
              f"{_join([_name(u) for u in ups]) if ups else 'no upsampler'}"
              + (f" with {_plural(len(seeds), 'seed')} ({_join(seeds)})" if seeds else "") + ".")
    if not meta:
        status += f" Its `{name}.json` (command, machine, curves) is not there."
    return rows, meta, status


def overhead_rows(table: Dict[str, object]):
    """The chapter's cost table of :func:`sapa.hf.overhead_table`: ``(header, rows)`` with
    display names, GMACs and M parameters counted, from the Table 1 formula and from Table 2."""
    def cell(v, scale, digits):
        return "–" if v is None else f"{v / scale:.{digits}f}"

    if not isinstance(table, dict) or "rows" not in table:
        raise ValueError("table must be the dict that sapa.hf.overhead_table returns")
    header = ["upsampler", "GMACs counted", "Table 1 formula", "Table 2", "+M params counted",
              "Table 1 formula", "Table 2"]
    rows = [[_name(r["name"]), cell(r["macs"], 1e9, 2), cell(r["table1_macs"], 1e9, 2),
             cell(r["paper_d_gflops"], 1, 2), cell(r["d_params"], 1e6, 3), cell(r["table1_params"], 1e6, 3),
             cell(r["paper_d_mparams"], 1, 2)] for r in table["rows"]]
    return header, rows


def sapa_g_gap(table: Dict[str, object], embedding_dim: int = 32, kernel_size: int = 5) -> Dict[str, float]:
    """Where SAPA-G's counted cost departs from the paper's, in :func:`sapa.hf.overhead_table`'s
    ``table`` (which must have a "sapa-g" row, C = the decoder width).

    The paper's Table 1 gives SAPA-G ``5Cd + 4K^2d + 4K^2C + C + 5d`` MACs per low-resolution
    pixel and ``2Cd + C`` parameters: it leaves out the projection of the decoder feature in the
    query (``q_x`` of :class:`sapa.SAPA`, ``Cd`` weights; ``Cd`` MACs per low-resolution pixel
    here, where it runs before the nearest upsampling). The counts of one module (built on the
    meta device) split the rest into biases and LayerNorm affines, and the MACs into that
    projection and the gated mix (8d counted against the formula's 5d).

    Returns a dict: ``macs``/``params`` (counted, six steps), ``formula_macs``/``formula_params``
    (Table 1 x steps), ``paper_gmacs``/``paper_mparams`` (Table 2), ``macs_over_paper`` and
    ``params_over_paper`` (counted / Table 2 - 1), ``projection_macs``/``projection_params`` (the
    omitted ``q_x`` weights, six steps), ``bias_params``, ``norm_params``, ``mix_macs``.
    """
    import torch

    from ..modules import SAPA

    rows = {r["name"]: r for r in table.get("rows", [])} if isinstance(table, dict) else {}
    if "sapa-g" not in rows:
        raise ValueError("table needs a 'sapa-g' row (sapa.hf.overhead_table(..., names=[..., 'sapa-g']))")
    r = rows["sapa-g"]
    C, steps = int(table["decoder_width"]), table["steps"]
    lowres = sum(h * w for _, _, (h, w) in steps)
    with torch.device("meta"):
        m = SAPA(C, C, variant="G", kernel_size=kernel_size, embedding_dim=embedding_dim)
    n = len(steps)
    proj = n * m.q_x.weight.numel()
    bias = n * sum(mod.bias.numel() for mod in (m.q_y, m.q_x, m.k_x, m.gate))
    norm = n * sum(p.numel() for p in list(m.norm_x.parameters()) + list(m.norm_y.parameters()))
    d = m.embedding_dim
    out = dict(macs=r["macs"], params=r["d_params"], formula_macs=r["table1_macs"], formula_params=r["table1_params"],
               paper_gmacs=r["paper_d_gflops"], paper_mparams=r["paper_d_mparams"],
               projection_macs=lowres * C * d, projection_params=proj, bias_params=bias, norm_params=norm,
               mix_macs=lowres * 3 * d, steps=n, channels=C, embedding_dim=d)
    out["macs_over_paper"] = r["macs"] / (1e9 * r["paper_d_gflops"]) - 1 if r["paper_d_gflops"] else math.nan
    out["params_over_paper"] = r["d_params"] / (1e6 * r["paper_d_mparams"]) - 1 if r["paper_d_mparams"] else math.nan
    return out


def sapa_g_sentence(gap: Dict[str, float]) -> str:
    """SAPA-G's cost gap to the paper, explained term by term (Markdown, from :func:`sapa_g_gap`)."""
    g = gap
    other_macs = g["macs"] - g["formula_macs"] - g["projection_macs"] - g["mix_macs"]
    other_params = g["params"] - g["formula_params"] - g["projection_params"] - g["bias_params"] - g["norm_params"]
    text = (f"SAPA-G is the exception: counted, its six steps cost {g['macs'] / 1e9:.2f} GMACs and "
            f"{g['params'] / 1e6:.3f} M parameters, {100 * g['macs_over_paper']:.0f} % and "
            f"{100 * g['params_over_paper']:.0f} % above the paper's +{g['paper_gmacs']:.2f} GFLOPs and "
            f"+{g['paper_mparams']:.2f} M. The cause is one omitted projection, not bookkeeping: the paper's "
            f"Table 1 row for SAPA-G (and its Table 2, which gives SAPA-G exactly SAPA-B's cost) leaves out "
            f"the query's projection of the decoder feature, P_xx in q = g·P_y LN(y) + (1 − g)·P_xx up(x) "
            f"(chapter 4): C·d = {g['channels'] * g['embedding_dim']:,} weights per step. Over the six steps it accounts for {g['projection_params'] / 1e6:.3f} M of the "
            f"{(g['params'] - g['formula_params']) / 1e6:.3f} M parameters above the Table 1 formula and "
            f"{g['projection_macs'] / 1e9:.3f} of the {(g['macs'] - g['formula_macs']) / 1e9:.3f} GMACs "
            f"(C·d per low-resolution pixel, because `sapa.SAPA` projects x before the nearest upsampling; "
            f"the official code projects after it, at four times that). The rest is "
            f"{(g['bias_params'] + g['norm_params']) / 1e6:.3f} M of biases and LayerNorm affines and "
            f"{g['mix_macs'] / 1e9:.4f} GMACs of the gated mix (8d per pixel against the formula's 5d).")
    if abs(other_macs) > 0.5 or abs(other_params) > 0.5:  # never hide what the split does not explain
        text += (f" Unexplained by these terms: {other_macs / 1e9:+.4f} GMACs and {other_params:+,.0f} "
                 f"parameters.")
    return text


def head_summary(head) -> tuple:
    """A table of a SegFormer decode head's modules: ``(header, rows)``, one row per module
    (identical modules of a list in one row, e.g. the six upsamplers), with its type, what it
    maps and its parameter count. ``head``: an ``nn.Module`` (e.g. ``model.decode_head``)."""
    import torch.nn as nn

    if not isinstance(head, nn.Module):
        raise TypeError(f"head must be an nn.Module, got {type(head).__name__}")

    def what(m) -> str:
        inner = getattr(m, "sapa", None) or getattr(m, "proj", None)
        if inner is not None and inner is not m:
            return what(inner)
        if isinstance(m, nn.Linear):
            return f"{m.in_features} → {m.out_features} channels"
        if isinstance(m, nn.Conv2d):
            k = "×".join(map(str, m.kernel_size))
            return f"{m.in_channels} → {m.out_channels} channels, {k}"
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return f"{m.num_features} channels"
        if isinstance(m, nn.Dropout):
            return f"p = {m.p}"
        if hasattr(m, "variant") and hasattr(m, "kernel_size"):
            return (f"SAPA-{m.variant}, {m.in_channels} channels, K = {m.kernel_size}, "
                    f"d = {m.embedding_dim}")
        return ""

    def kind(m) -> str:
        inner = getattr(m, "proj", None)
        return type(m).__name__ + (f" ({type(inner).__name__})" if isinstance(inner, nn.Module) else "")

    def params(m) -> int:
        return sum(p.numel() for p in m.parameters())

    rows = []
    for name, child in head.named_children():
        if isinstance(child, nn.ModuleList):
            items = list(child)
            if items and all(repr(c) == repr(items[0]) for c in items):
                label = f"{name}.0–{len(items) - 1}" if len(items) > 1 else f"{name}.0"
                rows.append([label, (f"{len(items)} × " if len(items) > 1 else "") + kind(items[0]),
                             what(items[0]), f"{len(items)} × {params(items[0]):,}" if len(items) > 1
                             else f"{params(items[0]):,}"])
            else:
                rows += [[f"{name}.{i}", kind(c), what(c), f"{params(c):,}"] for i, c in enumerate(items)]
        else:
            rows.append([name, kind(child), what(child), f"{params(child):,}"])
    return ["module", "type", "maps", "parameters"], rows


def runs_table(rows: Sequence[Dict[str, object]]):
    """The stored runs as ``(header, rows)``: display name, seed, mIoU, boundary IoU and pixel
    accuracy (%), steps and seconds."""
    header = ["upsampler", "seed", "mIoU", "boundary IoU", "pixel acc.", "steps", "seconds"]
    return header, [[_name(r["upsampler"]), r["seed"], f"{100 * r['miou']:.2f}", f"{100 * r['boundary_iou']:.2f}",
                     f"{100 * r['pixel_acc']:.2f}", r["steps"], f"{r['seconds']:.0f}"] for r in rows]


def _machine(text: str) -> str:
    """A stored machine description with its counts pluralised ("1 threads" -> "1 thread")."""
    import re

    text = re.sub(r"torch threads: (\d+)", lambda m: _plural(int(m.group(1)), "torch thread"), text)
    return re.sub(r"\b(\d+) (thread|CPU)s\b", lambda m: _plural(int(m.group(1)), m.group(2)), text)


def run_details(meta: Dict[str, object]) -> str:
    """The stored command and where/when it ran, as Markdown (empty without ``meta``)."""
    if not meta:
        return ""
    parts = []
    if meta.get("command"):
        parts.append(f"Command: `{meta['command']}`.")
    if meta.get("seconds") is not None:
        where = f" on {_machine(str(meta['machine']))}" if meta.get("machine") else ""
        when = f", {meta['date']}" if meta.get("date") else ""
        parts.append(f"{float(meta['seconds']) / 60:.1f} min of training{where}{when}.")
    versions = [f"{k} {meta[k]}" for k in ("torch", "transformers") if meta.get(k)]
    if versions:
        parts.append("Versions: " + ", ".join(versions) + ".")
    return " ".join(parts)


def curves_figure(meta: Dict[str, object], width: float = 4.4):
    """The stored runs' validation curves (mIoU and boundary IoU in %, one panel each, stacked;
    one colour per upsampler, one line per seed; integer epoch ticks). ``None`` without curves."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = (meta or {}).get("curves") or {}
    if not curves:
        return None
    fig, axes = plt.subplots(2, 1, figsize=(width, 5.0), sharex=True, layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order: List[str] = []
    for key, curve in curves.items():
        name = key.rsplit("/", 1)[0]
        first = name not in order
        if first:
            order.append(name)
        ep = [c["epoch"] for c in curve]
        for ax, metric in zip(axes, ("miou", "boundary_iou")):
            ax.plot(ep, [100 * c[metric] for c in curve], color=colours[order.index(name) % len(colours)],
                    alpha=0.8, lw=1.2, label=_name(name) if first else None)
    for ax, title in zip(axes, ("validation mIoU (%)", "validation boundary IoU (%)")):
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(frameon=False)
    return fig


def convergence(rows: Sequence[Dict[str, object]], meta: Dict[str, object]) -> Dict[str, object]:
    """Numbers about how converged the stored runs are: ``epochs``, ``steps``, ``samples``,
    ``minutes`` (None without meta), ``late`` (largest change of a run's validation mIoU over the
    last quarter of its epochs, points; None without curves), ``spread`` (largest range of mIoU
    over the seeds of one upsampler, points), ``seeds`` and ``means`` ({upsampler: {metric: %}})."""
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: nothing to summarise")
    late = []
    for curve in ((meta or {}).get("curves") or {}).values():
        q = max(1, len(curve) // 4)
        if len(curve) > q:
            late.append(100 * abs(curve[-1]["miou"] - curve[-1 - q]["miou"]))
    by: Dict[str, List[Dict]] = {}
    for r in rows:
        by.setdefault(r["upsampler"], []).append(r)
    spread = max(100 * (max(r["miou"] for r in rs) - min(r["miou"] for r in rs)) for rs in by.values())
    return dict(epochs=rows[0]["epochs"], steps=rows[0]["steps"], samples=rows[0]["train_samples"],
                minutes=float(meta["seconds"]) / 60 if meta and meta.get("seconds") is not None else None,
                late=max(late) if late else None, spread=spread, seeds=sorted({r["seed"] for r in rows}),
                means={u: {m: 100 * sum(r[m] for r in rs) / len(rs) for m in ("miou", "boundary_iou")}
                       for u, rs in by.items()})


def convergence_sentence(rows: Optional[Sequence[Dict[str, object]]], meta: Dict[str, object]) -> str:
    """The chapter's paragraph on how far the stored runs trained and how converged they are
    (Markdown), computed by :func:`convergence`; one sentence when there are no rows."""
    if not rows:
        return "Without the stored result (see above) there are no stored runs to describe."
    c = convergence(rows, meta)
    text = (f"The stored runs trained {c['epochs']} epochs of {c['samples']} fresh images "
            f"({c['steps']} steps")
    text += (f", {c['minutes']:.1f} minutes for all {len(rows)} runs)." if c["minutes"] is not None else ").")
    if c["late"] is not None:
        closer = c["late"] < c["spread"]
        text += (f" Over the last quarter of the epochs no run's mIoU moved by more than {c['late']:.1f} points, "
                 f"while the seeds of one upsampler spread over up to {c['spread']:.1f} points: "
                 + ("the runs are close to where this schedule takes them, though a longer schedule would "
                    "still gain a little." if closer else
                    "the runs were still moving by as much as the seeds differ, so a longer schedule could "
                    "change the comparison."))
    else:
        text += (f" The seeds of one upsampler spread over up to {c['spread']:.1f} points; without the "
                 f"stored curves the late change of the runs cannot be shown.")
    means = "; ".join(f"{_name(u)} {v['miou']:.1f} mIoU and {v['boundary_iou']:.1f} boundary IoU"
                      for u, v in c["means"].items())
    text += f" Averaged over the {_plural(len(c['seeds']), 'seed')}: {means}."
    return text


def paired(rows: Optional[Sequence[Dict[str, object]]], upsampler: str = "sapa-b", baseline: str = "bilinear",
           metrics: Sequence[str] = ("miou", "boundary_iou")) -> Optional[Dict[str, Dict]]:
    """``{metric: result}``: the paired difference ``upsampler - baseline`` over the seeds both
    have (:func:`sapa.lab.stats.paired_differences`, 95 % t interval); ``None`` without rows or
    with fewer than two common seeds."""
    from .stats import paired_differences

    if not rows:
        return None
    rows = [r for r in rows if r["upsampler"] in (upsampler, baseline)]
    common = {r["seed"] for r in rows if r["upsampler"] == upsampler} & {
        r["seed"] for r in rows if r["upsampler"] == baseline}
    if len(common) < 2:
        return None
    rows = [r for r in rows if r["seed"] in common]
    return {m: paired_differences(rows, m, baseline=baseline, key="upsampler", settings=[upsampler])[0]
            for m in metrics}


_METRIC = {"miou": "mIoU", "boundary_iou": "boundary IoU"}


def paired_table(diffs: Dict[str, Dict]):
    """``(header, rows)`` of :func:`paired`'s results: metric, seeds, mean difference and its
    95 % t interval (points), p."""
    header = ["metric", "seeds", "mean difference (points)", "95 % t interval", "p"]
    return header, [[_METRIC.get(m, m), d["n"], _signed(100 * d["mean"]),
                     f"[{_signed(100 * d['ci_low'])}, {_signed(100 * d['ci_high'])}]", f"{d['p']:.3f}"]
                    for m, d in diffs.items()]


def _excludes(d: Dict) -> bool:
    return d["ci_low"] > 0 or d["ci_high"] < 0


def paired_sentence(diffs: Optional[Dict[str, Dict]], upsampler: str = "sapa-b", baseline: str = "bilinear") -> str:
    """The paired result in words (Markdown): each metric's mean difference, its interval and
    whether the interval excludes zero, and the t quantile of the seeds."""
    from .stats import t_ppf

    if not diffs:
        return ("Without at least two stored seeds of both upsamplers (see above) there is no paired "
                "difference to report.")
    n = next(iter(diffs.values()))["n"]
    parts = [f"{_signed(100 * d['mean'])} {_METRIC.get(m, m)} points (95 % interval {_signed(100 * d['ci_low'])} "
             f"to {_signed(100 * d['ci_high'])}, which {'excludes' if _excludes(d) else 'includes'} zero)"
             for m, d in diffs.items()]
    return (f"Over {_plural(n, 'pair')}, {_name(upsampler)} minus {_name(baseline)} is " + _join(parts) + ". "
            f"With {n} pairs the t quantile is {t_ppf(0.975, n - 1):.2f}, so an interval is wide unless the "
            f"per-seed differences agree closely; the paired design is what makes {n} seeds worth reading at all.")


def reading_sentence(diffs: Optional[Dict[str, Dict]], metric: str = "miou") -> str:
    """What the experiment says about the two upsamplers on ``metric`` (Markdown)."""
    if not diffs:
        return "Without the stored result this page cannot say whether the experiment separates the two upsamplers."
    d = diffs[metric]
    if _excludes(d):
        return (f"Here the {_METRIC.get(metric, metric)} interval excludes zero, so this experiment separates the "
                f"two upsamplers ({'SAPA-B higher' if d['mean'] > 0 else 'SAPA-B lower'}).")
    return (f"Here the {_METRIC.get(metric, metric)} interval includes zero, so this experiment does not "
            f"separate the two upsamplers.")


def summary_sentence(diffs: Optional[Dict[str, Dict]], metric: str = "miou") -> str:
    """The chapter summary's line on the stored experiment (Markdown)."""
    if not diffs:
        return ("On the textures task the stored comparison of a tiny random-initialised SegFormer with "
                "SAPA-B and with bilinear was not available to this page (see the stored result's section).")
    d = diffs[metric]
    return (f"On the textures task, a tiny random-initialised SegFormer gives a paired SAPA-B − bilinear "
            f"difference of {_signed(100 * d['mean'])} {_METRIC.get(metric, metric)} points (95 % t interval "
            f"{_signed(100 * d['ci_low'])} to {_signed(100 * d['ci_high'])} over {_plural(d['n'], 'seed')}); it "
            f"speaks to this toy setting only, not to ADE20K with a pretrained encoder.")


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sapa.lab.hf", description="The book's SegFormer experiment (chapter 9)")
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
        if not args.train:
            raise ValueError("pass --train (see --help; the overhead table: python -m sapa.hf --table)")
        if args.train:
            setup = dict(QUICK if args.quick else EXPERIMENT)
            if args.epochs is not None:
                if args.epochs < 1:
                    raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
                setup["epochs"] = args.epochs
            command = "python -m sapa.lab.hf " + " ".join(argv if argv is not None else sys.argv[1:])
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
