"""The exported operator in ONNX Runtime against eager PyTorch: ``python -m sapa.bench --onnx``.

For each exporter (``torchscript``: ``torch.onnx.export(..., dynamo=False)``; ``dynamo``:
``dynamo=True``) it exports the bare operator (softmax, zero padding) at the bench shape with
a dynamic batch and dynamic spatial sizes (the graph a deployment ships), and reports:

* ``export_s``: the export's wall time; ``nodes``: the graph's node count;
* ``ort_ms`` and ``eager_ms``: ONNX Runtime's CPU provider against :func:`sapa.sapa_upsample`
  (the default backend, no grad) on the same inputs and thread count, interleaved rounds,
  median (min, max); ``time_ratio`` = ORT median / eager median;
* ``graph_peak``: the most bytes the graph's intermediate tensors and output hold at once
  (ONNX shape inference on an export with the bench shape fixed, each tensor freed after its
  last reader, in the graph's node order: what any runtime must hold at least); against
  ``eager_peak``, the peak of torch's CPU allocator during one eager call (profiler memory
  events, as ``python -m sapa.bench``); ``memory_ratio`` = graph / eager. (The resident-set
  growth of a process is no measure here: ONNX Runtime and the C library keep freed buffers
  for the next call, so the second call's growth is near zero.)

Needs ``onnx``, ``onnxruntime`` and, for the dynamo exporter, ``onnxscript``
(``pip install onnx onnxruntime onnxscript``).
"""
from __future__ import annotations

import io
import statistics
import sys
import time
import warnings
from typing import Dict, List, Sequence

import torch

from ._peak import allocator_peak
from .functional import sapa_upsample

__all__ = ["EXPORTERS", "export_op", "graph_peak_bytes", "run_onnx", "format_onnx_table"]

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


def export_op(exporter: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
              dynamic: bool = True) -> bytes:
    """The serialized ONNX model of ``sapa_upsample(q, k, v, kernel_size)`` (q: (B, d, sH, sW),
    k: (B, d, H, W), v: (B, C, H, W)); inputs q, k, v; ``dynamic``: batch and spatial sizes
    are graph inputs (else fixed at those of q, k, v)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    scale = q.shape[2] // k.shape[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            b, h, w = torch.export.Dim("B"), torch.export.Dim("H", min=2), torch.export.Dim("W", min=2)
            shapes = ({0: b, 2: scale * h, 3: scale * w}, {0: b, 2: h, 3: w}, {0: b, 2: h, 3: w}) if dynamic else None
            prog = torch.onnx.export(_Op(kernel_size), (q, k, v), dynamo=True, dynamic_shapes=shapes,
                                     input_names=["q", "k", "v"], verbose=False)
            return prog.model_proto.SerializeToString()
        f = io.BytesIO()
        axes = {"q": {0: "B", 2: "Hq", 3: "Wq"}, "k": {0: "B", 2: "H", 3: "W"}, "v": {0: "B", 2: "H", 3: "W"}}
        torch.onnx.export(_Op(kernel_size), (q, k, v), f, dynamo=False, opset_version=17,
                          input_names=["q", "k", "v"], dynamic_axes=axes if dynamic else None)
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


def graph_peak_bytes(model: bytes) -> int:
    """Most bytes held at once by a graph's intermediate tensors and outputs (graph inputs and
    initializers excluded), each tensor freed after its last reader, in node order. Needs static
    shapes (an export without dynamic axes); tensors of unknown size count 0."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    size = {}
    for vi in list(m.graph.value_info) + list(m.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if t.elem_type and all(dims):  # known type and static shape
            n = 1
            for x in dims:
                n *= x
            size[vi.name] = n * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    outputs = {o.name for o in m.graph.output}
    last = {}
    for i, node in enumerate(m.graph.node):
        for x in node.input:
            last[x] = i
    live: Dict[str, int] = {}
    peak = 0
    for i, node in enumerate(m.graph.node):
        for y in node.output:
            live[y] = size.get(y, 0)
        peak = max(peak, sum(live.values()))
        for x in node.input:
            if last.get(x) == i and x in live and x not in outputs:
                del live[x]
    return peak


def _eager_peak(q, k, v, K) -> int:
    def call():
        with torch.no_grad():
            sapa_upsample(q, k, v, K)

    call()
    return allocator_peak(call)


def _summary(xs: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def run_onnx(B=2, C=256, d=32, H=64, scale=2, K=5, threads: Sequence[int] = (1,), repeats=7,
             exporters: Sequence[str] = EXPORTERS, measure_memory=True, progress=True) -> List[Dict]:
    """One result per (exporter, thread count): export time, nodes, ORT vs eager time and memory."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--onnx needs onnx and onnxruntime ({exc}); pip install onnx onnxruntime onnxscript")
    q, k, v = _inputs(B, C, d, H, scale)
    with torch.no_grad():
        eager_out = sapa_upsample(q, k, v, K)
    memory = {}
    if measure_memory:  # the same formulation whichever exporter: one static TorchScript export
        torch.set_num_threads(threads[0])
        memory["graph_peak"] = graph_peak_bytes(export_op("torchscript", q, k, v, K, dynamic=False))
        memory["eager_peak"] = _eager_peak(q, k, v, K)
        memory["memory_ratio"] = memory["graph_peak"] / max(memory["eager_peak"], 1)
    results = []
    for exporter in exporters:
        if progress:
            print(f"exporting with {exporter} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        model = export_op(exporter, q, k, v, K)
        export_s = time.perf_counter() - t0
        nodes = len(onnx.load_from_string(model).graph.node)
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
            res.update(memory)
            results.append(res)
            if progress:
                print(f"  {n} thread{'s' if n != 1 else ''}: ORT {res['ort']['median'] * 1e3:.1f} ms, eager "
                      f"{res['eager']['median'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    return results


def format_onnx_table(results: List[Dict]) -> str:
    """A text table of :func:`run_onnx`'s results."""
    def ms(s):
        return f"{s['median'] * 1e3:.1f} ({s['min'] * 1e3:.1f}-{s['max'] * 1e3:.1f})"

    head = f"{'exporter':12s} {'thr':>3s} {'export s':>8s} {'nodes':>5s} {'ORT ms':>20s} {'eager ms':>20s} " \
           f"{'ORT/eager':>9s} {'graph MiB':>9s} {'eager MiB':>9s} {'mem ratio':>9s}"
    rows = [head]
    for r in results:
        mem = (f"{r['graph_peak'] / 2**20:9.1f} {r['eager_peak'] / 2**20:9.1f} {r['memory_ratio']:9.2f}"
               if "graph_peak" in r else f"{'-':>9s} {'-':>9s} {'-':>9s}")
        rows.append(f"{r['exporter']:12s} {r['threads']:3d} {r['export_s']:8.1f} {r['nodes']:5d} {ms(r['ort']):>20s} "
                    f"{ms(r['eager']):>20s} {r['time_ratio']:9.2f} {mem}")
    return "\n".join(rows)
