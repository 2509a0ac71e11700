"""Sweeps of training runs: every upsampler, and the ablations of the paper's Table 6.

Command line (``--print-commands`` prints the exact commands of the stored results)::

    python -m sapa.lab.sweep --grid main   --seeds 0 1 2 3 4 --out book/results/main.csv  <task flags>
    python -m sapa.lab.sweep --grid table6 --seeds 0 1 2 3 4 --out book/results/table6.csv <task flags>
    python -m sapa.lab.sweep --grid main --upsamplers ... --out book/results/statistics.csv <task flags, --dataset statistics>
    python -m sapa.lab.sweep --grid main --estimate <task flags>     # time a few steps, predict the wall time

Grids: ``segmentation`` (the 15 upsamplers of the package), ``main`` (those plus the
parameter-matched ``bilinear+conv`` control), ``ablations`` (Table 6: normalisation h,
kernel size K, embedding dim d, similarity) and ``table6`` (the same plus the padding,
zeros / ignore). The task flags (``--dataset``, ``--head``, ``--stages``, ``--decoder-width``,
``--schedule``, ...) are :class:`sapa.lab.train.TrainConfig` fields applied to every run.

Each run is one :func:`sapa.lab.train.train` call in a worker process (``--workers`` of them, one
thread each) with its checkpoint in ``--runs DIR/<run>``; the run's name holds the upsampler,
its options, the seed and a hash of every setting that defines it (``config_id``), so runs
with other settings never share a folder. Results are **appended** to the CSV as each run
finishes (flushed to disk), and a rerun skips every (group, setting, run) row already there:
an interrupted sweep resumes, and a sweep rerun with a changed setting adds rows (with
another ``config_id``) and never overwrites or loses the rows already in the file. A CSV
with other columns is refused (``use another --out``). Data order: a seed fixes the order of
the batches whatever the upsampler, so the runs of one seed are paired (:mod:`sapa.lab.stats`).

Columns (:data:`CSV_COLUMNS`): the setting (``group, setting, upsampler, options, seed``),
the validation scores (``miou, boundary_iou, fg_boundary_iou, pixel_acc, error_rate,
loc_error_rate, rec_error_rate, loc_error_share``, see :mod:`sapa.lab.metrics`), the costs
(``params, upsampler_params, macs, upsampler_macs, flops`` of the whole segmenter or its
upsamplers for one image, ``time_per_iter_ms``), the training (``train_loss, epochs``
trained, ``converged``: True/False under the plateau schedule, empty under cosine), the task
(``dataset, head, size, train_samples``) and the bookkeeping (``run, config_id, config`` =
the JSON of the defining settings). Every invocation of the CLI appends its command, wall
time, date and machine to ``invocations`` in the JSON beside the CSV; ``seconds`` there is
their sum.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from ._parallel import sigterm_as_interrupt, stop_pool

__all__ = ["SEGMENTATION_UPSAMPLERS", "MAIN_UPSAMPLERS", "WEAK_GUIDE_UPSAMPLERS", "GRIDS", "STORED",
           "STORED_DATASETS", "stored_task", "grid", "segmenter_cost",
           "run_sweep", "estimate", "read_csv", "summarize", "stored_command", "stored_config_ids", "select_stored",
           "stored_rows", "STORED_FILES", "main", "CSV_COLUMNS"]

#: upsamplers of the segmentation comparison, in the order the chapter shows them
SEGMENTATION_UPSAMPLERS = (
    "nearest", "bilinear", "deconv", "pixelshuffle", "carafe", "indexnet-hin", "indexnet-m2o", "a2u",
    "fade", "dysample", "sapa-i", "sapa-b", "sapa-p", "sapa-g", "sapa-d",
)
#: the main comparison: those and the parameter-matched control (bilinear + a conv with CARAFE's
#: parameter count, see :class:`sapa.lab.models.BilinearConv`)
MAIN_UPSAMPLERS = SEGMENTATION_UPSAMPLERS + ("bilinear+conv",)

#: Table 6 of the paper: (group, setting label, upsampler, options)
ABLATIONS = (
    [("normalization", h, "sapa-b", {"normalization": n}) for h, n in
     [("none", "none"), ("exp", "softmax"), ("relu", "relu"), ("sigmoid", "sigmoid"), ("softplus", "softplus")]]
    + [("kernel size", str(k), "sapa-b", {"kernel_size": k}) for k in (3, 5, 7)]
    + [("embedding dim", str(d), "sapa-b", {"embedding_dim": d}) for d in (16, 32, 64, 128)]
    + [("similarity", v, f"sapa-{v.lower()}", {}) for v in ("I", "B", "P", "G")]
)
PADDING = [("padding", p, "sapa-b", {"padding": p}) for p in ("zeros", "ignore")]
GRIDS = ("segmentation", "main", "ablations", "table6")

#: the defaults of SAPA-B (K=5, d=32, softmax, zero padding): ablation rows with these are one run
_SAPA_B_DEFAULTS = {"normalization": "softmax", "kernel_size": 5, "embedding_dim": 32, "padding": "zeros"}

CSV_COLUMNS = ["group", "setting", "upsampler", "options", "seed", "miou", "boundary_iou", "fg_boundary_iou",
               "pixel_acc", "error_rate", "loc_error_rate", "rec_error_rate", "loc_error_share",
               "params", "upsampler_params", "macs", "upsampler_macs", "flops", "time_per_iter_ms",
               "train_loss", "epochs", "converged", "dataset", "head", "size", "train_samples",
               "curve", "run", "config_id", "config"]

#: settings that do not change a run's numbers (left out of its config_id)
_NOT_DEFINING = ("out", "progress", "threads", "num_workers", "device", "resume", "download", "profile")

#: the task of the stored results (book/results/main.csv, table6.csv): the boundary-dominated
#: procedural task, the SegFormer-like head, one fixed schedule for every upsampler: cosine
#: over 40 epochs of 256 fresh samples (issue 18 measured bilinear's validation mIoU at
#: .871/.923/.930/.933 after 10/20/30/40 epochs; the plateau rule stopped on epoch-loss
#: noise), validated every 8 epochs so that the curves show how converged each run is
STORED_TASK = dict(dataset="textures", head="segformer", size=64, stages=3, width=8, decoder_width=16,
                   batch_size=8, lr=2e-3, train_samples=256, val_samples=1000, epochs=40,
                   schedule="cosine", eval_every=8)
#: stored commands run on another dataset than STORED_TASK's, every other setting the same:
#: "statistics" is the task whose high-resolution guide is weak (:class:`sapa.lab.data.TextureStatistics`:
#: the classes share one per-pixel colour distribution, only texture statistics over an area
#: tell them apart)
STORED_DATASETS = {"statistics": "statistics"}
#: the upsamplers of the weak-guide comparison: the non-guided baselines, the parameter-matched
#: control, the guided designs of the paper's comparison and the SAPA variants
WEAK_GUIDE_UPSAMPLERS = ("nearest", "bilinear", "deconv", "bilinear+conv", "carafe", "fade", "indexnet-m2o",
                         "sapa-i", "sapa-b", "sapa-g")
STORED_SEEDS = (0, 1, 2, 3, 4)
#: seeds of SAPA-D's rows (outside the Holm family of the main comparison: its CPU path,
#: grid_sample over 9 points per group, costs ~17x a SAPA-B step)
SAPA_D_SEEDS = (0, 1, 2)
#: the stored results and the argv of the command that writes each; "main+sapa-d" appends
#: SAPA-D's rows to the main CSV
STORED = {
    "main": ["--grid", "main", "--upsamplers", *[u for u in MAIN_UPSAMPLERS if u != "sapa-d"],
             "--out", "book/results/main.csv"],
    "table6": ["--grid", "table6", "--out", "book/results/table6.csv"],
    "main+sapa-d": ["--grid", "main", "--upsamplers", "sapa-d", "--out", "book/results/main.csv"],
    "statistics": ["--grid", "main", "--upsamplers", *WEAK_GUIDE_UPSAMPLERS, "--out", "book/results/statistics.csv"],
}


def stored_task(name: str) -> Dict:
    """The task settings of stored command ``name``: :data:`STORED_TASK`, with the dataset of
    :data:`STORED_DATASETS` where it names one."""
    task = dict(STORED_TASK)
    if name in STORED_DATASETS:
        task["dataset"] = STORED_DATASETS[name]
    return task


def _task_flags(task: Dict) -> List[str]:
    out = []
    for k, v in task.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def stored_command(name: str) -> str:
    """The one command that regenerates the stored result ``name`` ("main", "main+sapa-d", "table6",
    "statistics", "mechanism"); the task flags are :func:`stored_task`'s, each flag once."""
    if name == "mechanism":
        return "python -m sapa.lab.mechanism --out book/results/mechanism.csv --workers 2"
    if name not in STORED:
        raise ValueError(f"unknown stored result {name!r}; expected one of {sorted(STORED) + ['mechanism']}")
    seeds = SAPA_D_SEEDS if name == "main+sapa-d" else STORED_SEEDS
    argv = STORED[name] + ["--seeds", *map(str, seeds), "--runs", "runs/sweep", "--workers", "2"]
    return "python -m sapa.lab.sweep " + " ".join(argv + _task_flags(stored_task(name)))


