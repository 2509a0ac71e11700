"""The exported operator in ONNX Runtime against eager PyTorch: ``python -m sapa.bench --onnx``.

For each exporter (``torchscript``: ``torch.onnx.export(..., dynamo=False)``; ``dynamo``:
``dynamo=True``) it exports the bare operator (softmax, zero padding) at the bench shape with
a dynamic batch and dynamic spatial sizes (the graph a deployment ships), and reports:

* ``export_s``: the export's wall time; ``nodes``: the graph's node count;
* ``ort_ms`` and ``eager_ms``: ONNX Runtime's CPU provider against :func:`sapa.sapa_upsample`
  (the default backend, no grad) on the same inputs and thread count, interleaved rounds,
  median (min, max); ``time_ratio`` = ORT median / eager median;
* ``ort_peak``/``eager_peak``: resident-memory peak of one call above the resident set before
  it, each in a fresh subprocess (ONNX Runtime without its memory arena, so that freed
  buffers leave the process as PyTorch's do); ``memory_ratio`` = ORT / eager.

Needs ``onnx``, ``onnxruntime`` and, for the dynamo exporter, ``onnxscript``
(``pip install onnx onnxruntime onnxscript``).
"""
from __future__ import annotations

import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Sequence

import torch

from .functional import sapa_upsample

__all__ = ["EXPORTERS", "export_op", "run_onnx", "format_onnx_table"]

EXPORTERS = ("torchscript", "dynamo")


class _Op(torch.nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, q, k, v):
        return sapa_upsample(q, k, v, self.kernel_size)


def _inputs(B, C, d, H, scale):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, d, scale * H, scale * H, generator=g), torch.randn(B, d, H, H, generator=g),
            torch.randn(B, C, H, H, generator=g))


