"""The mechanism experiment: the paper's Fig. 2 made quantitative.

A controlled problem where the right answer is known and no upsampler can copy it:

* labels L (B, H, W): the masks of :class:`sapa.lab.data.TexturedRegions` (blobs, thin curves);
* class embedding E (num_classes, dim), unit-norm random rows; target T = E[L] (B, dim, H, W);
* decoder feature X = avgpool2(T) + tau n / sqrt(dim)  (B, dim, H/2, W/2): the right values,
  at low resolution (boundaries blurred);
* encoder feature Y = A E[L] + sigma n / sqrt(dim)  (B, dim, H, W), with A a random
  (dim, dim) matrix with unit-norm columns: where the boundaries are, but not the values
  (so an upsampler that copies the encoder is wrong), drowned in noise of level sigma
  (noise energy sigma^2 per pixel against signal energy ~1).

Every upsampler ``up`` is fitted alone (only its own parameters) to ``up(X, Y) ~ T`` by Adam
on a fixed training set, **to convergence**: training stops when the training loss has not
improved on its best by more than ``rel_tol`` (relative) for ``patience`` consecutive
steps (full profile: no 1 % improvement in 40 steps), or after ``max_steps`` (then
``converged = False`` is recorded). It is scored on a fresh test set:

* ``region_error``: relative squared error ``sum |out - T|^2 / sum |T|^2`` over the
  *interior* pixels (whose 3 x 3 label neighbourhood is one class): smoothness, the
  property of Eq. 4 of the paper;
* ``boundary_acc``: over the boundary pixels (the others), the fraction whose output is
  nearest (Euclidean) to the embedding of the right class: detail;
* ``interior_acc``: the same fraction over the interior pixels.

:func:`kernel_maps` reads the kernels of the upsamplers that expose them (SAPA's family,
CARAFE, FADE, A2U) and measures, per output pixel, the kernel mass on low-resolution
neighbours of the output pixel's own class (1 = a perfectly class-aware kernel).

Command line (the stored result's command is in its JSON)::

    python -m sapa.lab.mechanism --out book/results/mechanism.csv --workers 2   # full profile
    python -m sapa.lab.mechanism --profile quick --out /tmp/mech.csv         # CI-sized

The CSV gets one row per (upsampler, sigma, seed), appended as each fit finishes; a rerun
skips the rows already there with the same settings (``config_id``) and never removes rows.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import inspect
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._parallel import sigterm_as_interrupt, stop_pool

__all__ = ["MechanismConfig", "PROFILES", "make_problem", "fit_upsampler", "evaluate", "kernel_maps",
           "kernel_study", "run", "read_rows", "summarize", "stored_rows", "main", "CSV_COLUMNS"]

#: upsamplers of the full experiment (all of sapa's, in the chapter's order)
UPSAMPLERS = ("nearest", "bilinear", "deconv", "pixelshuffle", "carafe", "indexnet-hin", "indexnet-m2o",
              "a2u", "fade", "dysample", "sapa-i", "sapa-b", "sapa-p", "sapa-g", "sapa-d")


@dataclass
class MechanismConfig:
    """Settings of the mechanism experiment (see the module docstring)."""

    upsamplers: Tuple[str, ...] = UPSAMPLERS
    sigmas: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    seeds: Tuple[int, ...] = (0, 1, 2)
    size: int = 32
    num_classes: int = 6
    dim: int = 16
    tau: float = 0.1
    n_train: int = 8
    n_test: int = 32
    lr: float = 1e-2
    max_steps: int = 500
    patience: int = 40
    rel_tol: float = 1e-2

    def identity(self) -> Dict:
        """The settings that define a row's numbers (everything but the lists swept)."""
        d = dataclasses.asdict(self)
        for k in ("upsamplers", "sigmas", "seeds"):
            d.pop(k)
        return d


PROFILES = {
    "full": MechanismConfig(),
    "quick": MechanismConfig(upsamplers=("bilinear", "carafe", "sapa-b"), sigmas=(0.0, 2.0), seeds=(0,),
                             size=16, n_train=2, n_test=4, max_steps=30, patience=10),
}

