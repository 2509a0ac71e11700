"""``python -m sapa.check``: check and time the fused Triton kernels on a CUDA GPU.

1. **Correctness.** On random shapes (odd sizes, non-power-of-two ``d`` and ``C``, ratios
   1 to 3 and non-integer ones, ``K`` from 1 to 7, every normalisation and padding), in
   float32 and bfloat16, ``backend="triton"`` is compared with the ``"torch"`` backend run in
   float64 on the same (dtype-rounded) inputs: the output and the gradients of the query, key
   and value. Every case also runs forward and backward a second time and requires the same
   bits (the kernels use no atomics).
2. **Timing.** At the SegFormer head sizes (B=2, d=32, C=256, K=5, x2) forward and
   forward+backward of ``triton``, ``torch`` and bilinear interpolation, timed with CUDA
   events, the methods interleaved within each repeat; median, min and max.
3. **Result.** A JSON with the device, the versions, every number and the command, written
   to ``gpu_check_<gpu>.json`` in the current folder (``--out DIR`` to choose it; the book's
   stored copy is written with ``--out book/results``). A file that belongs to a different
   GPU is never overwritten: the name gets a numeric suffix.

Without a CUDA GPU (or without Triton) it ends with one line and exit status 2; a failed
check is reported, stored, and ends with exit status 1.

The functions below take a device, so the tests run the correctness part on the CPU under
Triton's interpreter, on tiny shapes.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["random_cases", "check_case", "run_checks", "time_methods", "result_path", "main",
           "TOLERANCE", "NORMALIZATIONS", "PADDINGS"]

NORMALIZATIONS = ("softmax", "relu", "sigmoid", "softplus", "none")
PADDINGS = ("zeros", "ignore")
#: max |triton - oracle| allowed, relative to max(1, max |oracle|), per dtype
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}
TENSORS = ("out", "grad_query", "grad_key", "grad_value")
#: relu cases: largest low-res size, and the smallest |similarity| allowed in their inputs
RELU_MAX_LOW, RELU_KINK = 8, 1e-4


def random_cases(n: int, seed: int = 0, max_low: int = 40, max_d: int = 40, max_c: int = 80,
                 kernel_sizes: Sequence[int] = (1, 3, 5, 7), max_batch: int = 2) -> List[Dict]:
    """``n`` random shapes (at least ``len(NORMALIZATIONS) * len(PADDINGS)`` = 10 so that every
    normalisation and padding appears): dicts with B, d, C, H, W, Hq, Wq, K, normalization,
    padding. ``H, W`` in [1, max_low]; ``Hq = s*H + e`` with ``s`` in 1..3 and ``0 <= e < s``
    (so ratios like 11/5 occur); ``d`` in [1, max_d]; ``C`` in [1, max_c]; relu cases at most
    ``RELU_MAX_LOW`` low-res pixels a side (see :func:`check_case`)."""
    if n < len(NORMALIZATIONS) * len(PADDINGS):
        raise ValueError(f"n must be >= {len(NORMALIZATIONS) * len(PADDINGS)} to cover every option, got {n}")
    g = torch.Generator().manual_seed(seed)
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    combos = [(nm, pd) for nm in NORMALIZATIONS for pd in PADDINGS]
    cases = []
    for i in range(n):
        norm, pad = combos[i % len(combos)] if i < len(combos) else combos[ri(0, len(combos) - 1)]
        H, W = ri(1, max_low), ri(1, max_low)
        if norm == "relu":  # few logits, so that inputs without any near the kink exist (check_case)
            H, W = min(H, RELU_MAX_LOW), min(W, RELU_MAX_LOW)
        sh, sw = ri(1, 3), ri(1, 3)
        cases.append(dict(
            B=ri(1, max_batch), d=ri(1, max_d), C=ri(1, max_c), H=H, W=W,
            Hq=sh * H + ri(0, sh - 1), Wq=sw * W + ri(0, sw - 1),
            K=kernel_sizes[ri(0, len(kernel_sizes) - 1)], normalization=norm, padding=pad,
        ))
    return cases


def _inputs(case: Dict, seed: int):
    g = torch.Generator().manual_seed(seed)
    B, d, C = case["B"], case["d"], case["C"]
    shapes = [(B, d, case["Hq"], case["Wq"]), (B, d, case["H"], case["W"]), (B, C, case["H"], case["W"]),
              (B, C, case["Hq"], case["Wq"])]
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def _forward_backward(backend: str, q, k, v, gout, case: Dict):
    import sapa

    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = sapa.sapa_upsample(*leaves, kernel_size=case["K"], normalization=case["normalization"],
                             padding=case["padding"], backend=backend)
    grads = torch.autograd.grad(out, leaves, gout)
    return [out.detach()] + [t.detach() for t in grads]


def check_case(case: Dict, device, dtype: torch.dtype, seed: int = 0, backend: str = "triton",
               oracle: str = "torch") -> Dict:
    """Compare ``backend`` in ``dtype`` with ``oracle`` in float64 on one case.

    The random inputs are rounded to ``dtype`` first, so both see the same numbers (relu cases
    are drawn again while a similarity lies within ``RELU_KINK`` of 0). Returns the
    case plus ``dtype``, per tensor the max abs error and the scale ``max(1, max |oracle|)``,
    ``worst`` (the largest error / scale), ``tolerance``, ``bitwise_repeat`` (a second
    forward+backward gave the same bits) and ``passed``.
    """
    import sapa

    dev = torch.device(device)
    resampled = 0
    while True:
        q, k, v, gout = (t.to(dtype).to(dev) for t in _inputs(case, seed * 1000 + resampled))
        if case["normalization"] != "relu":
            break
        # relu is not differentiable at 0 and w = s / (s + eps) is ill-conditioned for tiny
        # s > 0: a similarity within float32 rounding of 0 can flip the kernel's result against
        # the float64 oracle without any bug. Draw again until no (non-padding) similarity is
        # that close to 0 (padding positions are exactly 0 in both).
        s = sapa.sapa_kernels(q.double(), k.double(), case["K"], "none", case["padding"])
        if not ((s != 0) & (s.abs() < RELU_KINK)).any() or resampled >= 100:
            break
        resampled += 1
    ref = _forward_backward(oracle, q.double(), k.double(), v.double(), gout.double(), case)
    got = _forward_backward(backend, q, k, v, gout, case)
    again = _forward_backward(backend, q, k, v, gout, case)
    row = dict(case, dtype=str(dtype).replace("torch.", ""), seed=seed, resampled=resampled)
    worst = 0.0
    for name, a, e in zip(TENSORS, got, ref):
        if a.dtype != dtype or a.shape != e.shape:
            raise AssertionError(f"{name}: got {a.dtype} {tuple(a.shape)}, expected {dtype} {tuple(e.shape)}")
        err = (a.double() - e).abs().max().item() if e.numel() else 0.0
        scale = max(1.0, e.abs().max().item() if e.numel() else 0.0)
        row[name] = err
        row[name + "_scale"] = scale
        worst = max(worst, err / scale) if err == err else float("inf")  # NaN counts as a failure
    row["worst"] = worst
    row["tolerance"] = TOLERANCE[dtype]
    row["bitwise_repeat"] = all(torch.equal(a, b) for a, b in zip(got, again))
    row["passed"] = bool(worst <= TOLERANCE[dtype] and row["bitwise_repeat"])
    return row


def run_checks(cases: Iterable[Dict], device, dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16),
               backend: str = "triton", oracle: str = "torch", progress: bool = False) -> List[Dict]:
    """:func:`check_case` for every case and dtype (seed = case index)."""
    jobs = [(i, c, dt) for i, c in enumerate(cases) for dt in dtypes]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="checking", unit="case")
    return [check_case(c, device, dt, seed=i, backend=backend, oracle=oracle) for i, c, dt in jobs]


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------
def _method_fn(method: str, q, k, v, K: int, backward: bool):
    import sapa

    Hq, Wq = q.shape[-2:]
    g = torch.randn(v.shape[0], v.shape[1], Hq, Wq, device=v.device, dtype=v.dtype)

    def call():
        if method == "bilinear":
            out = F.interpolate(v, size=(Hq, Wq), mode="bilinear", align_corners=False)
        else:
            out = sapa.sapa_upsample(q, k, v, K, backend=method)
        if backward:
            ins = [t for t in ((v,) if method == "bilinear" else (q, k, v)) if t.requires_grad]
            torch.autograd.grad(out, ins, g)
        return out

    return call


def time_methods(methods: Sequence[str], sizes: Sequence[int], device="cuda", dtype=torch.float32, B: int = 2,
                 d: int = 32, C: int = 256, K: int = 5, scale: int = 2, repeats: int = 15, inner: int = 5,
                 warmup: int = 3, progress: bool = False) -> List[Dict]:
    """Median/min/max seconds per call of forward and forward+backward for every method and
    low-resolution size ``H = W``. Each repeat times ``inner`` calls of every (method, pass)
    in turn (interleaved), with CUDA events on a GPU (``time.perf_counter`` on a CPU)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    rows = []
    for H in sizes:
        gen = torch.Generator().manual_seed(H)
        mk = lambda *s: torch.randn(*s, generator=gen).to(dev, dtype)  # noqa: E731
        q, k, v = mk(B, d, scale * H, scale * H), mk(B, d, H, H), mk(B, C, H, H)
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
        calls = {}
        for m in methods:
            calls[(m, False)] = _method_fn(m, q, k, v, K, False)
            calls[(m, True)] = _method_fn(m, qg, kg, vg, K, True)
        samples = {key: [] for key in calls}
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        if cuda:
            torch.cuda.synchronize(dev)
        it = range(repeats)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"timing {H}x{H}", unit="repeat")
        for _ in it:
            for key, fn in calls.items():
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(inner):
                        fn()
                    end.record()
                    end.synchronize()
                    samples[key].append(start.elapsed_time(end) / 1e3 / inner)
                else:
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        fn()
                    samples[key].append((time.perf_counter() - t0) / inner)
        for (m, bwd), ts in samples.items():
            ts = sorted(ts)
            rows.append(dict(method=m, passes="forward+backward" if bwd else "forward", H=H, W=H, Hq=scale * H,
                             Wq=scale * H, B=B, d=d, C=C, K=K, dtype=str(dtype).replace("torch.", ""),
                             median_s=ts[len(ts) // 2], min_s=ts[0], max_s=ts[-1], repeats=len(ts), inner=inner))
    return rows


# --------------------------------------------------------------------------------------
# result file and command line
# --------------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gpu"


def result_path(folder, device_name: str) -> Path:
    """``folder/gpu_check_<slug>.json``; if that file holds another device's result, the first
    free ``..._<n>.json`` (or the first one holding this device's)."""
    folder = Path(folder)
    base = f"gpu_check_{_slug(device_name)}"
    n = 1
    while True:
        path = folder / (base + (f"_{n}" if n > 1 else "") + ".json")
        if not path.exists():
            return path
        try:
            if json.loads(path.read_text()).get("device") == device_name:
                return path
        except (OSError, ValueError):
            pass
        n += 1


def _versions() -> Dict[str, Optional[str]]:
    import sapa

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = None
    return {"sapa": sapa.__version__, "torch": torch.__version__, "triton": tv, "cuda": torch.version.cuda,
            "python": platform.python_version()}


def _fail(msg: str, code: int) -> int:
    print(f"sapa.check: {msg}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sapa.check", description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=40, help="random shapes per dtype (>= 10; default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="low-res sizes H = W to time")
    p.add_argument("--repeats", type=int, default=15, help="interleaved timing repeats (default 15)")
    p.add_argument("--out", default=None, help="folder for the JSON (default: the current folder; the book keeps its copy in book/results)")
    p.add_argument("--no-write", action="store_true", help="print the JSON instead of writing it")
    args = p.parse_args(argv)
    if args.cases < 10:
        return _fail(f"--cases must be >= 10 (one per normalisation and padding), got {args.cases}", 2)
    if args.repeats < 1 or any(s < 1 for s in args.sizes):
        return _fail("--repeats and --sizes must be positive", 2)
    if not torch.cuda.is_available():
        return _fail("no CUDA GPU here: this check needs one (the CPU path is covered by the tests, "
                     "which run the kernels through Triton's interpreter)", 2)
    try:
        from .backends import triton as triton_ops
    except ImportError as exc:
        return _fail(f"Triton is not usable here ({exc}); pip install triton", 2)
    x = torch.zeros(1, 1, 2, 2, device="cuda")
    if not triton_ops.available(x):
        return _fail("the Triton backend cannot run on CUDA tensors in this process (TRITON_INTERPRET is set?)", 2)

    t0 = time.time()
    device_name = torch.cuda.get_device_name()
    cases = random_cases(args.cases, seed=args.seed)
    checks = run_checks(cases, "cuda", progress=True)
    failed = [r for r in checks if not r["passed"]]
    timings = []
    for dt in (torch.float32, torch.bfloat16):
        timings += time_methods(["triton", "torch", "bilinear"], args.sizes, "cuda", dt, repeats=args.repeats,
                                progress=True)
    result = {
        "command": "python -m sapa.check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device_name,
        "capability": "sm_%d%d" % torch.cuda.get_device_capability(),
        "versions": _versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - t0, 1),
        "checks_passed": not failed,
        "n_checks": len(checks),
        "worst_relative_error": {dt: max(r["worst"] for r in checks if r["dtype"] == dt)
                                 for dt in sorted({r["dtype"] for r in checks})},
        "checks": checks,
        "timings": timings,
    }
    text = json.dumps(result, indent=1)
    for r in timings:
        print(f"{r['dtype']:9s} {r['H']:3d}->{r['Hq']:3d} {r['passes']:17s} {r['method']:8s} "
              f"median {1e6 * r['median_s']:9.1f} us  (min {1e6 * r['min_s']:.1f}, max {1e6 * r['max_s']:.1f})")
    if args.no_write:
        print(text)
    else:
        folder = Path(args.out) if args.out else Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        path = result_path(folder, device_name)
        path.write_text(text + "\n")
        print(f"wrote {path}")
    if failed:
        worst = max(failed, key=lambda r: r["worst"])
        return _fail(f"{len(failed)} of {len(checks)} checks FAILED, e.g. {worst}", 1)
    print(f"all {len(checks)} checks passed on {device_name} (worst relative error "
          f"{result['worst_relative_error']}); bitwise-repeatable gradients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
