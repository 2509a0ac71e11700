"""Sweeps of training runs: every upsampler, and the ablations of the paper's Table 6.

Command line (the commands that produced ``book/results/*.csv`` are printed in the chapters)::

    python -m sapa.sweep --grid segmentation --seeds 0 1 2 --out book/results/segmentation.csv
    python -m sapa.sweep --grid ablations    --seeds 0 1 2 --out book/results/ablations.csv

Each run is one :func:`sapa.train.train` call in a worker process (``--workers`` of them, one
thread each), with its checkpoint in ``--runs DIR/<run name>``, so an interrupted sweep
resumes where it stopped and finished runs are not trained again. The CSV gets one row per
(configuration, seed): ``group, setting, upsampler, options, seed, miou, boundary_iou,
pixel_acc, params, upsampler_params, macs, upsampler_macs, flops, time_per_iter_ms, ...``.
``params`` and ``flops`` (= 2 MACs) are those of the whole segmenter for one image,
``upsampler_*`` those of its upsampling steps alone (counted by :mod:`sapa.complexity`).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

__all__ = ["SEGMENTATION_UPSAMPLERS", "grid", "segmenter_cost", "run_sweep", "read_csv", "summarize", "main"]

#: upsamplers of the segmentation comparison, in the order the chapter shows them
SEGMENTATION_UPSAMPLERS = (
    "nearest", "bilinear", "deconv", "pixelshuffle", "carafe", "indexnet-hin", "indexnet-m2o", "a2u",
    "fade", "dysample", "sapa-i", "sapa-b", "sapa-p", "sapa-g", "sapa-d",
)

#: Table 6 of the paper, on the toy task: (group, setting label, upsampler, options)
ABLATIONS = (
    [("normalization", h, "sapa-b", {"normalization": n}) for h, n in
     [("none", "none"), ("exp", "softmax"), ("relu", "relu"), ("sigmoid", "sigmoid"), ("softplus", "softplus")]]
    + [("kernel size", str(k), "sapa-b", {"kernel_size": k}) for k in (3, 5, 7)]
    + [("embedding dim", str(d), "sapa-b", {"embedding_dim": d}) for d in (16, 32, 64, 128)]
    + [("similarity", v, f"sapa-{v.lower()}", {}) for v in ("I", "B", "P", "G")]
)

#: the defaults of SAPA-B (K=5, d=32, softmax): ablation rows with these are one run
_SAPA_B_DEFAULTS = {"normalization": "softmax", "kernel_size": 5, "embedding_dim": 32}

CSV_COLUMNS = ["group", "setting", "upsampler", "options", "seed", "miou", "boundary_iou", "pixel_acc",
               "params", "upsampler_params", "macs", "upsampler_macs", "flops", "time_per_iter_ms",
               "train_loss", "epochs", "size", "train_samples", "run"]


def grid(name: str, upsamplers: Optional[Iterable[str]] = None) -> List[Dict]:
    """Configurations of a sweep: list of dicts with group, setting, upsampler, options."""
    if name == "segmentation":
        names = list(upsamplers) if upsamplers else list(SEGMENTATION_UPSAMPLERS)
        return [dict(group="upsampler", setting=n, upsampler=n, options={}) for n in names]
    if name == "ablations":
        return [dict(group=g, setting=s, upsampler=u, options=o) for g, s, u, o in ABLATIONS]
    raise ValueError(f"unknown grid {name!r}; expected 'segmentation' or 'ablations'")


def _canonical_options(upsampler: str, options: Dict) -> Dict:
    """Options with SAPA's defaults removed, so equal settings are one run with one config."""
    defaults = _SAPA_B_DEFAULTS if upsampler.startswith("sapa-") and upsampler != "sapa-d" else {}
    return {k: v for k, v in sorted(options.items()) if defaults.get(k, object()) != v}