def grid(name: str, upsamplers: Optional[Iterable[str]] = None) -> List[Dict]:
    """Configurations of a sweep: list of dicts with group, setting, upsampler, options."""
    if name in ("segmentation", "main"):
        default = SEGMENTATION_UPSAMPLERS if name == "segmentation" else MAIN_UPSAMPLERS
        names = list(upsamplers) if upsamplers else list(default)
        return [dict(group="upsampler", setting=n, upsampler=n, options={}) for n in names]
    if name in ("ablations", "table6"):
        rows = ABLATIONS + (PADDING if name == "table6" else [])
        return [dict(group=g, setting=s, upsampler=u, options=o) for g, s, u, o in rows]
    raise ValueError(f"unknown grid {name!r}; expected one of {GRIDS}")


def _canonical_options(upsampler: str, options: Dict) -> Dict:
    """Options with SAPA's defaults removed, so equal settings are one run with one config."""
    defaults = _SAPA_B_DEFAULTS if upsampler.startswith("sapa-") and upsampler != "sapa-d" else {}
    return {k: v for k, v in sorted(options.items()) if defaults.get(k, object()) != v}


def _run_name(upsampler: str, options: Dict, seed: int) -> str:
    tag = "".join(f"_{k}-{v}" for k, v in _canonical_options(upsampler, options).items())
    return f"{upsampler}{tag}_s{seed}"


