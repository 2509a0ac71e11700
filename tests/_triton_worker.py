"""Worker-process helpers for tests/test_triton_compile.py (not a test module).

The compile test runs ``triton.compile`` in spawned processes: a fresh interpreter that
imports Triton in compiled mode (``TRITON_INTERPRET`` removed *before* Triton is imported,
which is why nothing heavy is imported at the top of this file) and writes to a private,
empty Triton cache, so that every job really runs the whole pipeline down to ``ptxas``.
"""
import os
import re


def init(cache_dir: str) -> None:
    """Pool initializer: compiled mode, private cache, quiet FP-fusion default warning."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def compile_job(kernel: str, arch: int, dtype_name: str, kernel_size: int, normalization: str, padding: str):
    """Compile one kernel specialization for sm_<arch>; return a small summary."""
    import time

    import torch
    from sapa.backends import triton as triton_ops

    t0 = time.time()
    res = triton_ops.compile_kernels_aot(
        arch, getattr(torch, dtype_name), kernels=[kernel],
        kernel_size=kernel_size, normalization=normalization, padding=padding,
    )[kernel]
    target = re.search(r"^\.target\s+(\S+)", res["ptx"], re.M)
    return {
        "ptx_target": target.group(1) if target else None,
        "entry": f".entry {triton_ops._KERNELS[kernel].__name__}" in res["ptx"],
        "cubin_bytes": len(res["cubin"]),
        "seconds": time.time() - t0,
    }
