"""ONNX Runtime against eager PyTorch for the operator: ``python tools/bench_onnx.py``.

Exports ``sapa_upsample`` (TorchScript exporter, dynamic batch) at the bench shape (B=2, C=256,
d=32, K=5, x2 from HxH, default H=64), checks the outputs agree (1e-4), times eager (``backend
="auto"``: the C++ kernel on CPU) and onnxruntime interleaved on one thread (median of
``--repeats``), and measures each one's peak memory (growth of VmHWM over the resident set
before one call) in a fresh subprocess.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

import sapa


def _inputs(a):
    g = torch.Generator().manual_seed(0)
    s = a.scale
    return (torch.randn(a.batch, a.dim, s * a.size, s * a.size, generator=g),
            torch.randn(a.batch, a.dim, a.size, a.size, generator=g),
            torch.randn(a.batch, a.channels, a.size, a.size, generator=g))


class _Op(torch.nn.Module):
    def __init__(self, K, normalization, padding):
        super().__init__()
        self.cfg = (K, normalization, padding)

    def forward(self, q, k, v):
        return sapa.sapa_upsample(q, k, v, *self.cfg)


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _peak(a, which):
    """Peak memory growth (MiB) of one call, in this (fresh) process."""
    q, k, v = _inputs(a)
    op = _Op(a.kernel_size, a.normalization, a.padding)
    if which == "onnx":
        sess = _session(a.model)
        feed = dict(zip([i.name for i in sess.get_inputs()], (q.numpy(), k.numpy(), v.numpy())))
        run = lambda: sess.run(None, feed)  # noqa: E731
    else:
        run = lambda: op(q, k, v)  # noqa: E731
    run()  # warm: the C++ kernel loaded, the ORT arena planned
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM
    status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])  # noqa
    before = status("VmRSS")
    run()
    return (status("VmHWM") - before) / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--normalization", default="softmax")
    p.add_argument("--padding", default="zeros")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--peak", choices=["eager", "onnx"], help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.peak:
        print(json.dumps(_peak(a, a.peak)))
        return
    q, k, v = _inputs(a)
    op = _Op(a.kernel_size, a.normalization, a.padding)
    with tempfile.TemporaryDirectory() as tmp:
        a.model = os.path.join(tmp, "sapa.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(op, (q, k, v), a.model, dynamo=False, opset_version=17,
                              input_names=["q", "k", "v"], dynamic_axes={n: {0: "B"} for n in "qkv"})
        sess = _session(a.model)
        feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
        eager = lambda: op(q, k, v)  # noqa: E731
        onnx = lambda: sess.run(None, feed)[0]  # noqa: E731
        torch.testing.assert_close(torch.from_numpy(onnx()), eager(), atol=1e-4, rtol=1e-4)
        times = {"eager": [], "onnx": []}
        for r in range(a.repeats):
            order = (("eager", eager), ("onnx", onnx)) if r % 2 == 0 else (("onnx", onnx), ("eager", eager))
            for name, fn in order:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        peaks = {}
        for which in ("eager", "onnx"):
            argv = [sys.executable, __file__, "--peak", which, "--model", a.model] + [
                f"--{n}={getattr(a, n.replace('-', '_'))}" for n in
                ("size", "batch", "channels", "dim", "kernel-size", "scale", "normalization", "padding")]
            peaks[which] = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    print(f"B={a.batch} C={a.channels} d={a.dim} K={a.kernel_size} {a.size}x{a.size} -> x{a.scale}, "
          f"{a.normalization}/{a.padding}, 1 thread, median of {a.repeats} interleaved:")
    print(f"  eager ({sapa.backends.resolve_backend('auto', q).name}) {med['eager']:.1f} ms "
          f"(min {min(times['eager']) * 1e3:.1f}), peak +{peaks['eager']:.1f} MiB")
    print(f"  onnxruntime {med['onnx']:.1f} ms (min {min(times['onnx']) * 1e3:.1f}), peak +{peaks['onnx']:.1f} MiB")
    print(f"  time ratio {med['onnx'] / med['eager']:.2f}x, memory ratio {peaks['onnx'] / max(peaks['eager'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