def _config_id(train_cfg: Dict):
    """Hash of the resolved settings that define a run's numbers (not its folder, threads, ...)."""
    from .train import resolve_config
    import dataclasses

    resolved = dataclasses.asdict(resolve_config(train_cfg))
    defining = {k: v for k, v in sorted(resolved.items()) if k not in _NOT_DEFINING}
    return hashlib.sha1(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:8], defining


@torch.no_grad()
def segmenter_cost(model, size: int) -> Dict[str, int]:
    """Parameters and MACs of ``model`` (a :class:`sapa.lab.models.Segmenter`) on one size x size image.

    Returns params, upsampler_params, macs (whole model, :func:`sapa.complexity.count_flops`
    plus the upsamplers' explicit counts) and upsampler_macs.
    """
    from ..complexity import count_flops, count_params

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
    from .train import resolve_config, train

    torch.set_num_threads(job.get("threads", 1))
    cfg = dict(job["train"])
    result = train(cfg)
    model = result.pop("model")
    final = result["final"]
    resolved = resolve_config(cfg)
    cost = segmenter_cost(model, resolved.size)
    its = sorted(e["time_per_iter_ms"] for e in result["epochs"])
    return dict(
        group=job["group"], setting=job["setting"], upsampler=cfg["upsampler"],
        options=json.dumps(cfg.get("upsampler_options", {}), sort_keys=True), seed=cfg["seed"],
        miou=final["val_miou"], boundary_iou=final["val_boundary_iou"],
        fg_boundary_iou=final.get("val_fg_boundary_iou"), pixel_acc=final["val_pixel_acc"],
        error_rate=final.get("val_error_rate"), loc_error_rate=final.get("val_loc_error_rate"),
        rec_error_rate=final.get("val_rec_error_rate"), loc_error_share=final.get("val_loc_error_share"),
        params=cost["params"], upsampler_params=cost["upsampler_params"], macs=cost["macs"],
        upsampler_macs=cost["upsampler_macs"], flops=2 * cost["macs"],
        time_per_iter_ms=its[len(its) // 2] if its else float("nan"), train_loss=final["train_loss"],
        epochs=len(result["epochs"]), converged="" if result.get("converged") is None else result["converged"],
        dataset=resolved.dataset, head=resolved.head, size=resolved.size, train_samples=resolved.train_samples,
        curve=json.dumps(_curve(result["epochs"])), run=job["name"], config_id=job["config_id"], config=json.dumps(job["defining"], sort_keys=True, default=str),
    )


def _curve(epochs: List[Dict]) -> Dict[str, list]:
    """The training curve of a run, compact: per epoch its number, training loss, lr and the
    validation mIoU / boundary IoU (None where validation was skipped, see ``eval_every``)."""
    def r(v, nd=5):
        return None if v is None else round(float(v), nd)
    return dict(epoch=[e["epoch"] for e in epochs], train_loss=[r(e["train_loss"]) for e in epochs],
                lr=[r(e["lr"], 7) for e in epochs], val_miou=[r(e["val_miou"]) for e in epochs],
                val_boundary_iou=[r(e["val_boundary_iou"]) for e in epochs])


def _check_header(path: Path) -> bool:
    """True if ``path`` exists with our header; False if absent/empty; ValueError if foreign."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if header != CSV_COLUMNS:
        raise ValueError(f"{path} has other columns ({len(header)}: {', '.join(header[:6])}, ...) than this "
                         f"version of the sweep writes: use another --out (the file is left as it is)")
    return True


def _repair_tail(path: Path) -> None:
    """An interrupted write can leave a last line without its newline: a row appended to it
    would be glued onto that line (and both lost when read back). Drop the partial line (it
    is an unfinished row: finished rows always end with a newline, so its run is trained
    again) and say so."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = f.seek(0) or f.read()
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)
    print(f"sapa.lab.sweep: {path}: removed an unfinished last line ({len(data) - cut} bytes without a newline, "
          f"left by an interrupted write); its run is trained again", file=sys.stderr)