def _run_name(upsampler: str, options: Dict, seed: int) -> str:
    tag = "".join(f"_{k}-{v}" for k, v in _canonical_options(upsampler, options).items())
    return f"{upsampler}{tag}_s{seed}"


@torch.no_grad()
def segmenter_cost(model, size: int) -> Dict[str, int]:
    """Parameters and MACs of ``model`` (a :class:`sapa.models.Segmenter`) on one size x size image.

    Returns params, upsampler_params, macs (whole model, :func:`sapa.complexity.count_flops`
    plus the upsamplers' explicit counts) and upsampler_macs.
    """
    from .complexity import count_flops, count_params

    captured = []
    hooks = [u.register_forward_pre_hook(lambda m, args: captured.append((m, args))) for u in model.upsamplers]
    was_training = model.training
    model.eval()
    try:
        cin = model.encoder[0][0][0].in_channels
        image = torch.randn(1, cin, size, size, device=next(model.parameters()).device)
        total = count_flops(model, image)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    up_macs = 0
    extra = 0
    for m, args in captured:
        c = count_flops(m, *args)
        up_macs += c["macs"]
        extra += c["macs"] - c["counter"]  # what the whole-model counter could not see
    return dict(params=count_params(model), upsampler_params=sum(count_params(u) for u in model.upsamplers),
                macs=total["macs"] + extra, upsampler_macs=up_macs)


