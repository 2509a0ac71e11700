"""Benchmark the SAPA backends: ``python -m sapa.bench [--sizes 16 32 64] [--threads 1 2] [--json]``.

Training steps of the book's model per upsampler are timed by the book's lab:
``python -m sapa.lab.steps``. ``--onnx``: the exported operator in ONNX Runtime against eager
(export time, node count, time and memory ratios; :mod:`sapa.bench_onnx`).

Default sizes are those of a SegFormer-B1 head: B=2, C=256, d=32, K=5, x2 from 16x16, 32x32
and 64x64. For every size, pass (forward; forward+backward) and thread count it times each
method several times, *interleaved* (one call of each method per round, the order rotating
from round to round, all in one process), and reports the minimum, median and maximum; then
it measures each case's peak memory once.

Methods: the backends of :func:`sapa.sapa_upsample` (``"torch"``, ``"cpp"``, ``"triton"``,
``"reference"``), ``"bilinear"`` (``F.interpolate``, a floor for comparison) and
``"materialised"``, the baseline: the formulation a competent user writes without this
package (unfold K and V at low resolution, one einsum for the logits over the s x s phases,
softmax, one einsum to assemble; integer scales, softmax, zero padding). Ratios are against
the baseline of the same size, pass and thread count: ``speedup`` = baseline time / time
(medians), ``memory_ratio`` = peak / baseline peak.

* CPU: peak memory is the peak of torch's CPU allocator during one call above what was
  allocated before it (the profiler's memory events: every allocation, kernels' scratch
  included; exact and repeatable), measured in a fresh subprocess per case.
* CUDA: CUDA events, ``torch.cuda.max_memory_allocated`` above the inputs, and achieved GB/s
  against the bytes-moved model of ``sapa.traffic``.

A result is flagged when its timings cannot carry the ratio: ``fwd+bwd<fwd`` (the median of
forward+backward below that of the forward alone: the machine was busier during one of them)
and ``spread`` (the ratio computed from the extremes of the two timings varies by more than
2x, i.e. (max/min of the method) x (max/min of the baseline) > 2). On a shared machine, read
medians and rerun flagged rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .backends import available_backends
from ._peak import allocator_peak as _allocator_peak
from .functional import sapa_upsample

__all__ = ["materialised", "run_case", "run", "format_table", "machine_floor", "floor_seconds", "main", "BASELINE",
           "SPREAD_LIMIT"]

#: the baseline method of the ratios
BASELINE = "materialised"
#: a ratio is flagged when (max/min of the method) * (max/min of the baseline) exceeds this
SPREAD_LIMIT = 2.0
_EXTRA = ("materialised", "bilinear")


def materialised(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """SAPA (softmax, zero padding) as a user writes it with unfold and einsum; the bench's baseline.

    query (B, d, s*H, t*W), key (B, d, H, W), value (B, C, H, W) -> (B, C, s*H, t*W); integer
    scales s, t only. Materialises the unfolded key (B, d, K*K, H, W) and value
    (B, C, K*K, H, W) and the (B, K*K, H, s, W, t) logits and weights.
    """
    B, d, Hq, Wq = query.shape
    C, H, W = value.shape[1:]
    if Hq % H or Wq % W:
        raise ValueError(f"the materialised baseline needs integer scales, got {(H, W)} -> {(Hq, Wq)}")
    s, t = Hq // H, Wq // W
    K, R = kernel_size, kernel_size // 2
    k_unf = F.unfold(key, K, padding=R).view(B, d, K * K, H, W)
    v_unf = F.unfold(value, K, padding=R).view(B, C, K * K, H, W)
    q_ph = query.view(B, d, H, s, W, t)
    logits = torch.einsum("bdhswt,bdkhw->bkhswt", q_ph, k_unf)
    weights = logits.softmax(dim=1)
    out = torch.einsum("bkhswt,bckhw->bchswt", weights, v_unf)
    return out.reshape(B, C, Hq, Wq)


def _inputs(B, C, d, H, scale, dtype, device, requires_grad):
    g = torch.Generator(device="cpu").manual_seed(0)

    def mk(*s):
        return torch.randn(*s, generator=g).to(device=device, dtype=dtype).requires_grad_(requires_grad)

    q, k, v = mk(B, d, scale * H, scale * H), mk(B, d, H, H), mk(B, C, H, H)
    grad = torch.randn(B, C, scale * H, scale * H, generator=g).to(device=device, dtype=dtype)
    return q, k, v, grad


def _step(method, q, k, v, K, grad):
    if method == "bilinear":
        out = F.interpolate(v, size=q.shape[-2:], mode="bilinear", align_corners=False)
    elif method == "materialised":
        out = materialised(q, k, v, K)
    else:
        out = sapa_upsample(q, k, v, K, backend=method)
    if grad is not None:
        out.backward(grad)
        for t in (q, k, v):
            t.grad = None
    return out


def _peak_bytes(method, q, k, v, K, grad, cuda: bool) -> int:
    """Peak memory of one call above what is allocated before it (after a warm-up call): CUDA's
    peak allocation on a GPU, the CPU allocator's peak (profiler memory events) on a CPU."""
    _step(method, q, k, v, K, grad)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(method, q, k, v, K, grad)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _allocator_peak(lambda: _step(method, q, k, v, K, grad))