def _append_row(path: Path, row: Dict) -> None:
    _repair_tail(path)
    has_header = _check_header(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if not has_header:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def _accepted_options(upsampler: str) -> Optional[Tuple[str, ...]]:
    """Option names ``upsampler`` accepts (bilinear+conv: only ``match``; its other options
    belong to the matched upsampler and must be given with the ``bilinear+conv:`` prefix)."""
    if upsampler == "bilinear+conv":
        return ("match",)
    from ..upsamplers import _REGISTRY, _options_of

    return _options_of(_REGISTRY[upsampler]) if upsampler in _REGISTRY else ()


def parse_upsampler_options(texts: Iterable[str], upsamplers: Iterable[str]) -> Dict[str, Dict]:
    """``--upsampler-option`` values to per-upsampler options.

    ``NAME:KEY=VALUE`` applies to upsampler NAME only; a bare ``KEY=VALUE`` applies to every
    upsampler of ``upsamplers`` that accepts KEY (e.g. ``match=sapa-b`` to bilinear+conv
    only). Values are Python literals (``kernel_size=3``) or strings. Raises ValueError
    naming the option when NAME is not in the grid, or when no upsampler of the grid
    accepts a bare KEY. Returns {upsampler: {key: value}} for the upsamplers that get some.
    """
    from .train import _parse_option

    names = list(dict.fromkeys(upsamplers))
    out: Dict[str, Dict] = {}
    for text in texts:
        target = None
        head = text.split("=", 1)[0]
        if ":" in head:
            target, text = text.split(":", 1)
            target = target.strip()
            if target not in names:
                raise ValueError(f"--upsampler-option {target}:{text}: {target!r} is not in this grid "
                                 f"({', '.join(names)})")
        try:
            key, value = _parse_option(text)
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None
        if target is not None:
            out.setdefault(target, {})[key] = value
            continue
        takers = [n for n in names if key in (_accepted_options(n) or ())]
        if not takers:
            raise ValueError(f"--upsampler-option {text}: no upsampler of this grid accepts {key!r} "
                             f"({', '.join(names)}); use NAME:{text} for one upsampler")
        for n in takers:
            out.setdefault(n, {})[key] = value
    return out


def _jobs(grid_name, seeds, runs_dir, overrides, upsamplers, per_upsampler=None):
    """The runs of a sweep, seed-major (every setting of seed 0 first), so that an interrupted
    sweep leaves complete, paired seeds behind."""
    jobs = []
    per_upsampler = per_upsampler or {}
    for seed in seeds:
        for conf in grid(grid_name, upsamplers):
            options = _canonical_options(conf["upsampler"], dict(overrides.get("upsampler_options", {}),
                                                                 **per_upsampler.get(conf["upsampler"], {}),
                                                                 **conf["options"]))
            # each seed varies the data too (data_seed = seed unless given): the runs of one
            # seed share their data and its order whatever the upsampler, so they stay paired
            train_cfg = dict(overrides, upsampler=conf["upsampler"], seed=seed, upsampler_options=options,
                             progress=False, threads=1)
            train_cfg.setdefault("data_seed", seed)
            cid, defining = _config_id(train_cfg)
            name = f"{_run_name(conf['upsampler'], options, seed)}_{cid}"
            train_cfg["out"] = str(Path(runs_dir) / name)
            jobs.append(dict(group=conf["group"], setting=conf["setting"], name=name, train=train_cfg,
                             config_id=cid, defining=defining))
    return jobs


def run_sweep(grid_name: str, seeds: Iterable[int], out_csv: str, runs_dir: str = "runs", workers: int = 2,
              train_overrides: Optional[Dict] = None, upsamplers: Optional[Iterable[str]] = None,
              progress: bool = True, per_upsampler: Optional[Dict[str, Dict]] = None) -> List[Dict]:
    """Train every (configuration, seed) of a grid not yet in ``out_csv``; returns the grid's rows.

    ``train_overrides`` are :class:`sapa.lab.train.TrainConfig` fields applied to every run (e.g.
    ``{"dataset": "textures", "head": "segformer"}``; ``data_seed`` defaults to each run's
    seed); ``per_upsampler`` maps an upsampler's name to its own options (see
    :func:`parse_upsampler_options`). Finished rows (same group, setting and
    run, the run's name including its ``config_id``) are skipped; new rows are appended as
    their runs finish. Runs with equal settings (e.g. SAPA-B's defaults in four ablation
    groups) are trained once and reported under each row that asks for them. Returns the
    rows of this grid and these settings, in grid order (read back from the CSV).
    """
    seeds = list(seeds)
    out_path = Path(out_csv)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _check_header(out_path)  # a foreign CSV is refused before anything is trained
    _repair_tail(out_path)
    jobs = _jobs(grid_name, seeds, runs_dir, dict(train_overrides or {}), upsamplers, per_upsampler)
    done = {(r["group"], r["setting"], r["run"]) for r in read_csv(out_path)} if out_path.exists() else set()
    todo = [j for j in jobs if (j["group"], j["setting"], j["name"]) not in done]
    by_name: Dict[str, List[Dict]] = {}
    for job in todo:
        by_name.setdefault(job["name"], []).append(job)
    unique = [js[0] for js in by_name.values()]
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=len(unique), desc=f"sweep {grid_name}", disable=not progress) if tqdm else None
    t0 = time.perf_counter()
    failures: Dict[str, BaseException] = {}

    def finished(name: str, row: Dict) -> None:
        for job in by_name[name]:
            _append_row(out_path, dict(row, group=job["group"], setting=job["setting"]))

    if workers <= 1:
        for job in unique:
            try:
                row = _one_run(job)
            except Exception as exc:  # keep going: the other runs are still worth writing
                failures[job["name"]] = exc
            else:
                finished(job["name"], row)
            bar and bar.update()
    else:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        try:
            futures = {pool.submit(_one_run, job): job["name"] for job in unique}
            for fut in as_completed(futures):
                try:
                    row = fut.result()
                except Exception as exc:
                    failures[futures[fut]] = exc
                else:
                    finished(futures[fut], row)
                bar and bar.update()
        except BaseException:  # Ctrl-C / SIGTERM: stop the workers now (their runs resume from
            # the last finished epoch), keep every finished row
            stop_pool(pool)
            raise
        pool.shutdown(wait=True)
    bar and bar.close()
    wanted = {(j["group"], j["setting"], j["name"]): k for k, j in enumerate(jobs)}
    rows = sorted((r for r in read_csv(out_path) if (r["group"], r["setting"], r["run"]) in wanted),
                  key=lambda r: wanted[(r["group"], r["setting"], r["run"])]) if out_path.exists() else []
    if progress:
        print(f"{len(unique)} run{'s' if len(unique) != 1 else ''} trained, {len(rows)} rows of this sweep in {out_csv} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if failures:
        detail = "; ".join(f"{name}: {type(e).__name__}: {e}" for name, e in failures.items())
        raise RuntimeError(f"{len(failures)} run{'s' if len(failures) != 1 else ''} failed (the others are in {out_csv}; rerun to resume): {detail}")
    return rows


def estimate(grid_name: str, seeds: Iterable[int], train_overrides: Optional[Dict] = None,
             upsamplers: Optional[Iterable[str]] = None, workers: int = 2, steps: int = 3,
             epochs: Optional[int] = None, per_upsampler: Optional[Dict[str, Dict]] = None) -> Dict:
    """Predict a sweep's wall time from a timed short run of each distinct configuration.

    For each distinct run setting of the grid (settings shared by several rows, e.g. SAPA-B's
    defaults in four Table 6 groups, are trained once and counted once) this builds the model
    and the data as the sweep would, times ``steps`` training steps (after one untimed
    warm-up step) and one validation batch as validation runs it (forward, argmax and the
    metric update of :class:`sapa.lab.metrics.SegmentationMeter`) on one thread in this process,
    and extrapolates to ``epochs`` (default: the config's ``epochs``) epochs of
    ``train_samples / batch_size`` steps plus the validation passes (every ``eval_every``
    epochs and the last). The total is the sum over runs and seeds divided by ``workers``.
    Under the cosine schedule every run trains all ``epochs``; under "plateau" ``epochs`` is
    a cap and the estimate an upper bound. The machine's load at the time of the measurement
    does not enter: steps are timed by this process's CPU time (``time.process_time``, one
    thread), the wall time the step takes on an idle core; the wall-clock median is reported
    too (``step_wall_s``).

    Returns dict with ``runs`` (per distinct configuration: upsampler, options, step_s,
    eval_batch_s, run_s, rows = the grid rows it serves), ``total_s``, ``workers``, ``seeds``,
    ``schedule``, ``epochs``.
    """
    import dataclasses

    from torch.utils.data import DataLoader

    from .data import make_dataset
    from .metrics import SegmentationMeter
    from .models import Segmenter
    from .train import resolve_config

    seeds = list(seeds)
    per_upsampler = per_upsampler or {}
    rows_of: Dict[tuple, int] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    seen = set()
    try:
        for conf in grid(grid_name, upsamplers):
            options = _canonical_options(conf["upsampler"], dict((train_overrides or {}).get("upsampler_options", {}),
                                                                 **per_upsampler.get(conf["upsampler"], {}),
                                                                 **conf["options"]))
            key = (conf["upsampler"], json.dumps(options, sort_keys=True))
            rows_of[key] = rows_of.get(key, 0) + 1
            if key in seen:
                continue
            seen.add(key)
            cfg = resolve_config(dict(train_overrides or {}, upsampler=conf["upsampler"], upsampler_options=options,
                                      progress=False))
            ds = make_dataset(cfg.dataset, split="train", root=cfg.data_root, size=cfg.size,
                              num_samples=max(cfg.batch_size * (steps + 1), cfg.batch_size), seed=cfg.data_seed,
                              num_classes=cfg.num_classes)
            model = Segmenter(ds.num_classes, cfg.upsampler, width=cfg.width, stages=cfg.stages,
                              decoder_width=cfg.decoder_width, upsampler_options=cfg.upsampler_options,
                              skip_fusion=cfg.skip_fusion, head=cfg.head)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
            loader = list(DataLoader(ds, batch_size=cfg.batch_size))
            times, walls = [], []
            data = ds if hasattr(ds, "set_epoch") else None
            for k in range(steps + 1):
                c0, w0 = time.process_time(), time.perf_counter()
                if data is not None:  # generating the batch is part of a training step
                    data.set_epoch(k + 1)
                    batch = [data[i] for i in range(cfg.batch_size)]
                    img, mask = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
                else:
                    img, mask = loader[k % len(loader)]
                loss = torch.nn.functional.cross_entropy(model(img), mask)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if k:
                    times.append(time.process_time() - c0)
                    walls.append(time.perf_counter() - w0)
            step_s = sorted(times)[len(times) // 2]
            model.eval()
            meter = SegmentationMeter(ds.num_classes, ignore_index=ds.ignore_index)
            with torch.no_grad():
                c1 = time.process_time()
                meter.update(model(loader[0][0]).argmax(1), loader[0][1])  # as validation runs it
                meter.compute()
                eval_s = time.process_time() - c1
            n_epochs = epochs or cfg.epochs
            per_epoch = max(1, cfg.train_samples // cfg.batch_size)
            if cfg.max_steps_per_epoch:
                per_epoch = min(per_epoch, cfg.max_steps_per_epoch)
            evals = n_epochs // cfg.eval_every + 1 if cfg.eval_every else 1
            val_batches = -(-cfg.val_samples // cfg.batch_size)
            run_s = n_epochs * per_epoch * step_s + evals * val_batches * eval_s
            out.append(dict(upsampler=conf["upsampler"], options=options, step_s=step_s,
                            step_wall_s=sorted(walls)[len(walls) // 2], eval_batch_s=eval_s,
                            run_s=run_s, epochs=n_epochs, steps_per_epoch=per_epoch, evals=evals,
                            schedule=cfg.schedule, key=key))
    finally:
        torch.set_num_threads(threads)
    for r in out:
        r["rows"] = rows_of[r.pop("key")]
    total = sum(r["run_s"] for r in out) * len(seeds) / max(1, workers)
    return dict(runs=out, total_s=total, workers=workers, seeds=seeds, grid=grid_name,
                schedule=out[0]["schedule"] if out else None, epochs=out[0]["epochs"] if out else None)


def read_csv(path) -> List[Dict]:
    """Rows of a sweep CSV with numeric columns converted (old and new column sets)."""
    ints = {"seed", "params", "upsampler_params", "macs", "upsampler_macs", "flops", "epochs", "size", "train_samples"}
    floats = {"miou", "boundary_iou", "fg_boundary_iou", "pixel_acc", "error_rate", "loc_error_rate",
              "rec_error_rate", "loc_error_share", "time_per_iter_ms", "train_loss"}
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in ints & r.keys():
                r[k] = int(float(r[k])) if r[k] not in ("", None) else None
            for k in floats & r.keys():
                r[k] = float(r[k]) if r[k] not in ("", None) else float("nan")
            if "converged" in r:
                r["converged"] = {"True": True, "False": False}.get(r["converged"])
            rows.append(r)
    return rows


#: the stored CSV of each stored result, and the stored commands that write into it
STORED_FILES = {"main": ("main.csv", ("main", "main+sapa-d")), "table6": ("table6.csv", ("table6",)),
                "statistics": ("statistics.csv", ("statistics",))}


def stored_config_ids(name: str) -> Dict[str, List[Dict]]:
    """The runs of stored command ``name`` ("main", "main+sapa-d", "table6", "statistics"), by config_id.

    Recomputed from the command's grid, upsamplers, seeds and task (:func:`stored_task`) exactly as
    ``python -m sapa.lab.sweep`` computes them, so a row belongs to the stored result if and
    only if its ``config_id`` is a key here. Returns ``{config_id: [{group, setting, seed}, ...]}``
    (settings equal to SAPA-B's defaults share one run, hence a list).
    """
    if name not in STORED:
        raise ValueError(f"unknown stored command {name!r}; expected one of {sorted(STORED)}")
    argv = STORED[name]
    grid_name = argv[argv.index("--grid") + 1]
    ups = argv[argv.index("--upsamplers") + 1: argv.index("--out")] if "--upsamplers" in argv else None
    seeds = SAPA_D_SEEDS if name == "main+sapa-d" else STORED_SEEDS
    out: Dict[str, List[Dict]] = {}
    for job in _jobs(grid_name, seeds, "runs/sweep", stored_task(name), ups):
        out.setdefault(job["config_id"], []).append(
            dict(group=job["group"], setting=job["setting"], seed=job["train"]["seed"]))
    return out


def select_stored(rows: List[Dict], name: str) -> Tuple[List[Dict], int]:
    """The rows of ``rows`` (a stored CSV's) that belong to stored result ``name`` ("main",
    which includes SAPA-D's rows, "table6" or "statistics"): those whose ``config_id`` is a
    stored run's.

    Returns ``(kept, left_out)``. Raises ValueError when two kept rows have one (group,
    setting, seed): the file was assembled by hand, and no row can be chosen silently.
    """
    if name not in STORED_FILES:
        raise ValueError(f"unknown stored result {name!r}; expected one of {sorted(STORED_FILES)}")
    ids = {}
    for command in STORED_FILES[name][1]:
        ids.update(stored_config_ids(command))
    kept = [r for r in rows if r.get("config_id") in ids]
    seen: Dict[tuple, Dict] = {}
    for r in kept:
        key = (r.get("group"), r.get("setting"), r.get("seed"))
        if key in seen:
            raise ValueError(f"{STORED_FILES[name][0]}: two rows of the stored settings for (group, setting, "
                             f"seed) = {key} (runs {seen[key].get('run')!r} and {r.get('run')!r})")
        seen[key] = r
    return kept, len(rows) - len(kept)


def stored_rows(name: str, start=None) -> Tuple[Optional[List[Dict]], str]:
    """The stored result ``name`` ("main", "table6" or "statistics") for a chapter: ``(rows, status)``.

    ``rows``: the rows of ``book/results/<name>.csv`` (:func:`sapa.lab.results.stored_file`: the
    checkout's, else fetched) of the stored commands' runs (:func:`select_stored`), or None when
    the file cannot be had. ``status``: one Markdown sentence saying what the file holds, or why
    it is not there (not computed yet, with the command; or could not be downloaded, and why).
    """
    from .results import StoredFileUnavailable, stored_file, unavailable_sentence

    if name not in STORED_FILES:
        raise ValueError(f"unknown stored result {name!r}; expected one of {sorted(STORED_FILES)}")
    fname, commands = STORED_FILES[name]
    try:
        path = stored_file(fname, start)
    except StoredFileUnavailable as e:
        return None, unavailable_sentence(e, stored_command(commands[0]))
    rows, other = select_stored(read_csv(path), name)
    n = len(rows)
    status = f"The stored `{fname}` holds {n} run{'s' if n != 1 else ''} of the stored settings"
    if other:
        status += (f" ({other} row{'s' if other != 1 else ''} of other settings, e.g. a rerun with a changed "
                   f"option, {'are' if other != 1 else 'is'} left out)")
    return rows, status + "."


def summarize(rows: List[Dict], keys=("group", "setting"), metrics=("miou", "boundary_iou")) -> List[Dict]:
    """Mean and sample std over seeds of each configuration, in first-seen order."""
    import statistics

    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        s = dict(zip(keys, key), n=len(rs), upsampler=rs[0]["upsampler"])
        for m in tuple(metrics) + ("time_per_iter_ms",):
            vals = [r[m] for r in rs]
            s[m + "_mean"] = statistics.fmean(vals)
            s[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        for m in ("params", "upsampler_params", "flops", "upsampler_macs"):
            s[m] = rs[0][m]
        out.append(s)
    return out


def _machine(workers: int) -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"{workers} worker process{'es' if workers != 1 else ''} x 1 thread")


#: TrainConfig fields the CLI exposes: (flag, type, choices, help)
def _flags():
    from .data import DATASETS
    from .models import HEADS, SKIP_FUSIONS
    from .train import SCHEDULES

    return [
        ("dataset", str, DATASETS, "dataset of every run (textures, statistics: fresh procedural samples "
                                   "every epoch)"),
        ("data-root", str, None, "folder of --dataset folder / oxford-pets (checked once, before any run)"),
        ("num-classes", int, None, "class count (synthetic: 2..6; folder: inferred)"),
        ("head", str, HEADS, "decoder arm of the segmenter (see sapa.lab.models)"),
        ("skip-fusion", str, SKIP_FUSIONS, "how the unet arm fuses the guide (segformer: none)"),
        ("stages", int, None, "encoder stages (x2 upsampling steps of the decoder)"),
        ("width", int, None, "encoder width of the first stage"),
        ("decoder-width", int, None, "channels of the decoder features that are upsampled"),
        ("epochs", int, None, "epochs of every run (the cap under --schedule plateau)"),
        ("size", int, None, "image side in pixels"),
        ("train-samples", int, None, "training samples per epoch"),
        ("val-samples", int, None, "validation images"),
        ("batch-size", int, None, "batch size"),
        ("lr", float, None, "peak learning rate (AdamW)"),
        ("max-steps-per-epoch", int, None, "cap on steps per epoch (smoke tests)"),
        ("schedule", str, SCHEDULES, "cosine over --epochs, or plateau (train to convergence, --epochs a cap)"),
        ("patience", int, None, "plateau: epochs without 1%% improvement before a decay"),
        ("plateau-tol", float, None, "plateau: relative improvement that counts"),
        ("max-decays", int, None, "plateau: decays before the run counts as converged"),
        ("eval-every", int, None, "validate every N epochs (0: only the last; the last always)"),
        ("data-seed", int, None, "one data seed for every run (default: each run's --seeds value, so "
                                 "seeds vary the data and stay paired across upsamplers)"),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sapa.lab.sweep",
        description="Train a grid of upsamplers (seed-major, resumable) and append one row per run to a CSV.",
        epilog="The stored results of the book: python -m sapa.lab.sweep --print-commands")
    p.add_argument("--grid", choices=GRIDS, help="segmentation: the 15 upsamplers; main: those and the "
                   "bilinear+conv control; ablations / table6: the paper's Table 6 (table6 adds the padding)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds (each also the data seed unless --data-seed is given)")
    p.add_argument("--out", help="CSV path (appended to; rows already there are skipped)")
    p.add_argument("--runs", default="runs", help="directory of the per-run checkpoints (resumable)")
    p.add_argument("--workers", type=int, default=2, help="parallel runs, one thread each")
    p.add_argument("--upsamplers", nargs="+", default=None, metavar="NAME",
                   help="segmentation/main grid: a subset of the names (default: all of the grid)")
    p.add_argument("--profile", default=None, choices=["quick", "full"],
                   help="defaults for the sizes left unset (default: $SAPA_PROFILE or quick)")
    p.add_argument("--upsampler-option", action="append", default=[], metavar="[NAME:]KEY=VALUE",
                   help="an upsampler option, repeatable: NAME:KEY=VALUE for upsampler NAME only "
                        "(e.g. bilinear+conv:match=sapa-b); a bare KEY=VALUE goes to every upsampler of "
                        "the grid that accepts KEY (e.g. kernel_size=3)")
    flags = _flags()
    for key, typ, choices, help_text in flags:
        p.add_argument(f"--{key}", type=typ, default=None, choices=choices, help=help_text)
    p.add_argument("--estimate", action="store_true", help="time a few steps and a validation batch per "
                   "distinct configuration, print the predicted wall time of the sweep, train nothing")
    p.add_argument("--print-commands", action="store_true", help="print the commands of the stored results")
    a = p.parse_args(argv)
    if a.print_commands:
        for name in list(STORED) + ["mechanism"]:  # noqa: B007
            print(f"{name}: {stored_command(name)}")
        return 0
    if not a.grid:
        p.error("--grid is required")
    if not a.estimate and not a.out:
        p.error("--out is required")
    if a.workers < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    overrides = {k: getattr(a, k) for k in ("profile",) if getattr(a, k) is not None}
    for key, *_ in flags:
        v = getattr(a, key.replace("-", "_"))
        if v is not None:
            overrides[key.replace("-", "_")] = v
    try:
        from .train import resolve_config

        confs = grid(a.grid, a.upsamplers)
        per_upsampler = parse_upsampler_options(a.upsampler_option, [c["upsampler"] for c in confs])
        for conf in confs:  # every setting checked before anything runs
            cfg = resolve_config(dict(overrides, upsampler=conf["upsampler"],
                                      upsampler_options=dict(per_upsampler.get(conf["upsampler"], {}),
                                                             **conf["options"])))
        from .data import PROCEDURAL_DATASETS, make_dataset

        if cfg.dataset not in PROCEDURAL_DATASETS:  # a bad --data-root fails here, once

            for split in ("train", "val"):
                make_dataset(cfg.dataset, split=split, root=cfg.data_root, size=cfg.size, num_samples=1,
                             seed=cfg.data_seed, num_classes=cfg.num_classes)
    except (ValueError, TypeError, OSError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    if a.estimate:
        est = estimate(a.grid, a.seeds, overrides, a.upsamplers, workers=a.workers, per_upsampler=per_upsampler)
        for r in est["runs"]:
            shared = f" (x{r['rows']} rows)" if r["rows"] > 1 else ""
            print(f"{r['upsampler']:14s} {json.dumps(r['options']):28s} {1000 * r['step_s']:7.0f} ms/step CPU "
                  f"({1000 * r['step_wall_s']:5.0f} wall) {1000 * r['eval_batch_s']:5.0f} ms/val batch "
                  f"-> {r['run_s'] / 60:6.1f} min/run ({r['epochs']} epochs x {r['steps_per_epoch']} steps, "
                  f"{r['evals']} validations){shared}")
        bound = ("an upper bound: the plateau schedule may stop before" if est["schedule"] == "plateau"
                 else "every run trains all")
        print(f"estimated wall time of --grid {a.grid} with {len(a.seeds)} seed{'s' if len(a.seeds) != 1 else ''} on {a.workers} worker{'s' if a.workers != 1 else ''}: "
              f"{est['total_s'] / 3600:.2f} h for {len(est['runs'])} distinct run{'s' if len(est['runs']) != 1 else ''} per seed under the "
              f"{est['schedule']} schedule ({bound} {est['epochs']} epochs); runs already in a CSV are not "
              f"subtracted")
        return 0
    t0 = time.time()
    error = None
    try:
        with sigterm_as_interrupt():
            rows = run_sweep(a.grid, a.seeds, a.out, a.runs, a.workers, overrides, a.upsamplers,
                             per_upsampler=per_upsampler)
    except ValueError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except RuntimeError as e:  # some runs failed: record the invocation, then report
        error, rows = e, read_csv(a.out) if Path(a.out).exists() else []
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the finished rows stay; record the invocation
        error = "interrupted (rerun the same command to resume)"
        rows = read_csv(a.out) if Path(a.out).exists() else []
    meta_path = Path(a.out).with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    invocation = dict(command="python -m sapa.lab.sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
                      seconds=round(time.time() - t0, 1), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      machine=_machine(a.workers), rows=len(rows))
    if error is not None and str(error).startswith("interrupted"):
        invocation["interrupted"] = True
    invocations = list(meta.get("invocations", [])) + [invocation]
    meta.update(
        command=invocation["command"], seconds=round(sum(i["seconds"] for i in invocations), 1),
        date=invocation["date"], machine=invocation["machine"], train_overrides=overrides, seeds=a.seeds,
        grid=a.grid, config_ids=sorted({r["config_id"] for r in rows if r.get("config_id")}),
        invocations=invocations,
    )
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
    if error is not None:
        print(f"{p.prog}: error: {error}", file=sys.stderr)
        return 130 if invocation.get("interrupted") else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
