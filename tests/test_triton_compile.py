"""Every Triton kernel compiles ahead of time for real GPU architectures, without a GPU.

``sapa.triton_ops.compile_kernels_aot`` runs ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`` down to PTX and a cubin (``ptxas`` ships with the
Triton wheel). Each job is one (kernel, architecture, dtype, specialization); the jobs run
in two spawned worker processes (``tests/_triton_worker.py``) with a private, empty cache.

Covered: all kernels for sm_75 in float32 and float16 and for sm_80 and sm_90 in bfloat16
(K = 5, softmax, zero padding), plus every other normalisation / padding / K branch of the
kernels that have them, for sm_75 float32.
"""
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys

import pytest

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _triton_worker  # noqa: E402

KERNELS = ("fwd", "delta", "bwd_q", "bwd_v", "bwd_k")
TARGETS = ((75, "float32"), (75, "float16"), (80, "bfloat16"), (90, "bfloat16"))
BRANCHES = (("relu", "ignore", 3), ("sigmoid", "zeros", 9), ("softplus", "ignore", 1), ("none", "ignore", 7))

JOBS = [(k, arch, dt, 5, "softmax", "zeros") for arch, dt in TARGETS for k in KERNELS] + [
    (k, 75, "float32", K, norm, pad) for norm, pad, K in BRANCHES for k in KERNELS if k != "delta"
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Submit every job at once to a 2-process pool; tests wait for their own job."""
    cache = str(tmp_path_factory.mktemp("triton_cache"))
    pool = cf.ProcessPoolExecutor(
        max_workers=2, mp_context=mp.get_context("spawn"),
        initializer=_triton_worker.init, initargs=(cache,),
    )
    futures = {job: pool.submit(_triton_worker.compile_job, *job) for job in JOBS}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("job", JOBS, ids=lambda j: "{}-sm{}-{}-K{}-{}-{}".format(*j))
def test_kernel_compiles(compiled, job):
    kernel, arch, *_ = job
    res = compiled[job].result(timeout=600)
    assert res["ptx_target"] in (f"sm_{arch}", f"sm_{arch}a")  # Triton emits sm_90a for Hopper
    assert res["entry"]
    assert res["cubin_bytes"] > 1000