def run_case(method: str, B: int, C: int, d: int, H: int, scale: int, K: int, dtype: str, device: str,
             backward: bool, threads: Optional[int] = None, min_time: float = 0.0, max_runs: int = 5) -> Dict:
    """Time one (method, size, pass) alone in this process; returns seconds (median) and peak bytes.

    At least 3 runs and ``min_time`` seconds (at most ``max_runs`` runs) after a warm-up call.
    """
    if threads:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    q, k, v, grad = _inputs(B, C, d, H, scale, getattr(torch, dtype), device, backward)
    grad = grad if backward else None
    peak = _peak_bytes(method, q, k, v, K, grad, cuda)
    times = _time_round_robin([method], q, k, v, K, grad, cuda, repeats=max(3, max_runs), min_time=min_time)[method]
    return dict(method=method, B=B, C=C, d=d, H=H, scale=scale, K=K, dtype=dtype, device=device, backward=backward,
                threads=torch.get_num_threads(), seconds=statistics.median(times), min_seconds=min(times),
                max_seconds=max(times), runs=len(times), peak_bytes=peak)


def _time_round_robin(methods: Sequence[str], q, k, v, K, grad, cuda: bool, repeats: int,
                      min_time: float = 0.0) -> Dict[str, List[float]]:
    """Interleaved timings: each round calls every method once, the order rotating by one."""
    times: Dict[str, List[float]] = {m: [] for m in methods}
    for m in methods:  # warm-up (and compilation)
        _step(m, q, k, v, K, grad)
    if cuda:
        torch.cuda.synchronize()
    t_start, r = time.perf_counter(), 0
    while r < repeats or time.perf_counter() - t_start < min_time:
        order = list(methods[r % len(methods):]) + list(methods[: r % len(methods)])
        for m in order:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                _step(m, q, k, v, K, grad)
                end.record()
                torch.cuda.synchronize()
                times[m].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                _step(m, q, k, v, K, grad)
                times[m].append(time.perf_counter() - t0)
        r += 1
        if r >= 1000:
            break
    return times


def _peak_in_subprocess(**case) -> int:
    cmd = [sys.executable, "-m", "sapa.bench", "--_peak", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case {case} failed:\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1]))


def _peak_case(method, B, C, d, H, scale, K, dtype, device, backward, threads) -> int:
    torch.set_num_threads(threads)
    q, k, v, grad = _inputs(B, C, d, H, scale, getattr(torch, dtype), device, backward)
    return _peak_bytes(method, q, k, v, K, grad if backward else None, device.startswith("cuda"))