def _one_run(job: Dict) -> Dict:
    """Worker: train one configuration (resumable) and return its CSV row."""
    from .models import Segmenter
    from .train import resolve_config, train

    torch.set_num_threads(job.get("threads", 1))
    cfg = dict(job["train"])
    result = train(cfg)
    model = result.pop("model")
    final = result["final"]
    resolved = resolve_config(cfg)
    cost = segmenter_cost(model, resolved.size)
    its = [e["time_per_iter_ms"] for e in result["epochs"]]
    return dict(
        group=job["group"], setting=job["setting"], upsampler=cfg["upsampler"],
        options=json.dumps(cfg.get("upsampler_options", {}), sort_keys=True), seed=cfg["seed"],
        miou=final["val_miou"], boundary_iou=final["val_boundary_iou"], pixel_acc=final["val_pixel_acc"],
        params=cost["params"], upsampler_params=cost["upsampler_params"], macs=cost["macs"],
        upsampler_macs=cost["upsampler_macs"], flops=2 * cost["macs"],
        time_per_iter_ms=sorted(its)[len(its) // 2] if its else float("nan"), train_loss=final["train_loss"],
        epochs=resolved.epochs, size=resolved.size, train_samples=resolved.train_samples, run=job["name"],
    )


def run_sweep(grid_name: str, seeds: Iterable[int], out_csv: str, runs_dir: str = "runs", workers: int = 2,
              train_overrides: Optional[Dict] = None, upsamplers: Optional[Iterable[str]] = None,
              progress: bool = True) -> List[Dict]:
    """Train every (configuration, seed) of a grid and write the CSV; returns its rows.

    ``train_overrides`` are :class:`sapa.train.TrainConfig` fields applied to every run (e.g.
    ``{"epochs": 6, "size": 64}``). Runs with equal settings are trained once and reported
    under each row that asks for them.
    """
    seeds = list(seeds)
    overrides = dict(train_overrides or {})
    jobs, by_name = [], {}
    for conf in grid(grid_name, upsamplers):
        for seed in seeds:
            name = _run_name(conf["upsampler"], conf["options"], seed)
            options = _canonical_options(conf["upsampler"], conf["options"])
            train_cfg = dict(overrides, upsampler=conf["upsampler"], seed=seed, upsampler_options=options,
                             out=str(Path(runs_dir) / name), progress=False, threads=1)
            job = dict(group=conf["group"], setting=conf["setting"], name=name, train=train_cfg)
            jobs.append(job)
            by_name.setdefault(name, job)
    unique = list(by_name.values())
    results: Dict[str, Dict] = {}
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=len(unique), desc=f"sweep {grid_name}", disable=not progress) if tqdm else None
    t0 = time.perf_counter()
    failures: Dict[str, BaseException] = {}
    if workers <= 1:
        for job in unique:
            try:
                results[job["name"]] = _one_run(job)
            except Exception as exc:  # keep going: the other runs are still worth writing
                failures[job["name"]] = exc
            bar and bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_one_run, job): job["name"] for job in unique}
            for fut in as_completed(futures):
                try:
                    results[futures[fut]] = fut.result()
                except Exception as exc:
                    failures[futures[fut]] = exc
                bar and bar.update()
    bar and bar.close()
    rows = []
    for job in jobs:
        if job["name"] in results:
            rows.append(dict(results[job["name"]], group=job["group"], setting=job["setting"]))
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: row[k] for k in CSV_COLUMNS})
    if progress:
        print(f"wrote {len(rows)} rows to {out_csv} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if failures:
        detail = "; ".join(f"{name}: {type(e).__name__}: {e}" for name, e in failures.items())
        raise RuntimeError(f"{len(failures)} run(s) failed (the others are in {out_csv}; rerun to resume): {detail}")
    return rows


def read_csv(path: str) -> List[Dict]:
    """Rows of a sweep CSV with numeric columns converted."""
    ints = {"seed", "params", "upsampler_params", "macs", "upsampler_macs", "flops", "epochs", "size", "train_samples"}
    floats = {"miou", "boundary_iou", "pixel_acc", "time_per_iter_ms", "train_loss"}
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in ints & r.keys():
                r[k] = int(float(r[k]))
            for k in floats & r.keys():
                r[k] = float(r[k])
            rows.append(r)
    return rows


def summarize(rows: List[Dict], keys=("group", "setting"), metrics=("miou", "boundary_iou")) -> List[Dict]:
    """Mean and sample std over seeds of each configuration, in first-seen order."""
    import statistics

    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        s = dict(zip(keys, key), n=len(rs), upsampler=rs[0]["upsampler"])
        for m in metrics + ("time_per_iter_ms",):
            vals = [r[m] for r in rs]
            s[m + "_mean"] = statistics.fmean(vals)
            s[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        for m in ("params", "upsampler_params", "flops", "upsampler_macs"):
            s[m] = rs[0][m]
        out.append(s)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sapa.sweep", description="Train a grid of upsamplers and write a CSV.")
    p.add_argument("--grid", required=True, choices=["segmentation", "ablations"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", required=True, help="CSV path")
    p.add_argument("--runs", default="runs", help="directory of the per-run checkpoints (resumable)")
    p.add_argument("--workers", type=int, default=2, help="parallel runs, one thread each")
    p.add_argument("--upsamplers", nargs="+", default=None, help="segmentation grid: subset of names")
    p.add_argument("--profile", default=None, choices=["quick", "full"])
    for key, typ in [("epochs", int), ("size", int), ("train-samples", int), ("val-samples", int),
                     ("batch-size", int), ("lr", float), ("width", int), ("max-steps-per-epoch", int)]:
        p.add_argument(f"--{key}", type=typ, default=None)
    a = p.parse_args(argv)
    overrides = {k: getattr(a, k.replace("-", "_")) for k in
                 ("profile", "epochs", "size", "train_samples", "val_samples", "batch_size", "lr", "width",
                  "max_steps_per_epoch")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    t0 = time.time()
    run_sweep(a.grid, a.seeds, a.out, a.runs, a.workers, overrides, a.upsamplers)
    meta = dict(
        command="python -m sapa.sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
        seconds=round(time.time() - t0, 1),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {a.workers} worker process(es) x 1 thread",
        train_overrides=overrides, seeds=a.seeds, grid=a.grid,
    )
    with open(Path(a.out).with_suffix(".json"), "w") as f:
        json.dump(meta, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
