"""Benchmark the SAPA backends: ``python -m sapa.bench [--sizes 16 32 64] [--json]``.

Default sizes are those of a SegFormer-B1 head: B=2, C=256, d=32, K=5, x2 from 16x16, 32x32
and 64x64. For every backend and size it measures the forward pass and the forward+backward
pass: the median time of several runs after a warm-up, and the peak memory.

* CPU: each case runs in a fresh subprocess; peak memory is the growth of the process's peak
  resident set (VmHWM) over its resident set just before the timed calls.
* CUDA: CUDA events (median of many runs after warm-up), ``torch.cuda.max_memory_allocated``
  above the inputs, and achieved GB/s against the bytes-moved model of ``sapa.traffic``
  (each input read once, the output written once).

``F.interpolate(mode="bilinear")`` is timed as a floor for comparison. Ratios are relative
to the ``reference`` backend of the same size and pass.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from .backends import available_backends
from .functional import sapa_upsample

__all__ = ["run_case", "run", "format_table", "main"]


def _inputs(B, C, d, H, scale, dtype, device, requires_grad):
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype).requires_grad_(requires_grad)
    return mk(B, d, scale * H, scale * H), mk(B, d, H, H), mk(B, C, H, H)


def _step(method, q, k, v, K, backward):
    if method == "bilinear":
        out = F.interpolate(v, size=q.shape[-2:], mode="bilinear", align_corners=False)
    else:
        out = sapa_upsample(q, k, v, K, backend=method)
    if backward:
        out.backward(torch.ones_like(out))
    return out


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_case(method: str, B: int, C: int, d: int, H: int, scale: int, K: int, dtype: str,
             device: str, backward: bool, min_time: float = 1.0, max_runs: int = 50) -> Dict:
    """Time one (method, size, pass) in this process; returns a dict with seconds and peak bytes."""
    dt = getattr(torch, dtype)
    q, k, v = _inputs(B, C, d, H, scale, dt, device, backward)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    _step(method, q, k, v, K, backward)  # warm-up (and Triton compilation)
    for t in (q, k, v):
        t.grad = None
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:  # reset the peak resident set so VmHWM measures this case only
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        base = _rss_kib("VmRSS")
    times: List[float] = []
    t_start = time.perf_counter()
    while len(times) < max_runs and (len(times) < 3 or time.perf_counter() - t_start < min_time):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _step(method, q, k, v, K, backward)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            _step(method, q, k, v, K, backward)
            times.append(time.perf_counter() - t0)
        for t in (q, k, v):
            t.grad = None
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = max(0, _rss_kib("VmHWM") - base) * 1024
    result = dict(method=method, B=B, C=C, d=d, H=H, scale=scale, K=K, dtype=dtype, device=device,
                  backward=backward, seconds=statistics.median(times), runs=len(times), peak_bytes=peak)
    if cuda and method != "bilinear":
        try:
            from .traffic import bytes_moved

            nbytes = bytes_moved(B, C, d, K, scale, H, H, torch.tensor([], dtype=dt).element_size(), "fused")
            if backward:  # backward reads q, k, v, grad_out and writes three gradients
                nbytes *= 3
            result["gbps"] = nbytes / result["seconds"] / 1e9
        except ImportError:
            pass
    return result


def _case_in_subprocess(**case) -> Dict:
    cmd = [sys.executable, "-m", "sapa.bench", "--_case", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case {case} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(methods=None, sizes=(16, 32, 64), B=2, C=256, d=32, K=5, scale=2, dtype="float32",
        device=None, passes=("forward", "forward+backward"), progress=True, min_time: float = 1.0,
        max_runs: int = 50) -> List[Dict]:
    """Run every (method, size, pass) case; returns a list of result dicts.

    Each case is timed for at least 3 runs and ``min_time`` seconds (at most ``max_runs`` runs).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if methods is None:
        methods = [m for m in available_backends() if m != "triton" or device.startswith("cuda")]
        methods.append("bilinear")
    cases = [(m, H, p) for H in sizes for p in passes for m in methods]
    it = cases
    if progress:
        try:
            from tqdm.auto import tqdm

            it = tqdm(cases, desc="bench")
        except ImportError:  # pragma: no cover
            pass
    results = []
    for m, H, p in it:
        case = dict(method=m, B=B, C=C, d=d, H=H, scale=scale, K=K, dtype=dtype, device=device,
                    backward=(p != "forward"), min_time=min_time, max_runs=max_runs)
        results.append(_case_in_subprocess(**case) if device == "cpu" else run_case(**case))
    for r in results:
        ref = next((x for x in results if x["method"] == "reference" and x["H"] == r["H"]
                    and x["backward"] == r["backward"]), None)
        if ref is not None:
            r["time_ratio"] = r["seconds"] / ref["seconds"]
            r["memory_ratio"] = r["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] else float("nan")
    return results


def format_table(results: List[Dict]) -> str:
    """Markdown table of :func:`run` results (ratios are method / reference)."""
    has_gbps = any("gbps" in r for r in results)
    head = "| size | pass | method | time (ms) | x reference | peak mem (MiB) | x reference |"
    sep = "|---|---|---|---:|---:|---:|---:|"
    if has_gbps:
        head += " GB/s |"
        sep += "---:|"
    lines = [head, sep]
    for r in results:
        size = f"{r['H']}->{r['H'] * r['scale']}"
        pas = "fwd+bwd" if r["backward"] else "fwd"
        row = (f"| {size} | {pas} | {r['method']} | {1e3 * r['seconds']:.1f} | {r.get('time_ratio', float('nan')):.3f} "
               f"| {r['peak_bytes'] / 2**20:.1f} | {r.get('memory_ratio', float('nan')):.3f} |")
        if has_gbps:
            row += f" {r['gbps']:.0f} |" if "gbps" in r else " |"
        lines.append(row)
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sapa.bench", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="low-res H = W")
    p.add_argument("--methods", nargs="+", default=None, help="backends (and 'bilinear'); default all")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.add_argument("--_case", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._case:
        print(json.dumps(run_case(**json.loads(a._case))))
        return
    results = run(a.methods, a.sizes, a.batch, a.channels, a.dim, a.kernel_size, a.scale, a.dtype, a.device,
                  progress=not a.json)
    if a.json:
        print(json.dumps(results, indent=1))
    else:
        dev = results[0]["device"] if results else "?"
        print(f"# sapa.bench: B={a.batch} C={a.channels} d={a.dim} K={a.kernel_size} x{a.scale} "
              f"{a.dtype} on {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(format_table(results))


if __name__ == "__main__":
    main()
