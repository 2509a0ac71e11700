"""Worker-process helpers for tests/test_triton_compile.py (not a test module).

The compile test runs ``triton.compile`` in spawned processes: a fresh interpreter that
imports Triton in compiled mode (``TRITON_INTERPRET`` removed *before* Triton is imported,
which is why nothing heavy is imported at the top of this file) and writes to a private,
empty Triton cache (a temporary folder, nothing cached in the repository), so that every
job really runs the whole pipeline down to ``ptxas``.
"""
import os


def init(cache_dir: str) -> None:
    """Pool initializer: compiled mode, private cache, quiet FP-fusion default warning."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def compile_job(arch: int, dtype_name: str, sizes: dict, options: dict, label: str, override: dict = None):
    """Compile the launch ``label`` that ``sapa_triton`` makes for these sizes and options on
    ``sm_<arch>`` (meta-parameters optionally overridden); return compile_launch_aot's summary
    plus the wall time."""
    import time

    import torch
    from sapa.backends import triton as triton_ops

    t0 = time.time()
    launches = dict(triton_ops.launches_for_sizes(getattr(torch, dtype_name), **sizes, **options))
    name, grid, args, meta = launches[label]
    res = triton_ops.compile_launch_aot((name, grid, args, {**meta, **(override or {})}), arch)
    res["seconds"] = time.time() - t0
    res["meta"] = {**meta, **(override or {})}
    return res
