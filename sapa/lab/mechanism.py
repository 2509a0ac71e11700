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
on a fixed training set until the loss settles or a step limit is reached: training stops
when the training loss has not improved on its best by more than ``rel_tol`` (relative) for
``patience`` consecutive steps (full profile: no 1 % improvement in 40 steps; then
``converged = True``), or after ``max_steps`` (then ``converged = False`` is recorded: not
every fit converges, :func:`fit_summary` counts them). It is scored on a fresh test set:

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
from .stats import describe_difference, join_names, plural  # noqa: F401  (re-exported)

__all__ = ["MechanismConfig", "PROFILES", "make_problem", "fit_upsampler", "evaluate", "kernel_maps",
           "kernel_study", "run", "read_rows", "summarize", "main", "CSV_COLUMNS",
           # the chapter's analysis of the stored result
           "stored_rows", "stored_meta", "status_sentence", "meta_sentence", "complete_seeds", "select_complete",
           "selection_sentence", "fit_summary", "convergence_sentence", "cost_sentence", "flat_upsamplers",
           "compare_to_baseline", "smooth_and_sharp", "smooth_sharp_text", "high_noise_verdict", "score_table",
           "plot_stored", "plot_kernel_study", "kernel_mass_table", "format_value", "format_duration", "plural",
           "join_names", "describe", "result_phrase"]

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
            f"torch {torch.__version__}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}")


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
            p.error(f"unknown upsampler{'s' if len(bad) != 1 else ''} {bad}; available: {', '.join(available_segmenter_upsamplers())}")
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
                      machine=_machine() + f", {a.workers} worker process{'es' if a.workers != 1 else ''}",
                      rows=len(rows))
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


# --------------------------------------------------------------------------------------
# the chapter's analysis of the stored result (chapter 7): loading, the seeds a figure may
# use, costs, "smooth and sharp", the verdicts at the highest noise level, kernel tables
# --------------------------------------------------------------------------------------
#: the file names of the stored result and of its invocations' record (in book/results)
STORED_CSV = "mechanism.csv"
STORED_JSON = "mechanism.json"


def _command() -> str:
    from .sweep import stored_command

    return stored_command("mechanism")