def export_op(exporter: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int) -> bytes:
    """The serialized ONNX model of ``sapa_upsample(q, k, v, kernel_size)`` with dynamic batch
    and spatial sizes (q: (B, d, sH, sW), k: (B, d, H, W), v: (B, C, H, W)); inputs q, k, v."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    scale = q.shape[2] // k.shape[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            b, h, w = torch.export.Dim("B"), torch.export.Dim("H", min=2), torch.export.Dim("W", min=2)
            shapes = ({0: b, 2: scale * h, 3: scale * w}, {0: b, 2: h, 3: w}, {0: b, 2: h, 3: w})
            prog = torch.onnx.export(_Op(kernel_size), (q, k, v), dynamo=True, dynamic_shapes=shapes,
                                     input_names=["q", "k", "v"], verbose=False)
            return prog.model_proto.SerializeToString()
        f = io.BytesIO()
        axes = {"q": {0: "B", 2: "Hq", 3: "Wq"}, "k": {0: "B", 2: "H", 3: "W"}, "v": {0: "B", 2: "H", 3: "W"}}
        torch.onnx.export(_Op(kernel_size), (q, k, v), f, dynamo=False, opset_version=17,
                          input_names=["q", "k", "v"], dynamic_axes=axes)
        return f.getvalue()


def _session(model: bytes, threads: int, arena: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _feed(sess, q, k, v):
    return dict(zip([i.name for i in sess.get_inputs()], (q.numpy(), k.numpy(), v.numpy())))


def _rss() -> Dict[str, int]:
    """Resident set and its high-water mark (bytes) of this process (Linux /proc)."""
    text = open("/proc/self/status").read()
    return {key: int(re.search(key + r":\s+(\d+)", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def _peak_case(kind: str, model_path: str, B, C, d, H, scale, K, threads) -> int:
    """Resident peak of one call above the resident set before it (after a warm-up call)."""
    torch.set_num_threads(threads)
    q, k, v = _inputs(B, C, d, H, scale)
    if kind == "ort":
        with open(model_path, "rb") as f:
            sess = _session(f.read(), threads, arena=False)
        feed = _feed(sess, q, k, v)

        def call():
            sess.run(None, feed)
    else:
        def call():
            with torch.no_grad():
                sapa_upsample(q, k, v, K)
    call()
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current set
        f.write("5")
    before = _rss()["VmRSS"]
    call()
    return _rss()["VmHWM"] - before


def _peak_in_subprocess(**case) -> int:
    cmd = [sys.executable, "-m", "sapa.bench", "--_onnx_peak", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ONNX memory case {case['kind']} failed:\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1]))


def _summary(xs: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def run_onnx(B=2, C=256, d=32, H=64, scale=2, K=5, threads: Sequence[int] = (1,), repeats=7,
             exporters: Sequence[str] = EXPORTERS, measure_memory=True, progress=True) -> List[Dict]:
    """One result per (exporter, thread count): export time, nodes, ORT vs eager time and memory."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--onnx needs onnx and onnxruntime ({exc}); pip install onnx onnxruntime onnxscript")
    q, k, v = _inputs(B, C, d, H, scale)
    with torch.no_grad():
        eager_out = sapa_upsample(q, k, v, K)
    results = []
    for exporter in exporters:
        if progress:
            print(f"exporting with {exporter} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        model = export_op(exporter, q, k, v, K)
        export_s = time.perf_counter() - t0
        import onnx

        nodes = len(onnx.load_from_string(model).graph.node)
        path = None
        if measure_memory:
            fd, path = tempfile.mkstemp(suffix=".onnx")
            with os.fdopen(fd, "wb") as f:
                f.write(model)
        try:
            for n in threads:
                torch.set_num_threads(n)
                sess = _session(model, n)
                feed = _feed(sess, q, k, v)
                out = torch.from_numpy(sess.run(None, feed)[0])
                err = (out - eager_out).abs().max().item()
                ort_t, eager_t = [], []
                for r in range(repeats):  # interleaved, the order alternating
                    for which in (("ort", "eager") if r % 2 == 0 else ("eager", "ort")):
                        t1 = time.perf_counter()
                        if which == "ort":
                            sess.run(None, feed)
                            ort_t.append(time.perf_counter() - t1)
                        else:
                            with torch.no_grad():
                                sapa_upsample(q, k, v, K)
                            eager_t.append(time.perf_counter() - t1)
                res = {"exporter": exporter, "threads": n, "export_s": export_s, "nodes": nodes,
                       "bytes": len(model), "max_abs_err": err, "ort": _summary(ort_t), "eager": _summary(eager_t),
                       "time_ratio": statistics.median(ort_t) / statistics.median(eager_t)}
                if measure_memory:
                    case = dict(model_path=path, B=B, C=C, d=d, H=H, scale=scale, K=K, threads=n)
                    res["ort_peak"] = _peak_in_subprocess(kind="ort", **case)
                    res["eager_peak"] = _peak_in_subprocess(kind="eager", **case)
                    res["memory_ratio"] = res["ort_peak"] / max(res["eager_peak"], 1)
                results.append(res)
                if progress:
                    print(f"  {n} thread(s): ORT {res['ort']['median'] * 1e3:.1f} ms, eager "
                          f"{res['eager']['median'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
        finally:
            if path:
                os.unlink(path)
    return results


def format_onnx_table(results: List[Dict]) -> str:
    """A text table of :func:`run_onnx`'s results."""
    def ms(s):
        return f"{s['median'] * 1e3:.1f} ({s['min'] * 1e3:.1f}-{s['max'] * 1e3:.1f})"

    head = f"{'exporter':12s} {'thr':>3s} {'export s':>8s} {'nodes':>5s} {'ORT ms':>20s} {'eager ms':>20s} " \
           f"{'ORT/eager':>9s} {'ORT MiB':>8s} {'eager MiB':>9s} {'mem ratio':>9s}"
    rows = [head]
    for r in results:
        mem = (f"{r['ort_peak'] / 2**20:8.1f} {r['eager_peak'] / 2**20:9.1f} {r['memory_ratio']:9.2f}"
               if "ort_peak" in r else f"{'-':>8s} {'-':>9s} {'-':>9s}")
        rows.append(f"{r['exporter']:12s} {r['threads']:3d} {r['export_s']:8.1f} {r['nodes']:5d} {ms(r['ort']):>20s} "
                    f"{ms(r['eager']):>20s} {r['time_ratio']:9.2f} {mem}")
    return "\n".join(rows)
