"""Time training steps of the book's model, per upsampler: ``python -m sapa.lab.steps``.

The model, batch and optimiser are those of the stored runs (:data:`sapa.lab.sweep.STORED_TASK`:
SegFormer-like head, widths 8/16, 3 stages, batch 8, 64 x 64 images, AdamW); the upsamplers'
steps are interleaved, so the ratios (to bilinear, to SAPA-B) are the numbers to read on a busy
machine. ::

    python -m sapa.lab.steps                                   # every upsampler of the main comparison
    python -m sapa.lab.steps --upsamplers bilinear sapa-b sapa-d --repeats 7 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["STEP_TASK_KEYS", "model_steps", "format_steps", "main"]


#: the training step of :func:`model_steps`: the book's stored task (sapa.lab.sweep.STORED_TASK)
STEP_TASK_KEYS = ("head", "size", "stages", "width", "decoder_width", "batch_size", "lr")


def model_steps(upsamplers: Optional[Sequence[str]] = None, repeats: int = 5, threads: int = 1,
                task: Optional[Dict] = None, num_classes: Optional[int] = None, seed: int = 0,
                progress: bool = False) -> List[Dict]:
    """Time one training step of the book's model for each upsampler, interleaved.

    The model, batch and optimiser are those of the stored runs (``sapa.lab.sweep.STORED_TASK``:
    SegFormer-like head, widths 8/16, 3 stages, batch 8, 64 x 64 images, AdamW) unless ``task``
    overrides keys of :data:`STEP_TASK_KEYS`; the batch is a fixed random image and label map
    (``num_classes``: the textures data set's 6 by default), so data generation is not timed.
    A step is zero_grad, forward, cross-entropy, backward and ``opt.step()``, on ``threads``
    intra-op threads. After one untimed warm-up step per model, ``repeats`` rounds time one
    step of every model each, the order rotating from round to round.

    Returns one dict per upsampler (the order given; default ``sapa.lab.sweep.MAIN_UPSAMPLERS``)
    with ``upsampler``, ``seconds`` (median), ``min_seconds``, ``max_seconds``, ``runs``,
    ``vs_bilinear`` and ``vs_sapa_b`` (median / that upsampler's median, None when it was not
    timed) and ``task``.
    """
    from .data import TEXTURE_CLASSES
    from .models import Segmenter, available_segmenter_upsamplers
    from .sweep import MAIN_UPSAMPLERS, STORED_TASK

    names = list(upsamplers) if upsamplers else list(MAIN_UPSAMPLERS)
    known = available_segmenter_upsamplers()
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown upsampler(s) {bad}; available: {', '.join(known)}")
    unknown = sorted(set(task or {}) - set(STEP_TASK_KEYS))
    if unknown:
        raise ValueError(f"task keys {unknown} are not timed here; expected some of {STEP_TASK_KEYS}")
    if repeats < 1 or threads < 1:
        raise ValueError(f"repeats and threads must be positive, got {repeats} and {threads}")
    t = {k: STORED_TASK[k] for k in STEP_TASK_KEYS}
    t.update(task or {})
    k = num_classes or len(TEXTURE_CLASSES)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(seed)
        image = torch.randn(t["batch_size"], 3, t["size"], t["size"], generator=g)
        target = torch.randint(0, k, (t["batch_size"], t["size"], t["size"]), generator=g)
        models = {}
        for name in names:
            torch.manual_seed(seed)
            model = Segmenter(k, name, width=t["width"], stages=t["stages"], decoder_width=t["decoder_width"],
                              head=t["head"])
            models[name] = (model, torch.optim.AdamW(model.parameters(), lr=t["lr"]))

        def step(name):
            model, opt = models[name]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(image), target).backward()
            opt.step()
            return time.perf_counter() - t0

        for name in names:
            step(name)
        times: Dict[str, List[float]] = {n: [] for n in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(step(name))
            if progress:
                print(f"round {r + 1}/{repeats}", file=sys.stderr)
    finally:
        torch.set_num_threads(old_threads)
    med = {n: statistics.median(v) for n, v in times.items()}
    return [dict(upsampler=n, seconds=med[n], min_seconds=min(times[n]), max_seconds=max(times[n]),
                 runs=len(times[n]), vs_bilinear=med[n] / med["bilinear"] if "bilinear" in med else None,
                 vs_sapa_b=med[n] / med["sapa-b"] if "sapa-b" in med else None, task=t)
            for n in names]


def format_steps(results: List[Dict]) -> str:
    """A table of :func:`model_steps`: ms (median, min, max) and the two ratios."""
    lines = [f"{'upsampler':14s} {'step ms':>9s} {'min':>8s} {'max':>8s} {'x bilinear':>11s} {'x sapa-b':>9s}"]
    for r in results:
        ratio = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        lines.append(f"{r['upsampler']:14s} {r['seconds'] * 1e3:9.1f} {r['min_seconds'] * 1e3:8.1f} "
                     f"{r['max_seconds'] * 1e3:8.1f} {ratio(r['vs_bilinear']):>11s} {ratio(r['vs_sapa_b']):>9s}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sapa.lab.steps",
                                description="Time training steps of the book's model per upsampler (interleaved).")
    p.add_argument("--upsamplers", nargs="+", default=None, help="upsamplers to time (default: the main comparison's)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, as the stored runs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--step-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--step-batch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--step-width", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--step-decoder-width", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    task = {k: v for k, v in (("size", a.step_size), ("batch_size", a.step_batch), ("width", a.step_width),
                          ("decoder_width", a.step_decoder_width)) if v is not None}
    try:
        res = model_steps(a.upsamplers, repeats=a.repeats, threads=a.threads, task=task, progress=not a.json)
    except ValueError as exc:
        sys.exit(f"python -m sapa.lab.steps: error: {exc}")
    if a.json:
        print(json.dumps(res, indent=1))
        return
    t = res[0]["task"]
    print(f"# python -m sapa.lab.steps: training step of the book's model ({t['head']} head, widths "
          f"{t['width']}/{t['decoder_width']}, {t['stages']} stages, batch {t['batch_size']}, "
          f"{t['size']}x{t['size']}), {a.threads} thread{'s' if a.threads != 1 else ''}, torch {torch.__version__}, {a.repeats} "
          f"interleaved rounds; on a busy machine read the ratios")
    print(format_steps(res))


if __name__ == "__main__":
    main()