def check_methods(methods: Sequence[str], device: str) -> List[str]:
    """The methods, validated for ``device``; raises ValueError with one clear line otherwise."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here (torch {torch.__version__})")
    if not device.startswith(("cpu", "cuda")):
        raise ValueError(f"--device {device}: expected cpu or cuda")
    known = set(available_backends()) | set(_EXTRA)
    out = []
    for m in methods:
        if m == "triton" and "triton" not in known:
            raise ValueError("--methods triton: the triton package is not installed (pip install triton)")
        if m not in known:
            raise ValueError(f"--methods {m}: unknown; expected some of {sorted(known)}")
        if m == "triton" and not device.startswith("cuda"):
            raise ValueError("--methods triton: the Triton backend needs --device cuda")
        if m == "cpp" and device != "cpu":
            raise ValueError("--methods cpp: the C++ backend runs on --device cpu only")
        if m not in out:
            out.append(m)
    return out


def machine_floor(threads: int = 1, repeats: int = 5, matmul_n: int = 1024, copy_mib: int = 64) -> Dict:
    """This CPU's floor on ``threads`` intra-op threads, measured now: float32 matmul FLOP/s
    (a ``matmul_n`` square ``torch.mm``, 2 n^3 FLOPs) and copy bandwidth (``copy_`` of a
    ``copy_mib`` MiB float32 tensor: its bytes read plus written), the best of ``repeats``.

    Returns dict with ``flops`` (FLOP/s), ``bandwidth`` (bytes/s) and ``threads``.
    """
    if threads < 1 or repeats < 1:
        raise ValueError(f"threads and repeats must be positive, got {threads} and {repeats}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(matmul_n, matmul_n, generator=g)
        b = torch.randn(matmul_n, matmul_n, generator=g)
        src = torch.randn(copy_mib * 2**18, generator=g)
        dst = torch.empty_like(src)
        torch.mm(a, b)
        dst.copy_(src)
        mm, cp = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            mm.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            dst.copy_(src)
            cp.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return dict(flops=2 * matmul_n ** 3 / min(mm), bandwidth=2 * src.numel() * 4 / min(cp), threads=threads)


def floor_seconds(r: Dict, floor: Dict) -> float:
    """The least time the operator of result ``r`` can take on a machine with ``floor``
    (:func:`machine_floor`): the larger of its FLOPs at the matmul rate and its bytes (the
    fused scheme of :mod:`sapa.traffic`: inputs read once, output written once) at the copy
    bandwidth. FLOPs: forward ``2 N K^2 (d + C)`` (similarities and weighted sum over the
    N = B H' W' output pixels); the backward twice that (the gradients of the weights, value,
    query and key)."""
    from .traffic import backward_bytes, bytes_moved

    size = torch.tensor([], dtype=getattr(torch, r["dtype"])).element_size()
    Hq = int(round(r["scale"] * r["H"]))
    n_out = r["B"] * Hq * Hq
    macs = n_out * r["K"] ** 2 * (r["d"] + r["C"])
    shape = (r["B"], r["C"], r["d"], r["K"], r["scale"], r["H"], r["H"], size)
    nbytes = bytes_moved(*shape, "fused")
    if r["backward"]:
        macs *= 3
        nbytes += backward_bytes(*shape)
    return max(2 * macs / floor["flops"], nbytes / floor["bandwidth"])


def default_methods(device: str) -> List[str]:
    """Baseline, every backend usable on ``device`` except the slow ``"reference"``, bilinear."""
    names = available_backends()
    out = [BASELINE, "torch"]
    if device == "cpu" and "cpp" in names:
        from .backends import cpp

        if cpp.available(torch.empty(0)):
            out.append("cpp")
    if device.startswith("cuda") and "triton" in names:
        out.append("triton")
    return out + ["bilinear"]


def run(methods=None, sizes=(16, 32, 64), B=2, C=256, d=32, K=5, scale=2, dtype="float32", device=None,
        passes=("forward", "forward+backward"), progress=True, threads: Sequence[int] = (1,), repeats: int = 7,
        min_time: float = 0.0, measure_memory: bool = True, max_runs: Optional[int] = None,
        floor: bool = True) -> List[Dict]:
    """Run every (threads, size, pass) group, methods interleaved; returns a list of result dicts.

    ``methods`` defaults to :func:`default_methods`; the baseline ``"materialised"`` is always
    added (first). ``repeats`` rounds per group (and at least ``min_time`` seconds). Each result
    has ``seconds`` (median), ``min_seconds``, ``max_seconds``, ``runs``, ``peak_bytes``
    and, against the baseline, ``speedup``, ``time_ratio`` (its inverse), ``memory_ratio`` and
    ``flags`` (a list, empty when the numbers can carry the ratio). On a CPU with ``floor``,
    the machine's floor is measured in the same run for each thread count (:func:`machine_floor`)
    and every operator result gets ``floor_seconds`` (:func:`floor_seconds`) and ``x_floor``
    (its median time as a multiple of that).
    """
    if max_runs is not None:  # older keyword
        repeats = max_runs
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    methods = check_methods(list(methods) if methods else default_methods(device), device)
    if BASELINE not in methods:
        methods.insert(0, BASELINE)
    if isinstance(threads, int):
        threads = (threads,)
    cuda = device.startswith("cuda")
    groups = [(n, H, p) for n in threads for H in sizes for p in passes]
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(groups) * len(methods) * (2 if measure_memory else 1), desc="bench")
        except ImportError:  # pragma: no cover
            pass
    results: List[Dict] = []
    floors: Dict[int, Dict] = {}
    n_before = torch.get_num_threads()
    try:
        for n, H, p in groups:
            if floor and not cuda and n not in floors:
                floors[n] = machine_floor(n)
            torch.set_num_threads(n)
            backward = p != "forward"
            q, k, v, grad = _inputs(B, C, d, H, scale, getattr(torch, dtype), device, backward)
            times = _time_round_robin(methods, q, k, v, K, grad if backward else None, cuda, repeats, min_time)
            del q, k, v, grad
            if bar is not None:
                bar.update(len(methods))
            for m in methods:
                case = dict(method=m, B=B, C=C, d=d, H=H, scale=scale, K=K, dtype=dtype, device=device,
                            backward=backward, threads=n)
                peak = -1
                if measure_memory:
                    peak = _peak_in_subprocess(**case) if not cuda else _peak_case(**case)
                    if bar is not None:
                        bar.update(1)
                ts = times[m]
                res = dict(case, seconds=statistics.median(ts), min_seconds=min(ts), max_seconds=max(ts),
                           runs=len(ts), peak_bytes=peak)
                if n in floors and m != "bilinear":
                    res["floor_seconds"] = floor_seconds(res, floors[n])
                    res["x_floor"] = res["seconds"] / res["floor_seconds"]
                    res["floor"] = floors[n]
                results.append(res)
    finally:
        torch.set_num_threads(n_before)
        if bar is not None:
            bar.close()
    _add_ratios(results)
    if cuda:
        _add_gbps(results)
    return results


def _same(r, x) -> bool:
    return all(r[f] == x[f] for f in ("H", "backward", "threads", "device"))


def _add_ratios(results: List[Dict]) -> None:
    for r in results:
        flags = []
        base = next((x for x in results if x["method"] == BASELINE and _same(r, x)), None)
        if base is not None:
            r["speedup"] = base["seconds"] / r["seconds"]
            r["time_ratio"] = r["seconds"] / base["seconds"]
            r["memory_ratio"] = (r["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] > 0 and r["peak_bytes"] >= 0
                                 else float("nan"))
            spread = (r["max_seconds"] / r["min_seconds"]) * (base["max_seconds"] / base["min_seconds"])
            if r is not base and spread > SPREAD_LIMIT:
                flags.append("spread")
        if r["backward"]:
            fwd = next((x for x in results if x["method"] == r["method"] and not x["backward"]
                        and all(r[f] == x[f] for f in ("H", "threads", "device"))), None)
            if fwd is not None and r["seconds"] < fwd["seconds"]:
                flags.append("fwd+bwd<fwd")
        r["flags"] = flags


def _add_gbps(results: List[Dict]) -> None:
    """Add ``gbps``: the fused scheme's modelled bytes (``sapa.traffic``: forward, plus the
    fused backward's for forward+backward rows) per second, to every fused-backend result."""
    try:
        from .traffic import backward_bytes, bytes_moved
    except ImportError:  # pragma: no cover
        return
    for r in results:
        if r["method"] in ("bilinear", BASELINE):
            continue
        size = torch.tensor([], dtype=getattr(torch, r["dtype"])).element_size()
        shape = (r["B"], r["C"], r["d"], r["K"], r["scale"], r["H"], r["H"], size)
        nbytes = bytes_moved(*shape, "fused")
        if r["backward"]:  # plus the fused backward's modelled bytes (every gradient)
            nbytes += backward_bytes(*shape)
        r["gbps"] = nbytes / r["seconds"] / 1e9


