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
from .results import RAW_URL as RESULTS_URL  # where stored results are fetched from without a checkout

__all__ = ["EXPERIMENT", "QUICK", "CSV_FIELDS", "train_segformer", "run_sweep", "load_results", "RESULTS_URL", "main"]


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
    (:func:`sapa.lab.results.stored_file`, e.g. on Colab, where the package is installed without them). Rows
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