CSV_COLUMNS = ["upsampler", "sigma", "seed", "region_error", "boundary_acc", "interior_acc", "train_loss",
               "steps", "converged", "params", "fit_seconds", "fit_cpu_seconds", "config_id", "config"]


def _config_id(cfg: MechanismConfig) -> str:
    return hashlib.sha1(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:10]


def make_problem(n: int, sigma: float, seed: int, cfg: MechanismConfig, split: str = "train") -> Dict[str, torch.Tensor]:
    """One problem instance: dict of labels (n, H, W) int64, target T (n, dim, H, W),
    X (n, dim, H/2, W/2), Y (n, dim, H, W), embedding E (C, dim) and map A (dim, dim).

    E and A depend on ``seed`` only (the same in train and test); labels and noise on
    ``(seed, split)``; sigma scales the same noise draw, so the sigmas of one seed differ
    only in the noise level.
    """
    from .data import TexturedRegions

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise ValueError(f"sigma must be a non-negative number, got {sigma!r}")
    if cfg.size % 2:
        raise ValueError(f"size must be even, got {cfg.size}")
    g = torch.Generator().manual_seed(1000 + seed)
    E = torch.randn(cfg.num_classes, cfg.dim, generator=g, dtype=torch.float64)
    E = E / E.norm(dim=1, keepdim=True)
    A = torch.randn(cfg.dim, cfg.dim, generator=g, dtype=torch.float64)
    A = A / A.norm(dim=0, keepdim=True)
    ds = TexturedRegions(n, size=cfg.size, num_classes=cfg.num_classes, seed=seed,
                         split="val" if split == "train" else "test")
    labels = torch.stack([ds[i][1] for i in range(n)])
    T = E[labels].permute(0, 3, 1, 2)  # (n, dim, H, W)
    gn = torch.Generator().manual_seed(2000 + 7 * seed + (split != "train"))
    noise_x = torch.randn(n, cfg.dim, cfg.size // 2, cfg.size // 2, generator=gn, dtype=torch.float64)
    noise_y = torch.randn(n, cfg.dim, cfg.size, cfg.size, generator=gn, dtype=torch.float64)
    X = F.avg_pool2d(T, 2) + cfg.tau * noise_x / math.sqrt(cfg.dim)
    Y = torch.einsum("ij,njhw->nihw", A, T) + sigma * noise_y / math.sqrt(cfg.dim)
    f = torch.float32
    return {"labels": labels, "T": T.to(f), "X": X.to(f), "Y": Y.to(f), "E": E.to(f), "A": A.to(f)}


def _interior(labels: torch.Tensor) -> torch.Tensor:
    """(n, H, W) bool: the 3 x 3 neighbourhood (clipped at the frame) holds one class."""
    m = labels.double()[:, None]
    hi = F.max_pool2d(F.pad(m, (1, 1, 1, 1), mode="replicate"), 3, 1)
    lo = -F.max_pool2d(F.pad(-m, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return (hi == lo)[:, 0]


@torch.no_grad()
def evaluate(out: torch.Tensor, problem: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Scores of an output (n, dim, H, W): region_error, boundary_acc, interior_acc."""
    T, labels, E = problem["T"], problem["labels"], problem["E"]
    if out.shape != T.shape:
        raise ValueError(f"out must have the target's shape {tuple(T.shape)}, got {tuple(out.shape)}")
    inner = _interior(labels)
    err = (out - T).square().sum(1)
    region = float(err[inner].sum() / T.square().sum(1)[inner].sum())
    d = torch.cdist(out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).double(), E.double())
    pred = d.argmin(1).view(labels.shape)
    ok = pred == labels
    return {"region_error": region, "boundary_acc": float(ok[~inner].float().mean()),
            "interior_acc": float(ok[inner].float().mean())}


def _build(name: str, dim: int) -> torch.nn.Module:
    import sapa

    if name == "bilinear+conv":
        from .models import BilinearConv

        return BilinearConv(dim, dim, 2)
    return sapa.build_upsampler(name, dim, guide_channels=dim, scale_factor=2)


def fit_upsampler(name: str, train: Dict[str, torch.Tensor], cfg: MechanismConfig, seed: int = 0):
    """Fit upsampler ``name`` to ``up(X, Y) ~ T`` (MSE, Adam, full batch) until convergence.

    Returns (module in eval mode, info dict with train_loss, steps, converged, params).
    Upsamplers without parameters are returned as they are (steps 0, converged True).
    """
    torch.manual_seed(seed)
    up = _build(name, cfg.dim)
    params = [p for p in up.parameters() if p.requires_grad]
    X, Y, T = train["X"], train["Y"], train["T"]
    info = {"params": sum(p.numel() for p in params), "steps": 0, "converged": True}
    if params:
        opt = torch.optim.Adam(params, lr=cfg.lr)
        best, since = math.inf, 0
        info["converged"] = False
        for step in range(cfg.max_steps):
            loss = F.mse_loss(up(X, Y), T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            info["steps"] = step + 1
            if value < best * (1 - cfg.rel_tol):
                best, since = value, 0
            else:
                since += 1
                if since >= cfg.patience:
                    info["converged"] = True
                    break
    up.eval()
    with torch.no_grad():
        info["train_loss"] = float(F.mse_loss(up(X, Y), T))
    return up, info


@torch.no_grad()
def kernel_maps(up: torch.nn.Module, problem: Dict[str, torch.Tensor], index: int = 0):
    """Kernels of one test image and their class-awareness, or None if ``up`` exposes none.

    Returns dict with ``kernels`` (K*K, H, W) (entry p = dy*K + dx weighs the low-res
    neighbour at offset (dy - K//2, dx - K//2) of the output pixel's window centre),
    ``same_class_mass`` (H, W): the kernel mass on low-res pixels whose (2 x 2 majority)
    label equals the output pixel's label, ``labels`` (H, W) and ``kernel_size`` K.
    SAPA variants, CARAFE, FADE and A2U expose their kernels; others return None.
    """
    x, y = problem["X"][index: index + 1], problem["Y"][index: index + 1]
    fn = getattr(getattr(up, "sapa", up), "kernels", None)
    if fn is None:
        return None
    names = [p for p in inspect.signature(fn).parameters]
    args = {"x": x, "y": y}
    try:
        w = fn(*[args[n] for n in names if n in args])
    except KeyError:  # pragma: no cover - an unexpected signature
        return None
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        return None  # e.g. SAPA-D: weights over sampled points, not a K x K window
    w = w[0]
    K = int(round(math.sqrt(w.shape[0])))
    labels = problem["labels"][index]
    H, W = labels.shape
    # low-res labels: the majority of each 2 x 2 block
    C = int(problem["E"].shape[0])
    low = F.avg_pool2d(F.one_hot(labels, C).permute(2, 0, 1).double()[None], 2)[0].argmax(0)
    R = K // 2
    lowpad = F.pad(low[None, None].double(), (R, R, R, R), value=-1)[0, 0]
    rows = torch.arange(H) * low.shape[0] // H
    cols = torch.arange(W) * low.shape[1] // W
    mass = torch.zeros(H, W, dtype=torch.float64)
    for dy in range(K):
        for dx in range(K):
            neigh = lowpad[rows[:, None] + dy, cols[None, :] + dx]
            mass += w[dy * K + dx].double() * (neigh == labels.double())
    return {"kernels": w.float(), "same_class_mass": mass.float(), "labels": labels, "kernel_size": K}


def kernel_study(upsamplers: Sequence[str] = ("carafe", "fade", "sapa-b", "sapa-g"),
                 sigmas: Sequence[float] = (0.5, 4.0), cfg: Optional[MechanismConfig] = None, seed: int = 0,
                 index: int = 0) -> Dict[Tuple[str, float], Dict]:
    """Fit each upsampler at each sigma (as :func:`run` does) and read its kernels on test image ``index``.

    Returns ``{(upsampler, sigma): kernel_maps(...) plus "scores" (the test scores)}`` for
    the upsamplers that expose kernels (others are left out). For the chapter's figure:
    kernel maps at two noise levels.
    """
    cfg = cfg or PROFILES["full"]
    out = {}
    for s in sigmas:
        train = make_problem(cfg.n_train, float(s), seed, cfg, "train")
        test = make_problem(cfg.n_test, float(s), seed, cfg, "test")
        for u in upsamplers:
            up, _ = fit_upsampler(u, train, cfg, seed=seed)
            km = kernel_maps(up, test, index)
            if km is not None:
                with torch.no_grad():
                    km["scores"] = evaluate(up(test["X"], test["Y"]), test)
                out[(u, float(s))] = km
    return out


def read_rows(path) -> List[Dict]:
    """Rows of a mechanism CSV with numbers converted ([] if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None and list(reader.fieldnames) != CSV_COLUMNS:
            raise ValueError(f"{path} has columns {reader.fieldnames}, not {CSV_COLUMNS}: use another --out")
        for r in reader:
            for k in ("sigma", "region_error", "boundary_acc", "interior_acc", "train_loss", "fit_seconds",
                      "fit_cpu_seconds"):
                r[k] = float(r[k])
            for k in ("seed", "steps", "params"):
                r[k] = int(r[k])
            r["converged"] = r["converged"] == "True"
            rows.append(r)
    return rows


def _append(path: Path, row: Dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != CSV_COLUMNS:
            raise ValueError(f"{path} has columns {header}, not {CSV_COLUMNS}: use another --out")
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row[k] for k in CSV_COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def _fit_row(job) -> Dict:
    """Worker: fit one (upsampler, sigma, seed) and return its CSV row."""
    u, s, sd, cfg, threads = job
    torch.set_num_threads(threads)
    train = make_problem(cfg.n_train, s, sd, cfg, "train")
    test = make_problem(cfg.n_test, s, sd, cfg, "test")
    t0 = time.perf_counter()
    c0 = time.process_time()
    up, info = fit_upsampler(u, train, cfg, seed=sd)
    with torch.no_grad():
        scores = evaluate(up(test["X"], test["Y"]), test)
    return dict(upsampler=u, sigma=s, seed=sd, **scores, train_loss=info["train_loss"], steps=info["steps"],
                converged=info["converged"], params=info["params"],
                fit_seconds=round(time.perf_counter() - t0, 2), fit_cpu_seconds=round(time.process_time() - c0, 2),
                config_id=_config_id(cfg), config=json.dumps(cfg.identity(), sort_keys=True))


def run(cfg: MechanismConfig, out_csv, progress: bool = True, workers: int = 1) -> List[Dict]:
    """Fit every (upsampler, sigma, seed) of ``cfg`` not yet in ``out_csv``; returns all its rows
    with this config (appending each new row as soon as its fit finishes). ``workers``
    processes (one thread each) fit in parallel."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    cid = _config_id(cfg)
    existing = read_rows(out_csv)  # raises if the file is not a mechanism CSV
    done = {(r["upsampler"], r["sigma"], r["seed"]) for r in existing if r["config_id"] == cid}
    todo = [(u, float(s), int(sd)) for sd in cfg.seeds for s in cfg.sigmas for u in cfg.upsamplers
            if (u, float(s), int(sd)) not in done]
    from tqdm.auto import tqdm

    jobs = [(u, s, sd, cfg, 1 if workers > 1 else torch.get_num_threads()) for u, s, sd in todo]
    bar = tqdm(total=len(jobs), desc="mechanism", disable=not progress)
    if workers <= 1:
        for job in jobs:
            _append(out_csv, _fit_row(job))
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        try:
            for fut in as_completed([pool.submit(_fit_row, job) for job in jobs]):
                _append(out_csv, fut.result())
                bar.update()
        except BaseException:  # Ctrl-C / SIGTERM: stop the workers now, keep the finished rows
            stop_pool(pool)
            raise
        pool.shutdown(wait=True)
    bar.close()
    return [r for r in read_rows(out_csv) if r["config_id"] == cid]


def summarize(rows: Sequence[Dict], metric: str) -> Dict[str, Dict[float, Tuple[float, float, int]]]:
    """{upsampler: {sigma: (mean, sample std, n)}} of ``metric`` over seeds."""
    import statistics

    acc: Dict[str, Dict[float, List[float]]] = {}
    for r in rows:
        acc.setdefault(r["upsampler"], {}).setdefault(float(r["sigma"]), []).append(float(r[metric]))
    return {u: {s: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                for s, v in sorted(d.items())} for u, d in acc.items()}


def stored_rows(start=None) -> Tuple[Optional[List[Dict]], str]:
    """The stored mechanism experiment for a chapter: ``(rows, status)``.

    ``rows``: the rows of ``book/results/mechanism.csv`` (:func:`sapa.lab.results.stored_file`)
    of the full profile's settings (``config_id``), or None when the file cannot be had;
    ``status``: one Markdown sentence saying what the file holds, or why it is not there.
    """
    from .results import StoredFileUnavailable, stored_file, unavailable_sentence

    command = "python -m sapa.lab.mechanism --out book/results/mechanism.csv --workers 2"
    try:
        path = stored_file("mechanism.csv", start)
    except StoredFileUnavailable as e:
        return None, unavailable_sentence(e, command)
    want = _config_id(PROFILES["full"])
    rows = read_rows(path)
    kept = [r for r in rows if r.get("config_id") == want]
    seen = set()
    for r in kept:
        key = (r["upsampler"], float(r["sigma"]), int(r["seed"]))
        if key in seen:
            raise ValueError(f"mechanism.csv: two rows of the stored settings for (upsampler, sigma, seed) = {key}")
        seen.add(key)
    cfg = PROFILES["full"]
    planned = len(cfg.upsamplers) * len(cfg.sigmas) * len(cfg.seeds)
    status = f"The stored `mechanism.csv` holds {len(kept)} of the {planned} planned fits"
    if len(rows) > len(kept):
        k = len(rows) - len(kept)
        status += f" ({k} row{'s' if k != 1 else ''} of other settings left out)"
    return kept, status + "."


def _machine() -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sapa.lab.mechanism",
                                description="The mechanism experiment (fit every upsampler to a known target).")
    p.add_argument("--out", required=True, help="CSV path (appended to; finished rows are skipped)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--upsamplers", nargs="+", default=None)
    p.add_argument("--sigmas", type=float, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="parallel fits (processes of one thread each)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    cfg = dataclasses.replace(PROFILES[a.profile])
    if a.upsamplers:
        from .models import available_segmenter_upsamplers

        bad = [u for u in a.upsamplers if u not in available_segmenter_upsamplers()]
        if bad:
            p.error(f"unknown upsampler(s) {bad}; available: {', '.join(available_segmenter_upsamplers())}")
        cfg.upsamplers = tuple(a.upsamplers)
    if a.sigmas:
        if any(s < 0 for s in a.sigmas):
            p.error(f"sigmas must be >= 0, got {a.sigmas}")
        cfg.sigmas = tuple(a.sigmas)
    if a.seeds:
        cfg.seeds = tuple(a.seeds)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    interrupted = False
    try:
        with sigterm_as_interrupt():
            rows = run(cfg, a.out, progress=a.progress, workers=a.workers)
    except ValueError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except KeyboardInterrupt:  # the finished fits stay in the CSV; the invocation is recorded
        interrupted = True
        rows = [r for r in read_rows(a.out) if r["config_id"] == _config_id(cfg)] if Path(a.out).exists() else []
    meta_path = Path(a.out).with_suffix(".json")
    try:
        old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except ValueError:
        old = {}
    invocation = dict(command="python -m sapa.lab.mechanism " + " ".join(argv if argv is not None else sys.argv[1:]),
                      seconds=round(time.time() - t0, 1), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      machine=_machine() + f", {a.workers} worker process(es)", rows=len(rows))
    if interrupted:
        invocation["interrupted"] = True
    invocations = list(old.get("invocations", [])) + [invocation]
    meta = dict(invocation, config=dataclasses.asdict(cfg), config_id=_config_id(cfg),
                seconds=round(sum(i["seconds"] for i in invocations), 1), invocations=invocations,
                note="seconds: the sum of the invocations' wall times (a rerun skips the rows already in the "
                     "CSV); fit_cpu_seconds in the CSV: process CPU time of each fit")
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
    if interrupted:
        print(f"{p.prog}: error: interrupted after {len(rows)} rows in {a.out} (rerun the same command to resume)",
              file=sys.stderr)
        return 130
    print(f"{len(rows)} rows in {a.out} ({meta['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