def format_value(value: float, digits: int = 1, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals, more (up to 3 more) when a nonzero value would print
    as zero, and ``"< 0.001"``-style text (``"> -0.001"`` when negative) beyond that. Never
    prints ``-0.0``; ``signed`` puts ``+`` before positive values (a true zero: ``0.0``)."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"value must be finite, got {value!r}")
    if not isinstance(digits, int) or digits < 0:
        raise ValueError(f"digits must be a non-negative int, got {digits!r}")
    d = digits
    while v != 0 and round(abs(v), d) == 0 and d < digits + 3:
        d += 1
    if v != 0 and round(abs(v), d) == 0:
        bound = f"{10.0 ** -d:.{d}f}"
        return f"< {bound}" if v > 0 else f"> -{bound}"
    if v == 0:
        return f"{0:.{digits}f}"
    text = f"{abs(v):.{d}f}"
    return ("-" if v < 0 else ("+" if signed else "")) + text


def status_sentence(rows: Sequence[Dict], cfg: Optional[MechanismConfig] = None) -> str:
    """Which seeds of stored rows (one config, e.g. :func:`stored_rows`) are complete (every
    upsampler of ``cfg``, default the full profile, at every sigma), as a Markdown sentence,
    with the command that adds the missing fits when some are missing."""
    cfg = cfg or PROFILES["full"]
    planned = len(cfg.upsamplers) * len(cfg.sigmas) * len(cfg.seeds)
    seeds = complete_seeds(rows, cfg.upsamplers, cfg.sigmas)
    text = (f"The plan: {len(cfg.upsamplers)} upsamplers, σ = {', '.join(f'{s:g}' for s in cfg.sigmas)}, "
            f"seeds {join_names([str(s) for s in cfg.seeds])}; ")
    if not seeds:
        text += "no seed is complete yet (every upsampler at every noise level)"
    else:
        text += (f"{plural(len(seeds), 'seed')} {'is' if len(seeds) == 1 else 'are'} complete "
                 f"(every upsampler at every noise level): {join_names([str(s) for s in seeds])}")
    if len(rows) < planned:
        text += f". `{_command()}` adds the missing fits (it resumes where the stored runs stopped)"
    return text + "."


def stored_meta(download: Optional[bool] = None) -> Tuple[Optional[Dict], str]:
    """The record of the stored runs' invocations, ``mechanism.json``: ``(meta, sentence)``.

    ``meta``: the parsed JSON (keys ``command``, ``seconds`` (the sum of the invocations' wall
    times), ``date``, ``machine``, ``invocations``, ...) or None when it is absent or unreadable.
    ``sentence``: Markdown naming the command as run and its wall time, or saying that the
    record is absent (and so the wall time unknown).
    """
    from .results import StoredFileUnavailable, stored_file, unavailable_sentence

    absent = (f"The record of the invocations, `{STORED_JSON}`, is not there, so the command as run and its "
              f"wall time are not known here; `{_command()}` writes it beside the CSV.")
    try:
        meta = json.loads(stored_file(STORED_JSON, download=download).read_text())
    except StoredFileUnavailable as e:
        return None, unavailable_sentence(e) if e.reason == "download" else absent
    except (FileNotFoundError, ValueError):
        return None, absent
    if not isinstance(meta, dict) or "command" not in meta or "seconds" not in meta:
        return None, absent
    return meta, meta_sentence(meta)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"17 min"``, ``"2.3 h"``: a duration in the unit that reads best."""
    s = float(seconds)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"seconds must be a finite non-negative number, got {seconds!r}")
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _tidy_machine(text: str) -> str:
    """Older records write "1 thread(s)" / "2 worker process(es)": pluralise them by count."""
    import re

    text = re.sub(r"\b(\d+) thread\(s\)", lambda m: plural(int(m.group(1)), "thread"), text)
    return re.sub(r"\b(\d+) worker process\(es\)",
                  lambda m: plural(int(m.group(1)), "worker process", "worker processes"), text)


def meta_sentence(meta: Dict) -> str:
    """One Markdown sentence from a ``mechanism.json`` record: the command, the number of
    invocations, the total wall time, the last date and the machine."""
    if not isinstance(meta, dict) or "command" not in meta or "seconds" not in meta:
        raise ValueError(f"meta must be a mechanism.json record with 'command' and 'seconds', got {meta!r}")
    inv = meta.get("invocations") or [meta]
    text = (f"The record `{STORED_JSON}` lists {plural(len(inv), 'invocation')} of `{meta['command']}`, "
            f"{format_duration(meta['seconds'])} of wall time in all")
    if meta.get("date"):
        text += f" (the last on {meta['date']}"
        text += f", on {_tidy_machine(meta['machine'])})" if meta.get("machine") else ")"
    if any(i.get("interrupted") for i in inv):
        text += "; an interrupted invocation keeps its finished fits, and a rerun resumes"
    return text + "."


def complete_seeds(rows: Sequence[Dict], upsamplers: Sequence[str], sigmas: Sequence[float]) -> List[int]:
    """The seeds (sorted) that have a row for every (upsampler, sigma) of ``upsamplers`` x ``sigmas``.

    A figure or a paired comparison over these seeds never mixes seed sets (a mean at one sigma
    over seeds 0 and 1 next to a mean at another over seed 0 alone would put bends into lines
    that are flat). Empty when ``upsamplers`` or ``sigmas`` is empty.
    """
    want = {(u, float(s)) for u in upsamplers for s in sigmas}
    if not want:
        return []
    have: Dict[int, set] = {}
    for r in rows:
        have.setdefault(int(r["seed"]), set()).add((r["upsampler"], float(r["sigma"])))
    return sorted(sd for sd, cells in have.items() if want <= cells)


def select_complete(rows: Sequence[Dict], upsamplers: Sequence[str], sigmas: Sequence[float]) -> Dict:
    """The largest consistent part of ``rows`` to show: one seed set, complete for every
    (upsampler, sigma) shown.

    Chooses the upsamplers first (as many as possible), then the seeds (as many as possible
    that have every shown upsampler at every sigma; ties: the lower seeds). With every upsampler
    complete on some seed this is all ``upsamplers`` over :func:`complete_seeds`.

    Returns dict ``seeds`` (sorted list), ``upsamplers`` (in the given order), ``left_out``
    (upsamplers not shown: a fit missing at some sigma on the chosen seeds) and ``rows``
    (the rows of those seeds, upsamplers and sigmas, in the input order).
    """
    upsamplers, sig = list(upsamplers), [float(s) for s in sigmas]
    if len(set(upsamplers)) != len(upsamplers):
        raise ValueError(f"upsamplers must be distinct, got {upsamplers}")
    cells: Dict[int, set] = {}
    for r in rows:
        cells.setdefault(int(r["seed"]), set()).add((r["upsampler"], float(r["sigma"])))
    full = {sd: frozenset(u for u in upsamplers if all((u, s) in c for s in sig)) for sd, c in cells.items()}
    best = (0, 0, ()), frozenset(), []
    for sd in sorted(full):
        ups = full[sd]
        seeds = [k for k in sorted(full) if ups <= full[k]]
        key = (len(ups), len(seeds), tuple(-k for k in seeds))
        if ups and key > best[0]:
            best = key, ups, seeds
    _, ups, seeds = best
    shown = [u for u in upsamplers if u in ups]
    keep = [r for r in rows if int(r["seed"]) in seeds and r["upsampler"] in ups and float(r["sigma"]) in sig]
    return {"seeds": list(seeds), "upsamplers": shown, "left_out": [u for u in upsamplers if u not in ups],
            "rows": keep}


def selection_sentence(selection: Dict, names: Optional[Dict[str, str]] = None) -> str:
    """What :func:`select_complete` kept, as one Markdown sentence for a figure or a table."""
    names = names or {}
    seeds, left = selection["seeds"], selection["left_out"]
    if not seeds:
        return "No stored fit can be shown yet."
    text = (f"The figure and the table use {'seed' if len(seeds) == 1 else 'seeds'} "
            f"{join_names([str(s) for s in seeds])}, complete for every upsampler shown at every noise level")
    if left:
        text += (f"; left out until their fits on {'this seed' if len(seeds) == 1 else 'these seeds'} are stored: "
                 + join_names([names.get(u, u) for u in left]))
    return text + "."


def fit_summary(rows: Sequence[Dict]) -> Dict:
    """Convergence and cost of a list of mechanism rows.

    Returns dict ``fits`` (rows), ``fitted`` (rows with parameters, i.e. trained), ``converged``
    (of those, the fits that stopped because the loss settled), ``share`` (converged / fitted,
    None without fitted rows), ``stopped`` ({upsampler: count} of fits that hit the step limit),
    ``max_steps`` (the step limit(s) of the rows' configs, sorted), ``cpu_seconds`` (the sum of
    ``fit_cpu_seconds``) and ``cpu_by_upsampler`` ({upsampler: mean fit_cpu_seconds}).
    """
    rows = list(rows)
    fitted = [r for r in rows if int(r["params"]) > 0]
    stopped: Dict[str, int] = {}
    for r in fitted:
        if not r["converged"]:
            stopped[r["upsampler"]] = stopped.get(r["upsampler"], 0) + 1
    limits = sorted({int(json.loads(r["config"])["max_steps"]) for r in rows if r.get("config")})
    by: Dict[str, List[float]] = {}
    for r in rows:
        by.setdefault(r["upsampler"], []).append(float(r["fit_cpu_seconds"]))
    conv = sum(1 for r in fitted if r["converged"])
    return {"fits": len(rows), "fitted": len(fitted), "converged": conv,
            "share": conv / len(fitted) if fitted else None, "stopped": stopped, "max_steps": limits,
            "cpu_seconds": sum(float(r["fit_cpu_seconds"]) for r in rows),
            "cpu_by_upsampler": {u: sum(v) / len(v) for u, v in by.items()}}


def convergence_sentence(summary: Dict, names: Optional[Dict[str, str]] = None) -> str:
    """The share of converged fits of :func:`fit_summary`, and which stopped at the step limit."""
    names = names or {}
    n, c = summary["fitted"], summary["converged"]
    if not n:
        return "No stored fit has parameters to train yet."
    limit = join_names([str(m) for m in summary["max_steps"]]) or "the"
    text = (f"Of the {plural(n, 'stored fit')} with parameters, {c} ({100 * c / n:.0f} %) converged "
            f"(the training loss stopped improving)")
    if c == n:
        return text + "; none stopped at the step limit."
    stopped = sorted(summary["stopped"].items(), key=lambda kv: (-kv[1], list(names).index(kv[0])
                                                                if kv[0] in names else 0))
    return (text + f"; the other {n - c} stopped at the limit of {limit} Adam steps before the loss settled: "
            + join_names([f"{names.get(u, u)} {k}" for u, k in stopped]) + " (fits per upsampler).")


def cost_sentence(summary: Dict, names: Optional[Dict[str, str]] = None, planned: Optional[Dict[str, int]] = None) -> str:
    """The CPU cost of the stored fits (:func:`fit_summary`): the total, the slowest upsampler and,
    when ``planned`` ({upsampler: planned fits}) is given and every planned upsampler has a
    stored fit, an estimate for the whole plan at the stored fits' mean cost per upsampler."""
    names = names or {}
    if not summary["fits"]:
        return "No stored fit, so no measured cost yet."
    by = summary["cpu_by_upsampler"]
    slow = max(by, key=by.get)
    text = (f"The {plural(summary['fits'], 'stored fit')} took {format_duration(summary['cpu_seconds'])} of CPU time "
            f"in all (the sum of their `fit_cpu_seconds`); the slowest, {names.get(slow, slow)}, "
            f"{format_duration(by[slow])} per fit on average")
    if planned and all(u in by for u in planned):
        est = sum(by[u] * k for u, k in planned.items())
        text += (f". At these rates all {sum(planned.values())} planned fits take about "
                 f"{format_duration(est)} of CPU time")
    return text + "."


def _values(rows: Sequence[Dict], sigma: float, metric: str) -> Dict[str, Dict[int, float]]:
    out: Dict[str, Dict[int, float]] = {}
    for r in rows:
        if float(r["sigma"]) == float(sigma):
            out.setdefault(r["upsampler"], {})[int(r["seed"])] = float(r[metric])
    return out


def flat_upsamplers(rows: Sequence[Dict], upsamplers: Sequence[str], sigmas: Sequence[float],
                    rel_region: float = 0.01, abs_acc: float = 0.005) -> List[str]:
    """The upsamplers whose seed-mean scores do not change with sigma: region error within
    ``rel_region`` (relative) and boundary accuracy within ``abs_acc`` (absolute) of their value
    at the first sigma, at every sigma. ``rows``: one seed set (e.g. :func:`select_complete`)."""
    import statistics

    sig = [float(s) for s in sigmas]
    if not sig:
        raise ValueError("sigmas must not be empty")
    flat = []
    for u in upsamplers:
        means = {}
        for s in sig:
            reg = [float(r["region_error"]) for r in rows if r["upsampler"] == u and float(r["sigma"]) == s]
            acc = [float(r["boundary_acc"]) for r in rows if r["upsampler"] == u and float(r["sigma"]) == s]
            if not reg:
                break
            means[s] = (statistics.fmean(reg), statistics.fmean(acc))
        else:
            r0, a0 = means[sig[0]]
            if all(abs(r - r0) <= rel_region * abs(r0) and abs(a - a0) <= abs_acc for r, a in means.values()):
                flat.append(u)
    return flat


def compare_to_baseline(rows: Sequence[Dict], sigma: float, upsamplers: Sequence[str], baseline: str = "bilinear",
                        metrics: Sequence[str] = ("region_error", "boundary_acc")) -> Dict[str, Dict[str, Dict]]:
    """Paired differences to ``baseline`` at noise level ``sigma``: ``{metric: {upsampler: result}}``
    (:func:`sapa.lab.stats.paired_differences`, 95 % t intervals over the seeds, Holm over the
    upsamplers other than the baseline, per metric). ``rows``: one seed set with >= 2 seeds."""
    from .stats import paired_differences

    family = [u for u in upsamplers if u != baseline]
    at = [r for r in rows if float(r["sigma"]) == float(sigma)
          and (r["upsampler"] in family or r["upsampler"] == baseline)]
    if not at:
        raise ValueError(f"no rows at sigma={sigma} for {list(upsamplers)}")
    return {m: {r["setting"]: r for r in paired_differences(at, m, baseline=baseline, key="upsampler",
                                                            settings=family)}
            for m in metrics}


def smooth_and_sharp(rows: Sequence[Dict], upsamplers: Sequence[str], sigmas: Sequence[float],
                     baseline: str = "bilinear") -> Dict:
    """Which upsamplers are both smoother and sharper than ``baseline``, at each sigma.

    ``rows``: one seed set (:func:`select_complete`'s ``rows``). An upsampler is *both* at a
    sigma when its region error is lower **and** its boundary accuracy higher than the
    baseline's, each surviving Holm's correction (:func:`compare_to_baseline`).

    Returns dict ``seeds``, ``n``, ``family`` (upsamplers compared), ``both`` ({sigma: list}),
    ``always`` (both at every sigma), ``results`` ({sigma: compare_to_baseline(...)}). With
    fewer than 2 seeds, ``both``/``results`` are empty and ``always`` is None.
    """
    seeds = sorted({int(r["seed"]) for r in rows})
    family = [u for u in upsamplers if u != baseline]
    out = {"seeds": seeds, "n": len(seeds), "family": family, "both": {}, "results": {}, "always": None}
    if len(seeds) < 2:
        return out
    for s in sigmas:
        res = compare_to_baseline(rows, s, upsamplers, baseline)
        out["results"][float(s)] = res
        out["both"][float(s)] = [u for u in family
                                 if res["region_error"][u]["significant"] and res["region_error"][u]["mean"] < 0
                                 and res["boundary_acc"][u]["significant"] and res["boundary_acc"][u]["mean"] > 0]
    out["always"] = [u for u in family if all(u in b for b in out["both"].values())]
    return out


def smooth_sharp_text(summary: Dict, names: Optional[Dict[str, str]] = None, baseline: str = "bilinear") -> str:
    """The verdicts of :func:`smooth_and_sharp` as Markdown (a list per sigma), or, with fewer
    than 2 seeds, a sentence saying that the paired verdicts wait for a second complete seed."""
    names = names or {}
    n, fam = summary["n"], summary["family"]
    base = names.get(baseline, baseline)
    if n < 2:
        have = ("no seed is complete for the upsamplers" if n == 0 else
                f"the upsamplers shown share one complete seed (seed {summary['seeds'][0]})")
        return (f"So far {have}, and a paired interval needs two, so this verdict waits for the stored "
                f"fits; `{_command()}` adds them.")
    lines = [f"Both smooth and sharp, against {base}, at each noise level ({plural(n, 'seed')}, Holm over "
             f"{plural(len(fam), 'upsampler')} per score and level):", ""]
    for s, both in summary["both"].items():
        lines.append(f"* σ = {s:g}: " + join_names([names.get(u, u) for u in both]))
    lines += ["", "At every noise level: " + join_names([names.get(u, u) for u in summary["always"]]) + "."]
    return "\n".join(lines)


def describe(result: Dict, scale: float = 100.0, digits: int = 1, unit: str = "points") -> str:
    """A paired result (:func:`sapa.lab.stats.paired_differences`) as text, e.g.
    ``"+5.8 points (95 % CI +4.9 to +6.7, Holm p = 0.004)"`` (:func:`sapa.lab.stats.describe_difference`)."""
    return describe_difference(result, scale=scale, digits=digits, unit=unit, show_n=False)


def high_noise_verdict(rows: Sequence[Dict], upsamplers: Sequence[str], sigma: float, baseline: str = "bilinear",
                       names: Optional[Dict[str, str]] = None, ratio: float = 2.0) -> str:
    """Which upsamplers are *worse* than ``baseline`` at noise level ``sigma``, as Markdown.

    ``rows``: one seed set (:func:`select_complete`). With >= 2 seeds: the upsamplers whose region
    error is higher or boundary accuracy lower than the baseline's, surviving Holm's correction,
    each with its paired differences and 95 % intervals (percentage points). With one seed (no
    interval): the upsamplers whose region error is at least ``ratio`` times the baseline's and
    whose boundary accuracy is lower, with their values, worst first. With none: says so.
    """
    names = names or {}
    nm = lambda u: names.get(u, u)  # noqa: E731
    seeds = sorted({int(r["seed"]) for r in rows})
    at = f"At σ = {float(sigma):g}"
    if not seeds:
        return f"{at} no stored fit can be compared with {nm(baseline)} yet."
    if len(seeds) == 1:
        val = {m: {u: v[seeds[0]] for u, v in _values(rows, sigma, m).items()} for m in ("region_error", "boundary_acc")}
        if baseline not in val["region_error"]:
            return f"{at} {nm(baseline)} has no stored fit to compare with yet."
        r0, a0 = val["region_error"][baseline], val["boundary_acc"][baseline]
        worse = [u for u in upsamplers if u != baseline and u in val["region_error"]
                 and val["region_error"][u] >= ratio * r0 and val["boundary_acc"][u] < a0]
        worse.sort(key=lambda u: -val["region_error"][u])
        text = (f"{at}, on seed {seeds[0]}, the one seed shown so far (so no interval yet), {nm(baseline)} has a region "
                f"error of {format_value(100 * r0, 2)} % and a boundary accuracy of {format_value(100 * a0)} %. ")
        if not worse:
            return text + (f"No upsampler has at least {ratio:g} times its region error and a lower boundary "
                           "accuracy.")

        def times(u):
            q = val["region_error"][u] / r0
            return f"{q:.1f}" if q < 9.95 else f"{q:.0f}"

        parts = [f"{nm(u)} ({format_value(100 * val['region_error'][u], 2)} %, {times(u)} times as large; "
                 f"{format_value(100 * val['boundary_acc'][u])} %)" for u in worse]
        verb = "is" if len(worse) == 1 else "are"
        return text + (f"Far worse than {nm(baseline)} there, with at least {ratio:g} times its region error and a "
                       f"lower boundary accuracy, {verb}: " + join_names(parts) + ".")
    res = compare_to_baseline(rows, sigma, upsamplers, baseline)
    reg, acc = res["region_error"], res["boundary_acc"]
    worse = [u for u in reg if (reg[u]["significant"] and reg[u]["mean"] > 0)
             or (acc[u]["significant"] and acc[u]["mean"] < 0)]
    text = (f"{at}, over {plural(len(seeds), 'seed')} (paired differences to {nm(baseline)}, 95 % t intervals, "
            f"Holm over {plural(len(reg), 'upsampler')} per score), ")
    if not worse:
        return text + f"no upsampler is worse than {nm(baseline)} in either score."
    worse.sort(key=lambda u: -reg[u]["mean"])
    parts = []
    for u in worse:
        bits = []
        if reg[u]["significant"] and reg[u]["mean"] > 0:
            bits.append("region error " + describe(reg[u]))
        if acc[u]["significant"] and acc[u]["mean"] < 0:
            bits.append("boundary accuracy " + describe(acc[u]))
        parts.append(f"{nm(u)} ({'; '.join(bits)})")
    verb = "is" if len(worse) == 1 else "are"
    return text + f"worse than {nm(baseline)} {verb}: " + join_names(parts) + "."


def result_phrase(n_seeds: int, available: bool = True) -> str:
    """How the chapter refers to the stored result, true to its state: over ``n_seeds``
    complete seeds, one, none, or not there (``available`` False)."""
    if not isinstance(n_seeds, int) or n_seeds < 0:
        raise ValueError(f"n_seeds must be a non-negative int, got {n_seeds!r}")
    if not available:
        return "the stored result, once it is there"
    if n_seeds == 0:
        return "the stored result, once a seed is complete"
    if n_seeds == 1:
        return "the stored result above (one complete seed so far, so no interval yet)"
    return f"the stored result above, over {n_seeds} seeds"


def score_table(rows: Sequence[Dict], upsamplers: Sequence[str], sigmas: Sequence[float],
                names: Optional[Dict[str, str]] = None) -> Tuple[List[str], List[List[str]], str]:
    """``(header, body, caption)`` of the chapter's table: region error and boundary accuracy (both
    in %) at each of ``sigmas``, mean ± sd over the seeds of ``rows`` (one seed: its value)."""
    import statistics

    names = names or {}
    seeds = sorted({int(r["seed"]) for r in rows})
    header = ["upsampler"]
    for s in sigmas:
        header += [f"region err. σ={float(s):g}", f"bnd. acc. σ={float(s):g}"]
    body = []
    for u in upsamplers:
        cells = [names.get(u, u)]
        for s in sigmas:
            for m, d in (("region_error", 2), ("boundary_acc", 1)):
                v = [100 * float(r[m]) for r in rows if r["upsampler"] == u and float(r["sigma"]) == float(s)]
                if not v:
                    cells.append("–")
                elif len(v) == 1:
                    cells.append(format_value(v[0], d))
                else:
                    cells.append(f"{format_value(statistics.fmean(v), d)}\u00a0±\u00a0"
                                 f"{format_value(statistics.stdev(v), d)}")
        body.append(cells)
    what = ("mean ± sd over seeds " + join_names([str(s) for s in seeds])) if len(seeds) > 1 else \
        (f"seed {seeds[0]}" if seeds else "no seed")
    return header, body, f"{what}; region error and boundary accuracy in %"


def plot_stored(rows: Sequence[Dict], groups: Dict[str, Sequence[str]], names: Optional[Dict[str, str]] = None,
                baseline: str = "bilinear"):
    """The stored result against sigma, one row of panels per group of upsamplers (``groups``:
    {title: upsamplers}), two panels per row: region error (%, log scale) and boundary accuracy (%);
    ``baseline`` is drawn first (the same colour) in every row, each row has its legend below.
    ``rows``: one seed set (:func:`select_complete`). Returns the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from .plotting import BOOK_WIDTH, mechanism_plot

    if not groups:
        raise ValueError("groups must name at least one group of upsamplers")
    names = names or {}
    present = {r["upsampler"] for r in rows}
    fig, axes = plt.subplots(len(groups), 2, figsize=(BOOK_WIDTH, 3.2 * len(groups)), sharex=True,
                             layout="constrained", squeeze=False)
    for i, (title, ups) in enumerate(groups.items()):
        ups = [baseline] + [u for u in ups if u != baseline and u in present]
        mechanism_plot(rows, ups, "region_error", ax=axes[i, 0], names=names, log=True)
        mechanism_plot(rows, ups, "boundary_acc", ax=axes[i, 1], names=names)
        lo, hi = axes[i, 0].get_ylim()
        subs = (1.0, 2.0, 5.0)
        if sum(lo <= t <= hi for t in LogLocator(subs=subs).tick_values(lo, hi)) < 2:  # a narrow range
            subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
        axes[i, 0].yaxis.set_major_locator(LogLocator(subs=subs))
        axes[i, 0].yaxis.set_minor_formatter(NullFormatter())
        for ax in axes[i]:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}"))
        axes[i, 0].set_ylabel("region error (%, log)")
        axes[i, 1].set_ylabel("boundary accuracy (%)")
        axes[i, 0].set_title(f"{title}: region error")
        axes[i, 1].set_title(f"{title}: boundary accuracy")
        for ax in axes[i]:
            ax.set_xlabel("σ" if i == len(groups) - 1 else "")
            ax.tick_params(labelbottom=True)
        handles, labels = axes[i, 0].get_legend_handles_labels()
        axes[i, 1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                          handlelength=1.2, borderaxespad=0)
    return fig


def plot_kernel_study(study: Dict, upsamplers: Sequence[str], sigmas: Sequence[float], quantity: str,
                      names: Optional[Dict[str, str]] = None):
    """One quantity of :func:`kernel_study`'s maps, rows = upsamplers, columns = sigmas, one shared
    colour bar with its label. ``quantity``: ``"max_weight"`` (the kernel's largest weight, 0 to
    1) or ``"same_class_mass"`` (0 to 1). Returns the Figure."""
    import matplotlib.pyplot as plt

    from .plotting import BOOK_WIDTH, show_map

    labels = {"max_weight": "largest kernel weight", "same_class_mass": "same-class mass"}
    if quantity not in labels:
        raise ValueError(f"quantity must be one of {sorted(labels)}, got {quantity!r}")
    missing = [(u, s) for u in upsamplers for s in sigmas if (u, float(s)) not in study]
    if missing:
        raise ValueError(f"study has no maps for {missing}")
    names = names or {}
    fig, axes = plt.subplots(len(upsamplers), len(sigmas), figsize=(BOOK_WIDTH * 0.62, 2.0 * len(upsamplers) + 0.4),
                             layout="constrained", squeeze=False)
    im = None
    for i, u in enumerate(upsamplers):
        for j, s in enumerate(sigmas):
            km = study[(u, float(s))]
            m = km["kernels"].max(0).values if quantity == "max_weight" else km["same_class_mass"]
            im = show_map(axes[i, j], m, cmap="magma" if quantity == "max_weight" else "viridis", vmin=0, vmax=1,
                          colorbar=False)
            if i == 0:
                axes[i, j].set_title(f"σ = {float(s):g}")
        axes[i, 0].set_ylabel(names.get(u, u))
    fig.colorbar(im, ax=axes, shrink=0.6, label=labels[quantity])
    return fig


class _Box(torch.nn.Module):
    """A K x K box kernel (what averaging without looking does), for :func:`kernel_maps`."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def kernels(self, x):
        n, _, h, w = x.shape
        k = self.kernel_size
        return torch.full((n, k * k, 2 * h, 2 * w), 1.0 / k**2)


def kernel_mass_table(study: Dict, upsamplers: Sequence[str], sigmas: Sequence[float], problem: Dict[str, torch.Tensor],
                      index: int = 0, names: Optional[Dict[str, str]] = None) -> Dict:
    """The same-class mass of :func:`kernel_study`'s kernels on the boundary pixels of test
    image ``index`` of ``problem`` (the study's test set), next to a box kernel of the same
    size that looks at nothing.

    Returns dict ``mass`` ({(upsampler, sigma): mean mass on boundary pixels}), ``box``, ``header``,
    ``body`` (table cells: the mass and the boundary accuracy in % at each sigma), ``best`` (the
    upsamplers within 0.01 of the largest mass at the first sigma) and ``change``
    ({upsampler: "falls from a to b" / "rises ..." / "stays at a"} from the first sigma to the last).
    """
    names = names or {}
    sig = [float(s) for s in sigmas]
    missing = [(u, s) for u in upsamplers for s in sig if (u, s) not in study]
    if missing or not upsamplers or not sig:
        raise ValueError(f"study must have maps for every (upsampler, sigma); missing {missing}")
    edge = ~_interior(problem["labels"][index: index + 1])[0]
    K = study[(upsamplers[0], sig[0])]["kernel_size"]
    box = float(kernel_maps(_Box(K), problem, index)["same_class_mass"][edge].mean())
    mass, body = {}, []
    for u in upsamplers:
        cells = [names.get(u, u)]
        for s in sig:
            km = study[(u, s)]
            mass[(u, s)] = float(km["same_class_mass"][edge].mean())
            cells += [f"{mass[(u, s)]:.2f}", format_value(100 * km["scores"]["boundary_acc"])]
        body.append(cells)
    body.append([f"{K} x {K} box (reference)"] + [f"{box:.2f}", "–"] * len(sig))
    header = ["kernel"]
    for s in sig:
        header += [f"mass σ={s:g}", f"bnd. acc. σ={s:g}"]
    top = max(mass[(u, sig[0])] for u in upsamplers)
    best = [u for u in upsamplers if mass[(u, sig[0])] > top - 0.01]

    def change(u):
        a, b = mass[(u, sig[0])], mass[(u, sig[-1])]
        if abs(a - b) < 0.005:
            return f"stays at {a:.2f}"
        return f"{'falls' if b < a else 'rises'} from {a:.2f} to {b:.2f}"

    return {"mass": mass, "box": box, "header": header, "body": body, "best": best,
            "change": {u: change(u) for u in upsamplers}, "kernel_size": K}