def format_table(results: List[Dict]) -> str:
    """Markdown table of :func:`run` results (speed-up and memory against the materialised baseline)."""
    has_gbps = any("gbps" in r for r in results)
    has_floor = any("x_floor" in r for r in results)
    head = ("| size | pass | threads | method | median (ms) | min | max | speed-up vs materialised "
            "| peak mem (MiB) | x materialised | flags |")
    sep = "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"
    if has_gbps:
        head += " GB/s |"
        sep += "---:|"
    if has_floor:
        head += " x floor |"
        sep += "---:|"
    lines = [head, sep]
    nan = float("nan")
    for r in results:
        size = f"{r['H']}->{r['H'] * r['scale']}"
        pas = "fwd+bwd" if r["backward"] else "fwd"
        peak = f"{r['peak_bytes'] / 2**20:.1f}" if r.get("peak_bytes", -1) >= 0 else "-"
        row = (f"| {size} | {pas} | {r.get('threads', '')} | {r['method']} | {1e3 * r['seconds']:.1f} "
               f"| {1e3 * r.get('min_seconds', nan):.1f} | {1e3 * r.get('max_seconds', nan):.1f} "
               f"| {r.get('speedup', nan):.2f} | {peak} | {r.get('memory_ratio', nan):.3f} "
               f"| {' '.join(r.get('flags', []))} |")
        if has_gbps:
            row += f" {r['gbps']:.0f} |" if "gbps" in r else " |"
        if has_floor:
            row += f" {r['x_floor']:.2f} |" if "x_floor" in r else " |"
        lines.append(row)
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sapa.bench", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="low-res H = W")
    p.add_argument("--methods", nargs="+", default=None,
                   help="backends, 'bilinear', 'materialised' (the baseline, always included); default: "
                        "materialised, torch, cpp (CPU) or triton (CUDA), bilinear")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="intra-op thread counts to run (default 1)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds per size and pass (default 7)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--no-floor", action="store_true", help="skip the CPU floor (matmul FLOP/s, copy bandwidth)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.add_argument("--onnx", action="store_true",
                   help="export the operator (TorchScript and dynamo exporters) and time it in ONNX Runtime "
                        "against eager at the largest --sizes (needs onnx, onnxruntime, onnxscript)")
    p.add_argument("--_peak", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._peak:
        print(json.dumps(_peak_case(**json.loads(a._peak))))
        return
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        for name, val in (("--threads", a.threads), ("--sizes", a.sizes)):
            if min(val) < 1:
                raise ValueError(f"{name} must be positive, got {val}")
        if a.repeats < 1:
            raise ValueError(f"--repeats must be positive, got {a.repeats}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here (torch {torch.__version__})")
        methods = check_methods(a.methods or default_methods(device), device)
        if a.onnx:
            if device != "cpu":
                raise ValueError(f"--onnx measures ONNX Runtime's CPU provider: use --device cpu, not {device}")
            from .bench_onnx import format_onnx_table, run_onnx

            results = run_onnx(a.batch, a.channels, a.dim, max(a.sizes), a.scale, a.kernel_size, a.threads,
                               a.repeats, measure_memory=not a.no_memory, progress=not a.json)
    except ValueError as exc:
        sys.exit(f"sapa.bench: error: {exc}")
    if a.onnx:
        if a.json:
            print(json.dumps(results, indent=1))
        else:
            print(f"# sapa.bench --onnx: B={a.batch} C={a.channels} d={a.dim} K={a.kernel_size} "
                  f"{max(a.sizes)}->{max(a.sizes) * a.scale}, torch {torch.__version__}, {a.repeats} interleaved "
                  f"rounds; times in ms (median, min-max); memory: the graph's live tensors at their peak "
                  f"against eager's allocator peak")
            print(format_onnx_table(results))
        return
    results = run(methods, a.sizes, a.batch, a.channels, a.dim, a.kernel_size, a.scale, a.dtype, device,
                  progress=not a.json, threads=a.threads, repeats=a.repeats, measure_memory=not a.no_memory,
                  floor=not a.no_floor)
    if a.json:
        print(json.dumps(results, indent=1))
        return
    print(f"# sapa.bench: B={a.batch} C={a.channels} d={a.dim} K={a.kernel_size} x{a.scale} {a.dtype} on {device}, "
          f"torch {torch.__version__}, {a.repeats} interleaved rounds; times in ms (median, min, max)")
    print(format_table(results))
    floors = {r["threads"]: r["floor"] for r in results if "floor" in r}
    for n, f in sorted(floors.items()):
        print(f"floor on {n} thread{'s' if n != 1 else ''}: matmul {f['flops'] / 1e9:.1f} GFLOP/s, copy "
              f"{f['bandwidth'] / 1e9:.1f} GB/s (x floor = median time / max(FLOPs / matmul rate, fused bytes / "
              f"copy bandwidth))")
    if len(floors) > 1:
        lo, hi = min(floors), max(floors)
        for r in results:
            if r["threads"] == lo and r["method"] not in (BASELINE, "bilinear"):
                other = next((x for x in results if x["threads"] == hi and x["method"] == r["method"]
                              and x["H"] == r["H"] and x["backward"] == r["backward"]), None)
                if other is not None:
                    print(f"{r['method']} {r['H']}->{r['H'] * r['scale']} {'fwd+bwd' if r['backward'] else 'fwd'}: "
                          f"{hi} threads {r['seconds'] / other['seconds']:.2f}x faster than {lo}")
    flagged = [r for r in results if r["flags"]]
    if flagged:
        print(f"\n{len(flagged)} result{'s' if len(flagged) != 1 else ''} flagged: their spread makes the ratio unreliable "
              f"(spread: (max/min of method) x (max/min of baseline) > {SPREAD_LIMIT:g}; fwd+bwd<fwd: the machine "
              f"was busier during the forward); rerun on a quieter machine.")


if __name__ == "__main__":
    main()
