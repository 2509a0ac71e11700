"""Every Triton launch compiles ahead of time for real GPUs, without a GPU, and none spills.

For the head's sizes (``d = 32``, ``C`` in 64..512, ``K = 5``, ``s = 2``; one size whose
spatial dimensions are multiples of 16 and one whose are not, since Triton specialises integer
arguments on divisibility by 16) the test asks ``sapa.backends.triton.launches_for_sizes`` for the
launches ``sapa_triton`` makes (same kernels, constexprs, BLOCK sizes and ``num_warps``), binds
their arguments with Triton's own runtime binder (``compile_launch_aot``: 16-byte aligned
pointers and integer specialisation, exactly as ``kernel[grid](...)`` would on a device), and
compiles them for sm_80 and sm_90 in float32 and bfloat16 (plus float16 on sm_80). Launches
that the runtime would compile to the same binary are compiled once. ``ptxas -v`` (from the
Triton wheel, with Triton's flags) reports registers and spills; any spill fails the test.
Other normalisations, paddings, kernel sizes and partial gradients are compiled for sm_90
float32. The jobs run in two spawned workers (``tests/_triton_worker.py``) with a private,
empty, temporary cache.
"""
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys

import pytest

pytest.importorskip("triton")
import torch  # noqa: E402

from sapa.backends import triton as triton_ops  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _triton_worker  # noqa: E402

#: ahead-of-time compiles: minutes of CPU (`make test-fast` skips them)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(triton_ops.INTERPRETED, reason="needs Triton in compiled mode")]

SIZES = {
    "64x64": dict(d=32, H=64, W=64, Hq=128, Wq=128),   # every size a multiple of 16
    "45x61": dict(d=32, H=45, W=61, Hq=90, Wq=122),    # none
}
HEAD = dict(kernel_size=5, normalization="softmax", padding="zeros", needs=(True, True, True))
TARGETS = ((80, "float32"), (80, "bfloat16"), (80, "float16"), (90, "float32"), (90, "bfloat16"))
BRANCHES = [
    dict(kernel_size=3, normalization="relu", padding="ignore", needs=(True, True, True)),
    dict(kernel_size=7, normalization="sigmoid", padding="zeros", needs=(True, True, True)),
    dict(kernel_size=5, normalization="softplus", padding="ignore", needs=(True, True, True)),
    dict(kernel_size=5, normalization="none", padding="zeros", needs=(True, True, True)),
    dict(kernel_size=5, normalization="softmax", padding="ignore", needs=(True, True, True)),
    dict(kernel_size=5, normalization="softmax", padding="zeros", needs=(False, False, True)),
    dict(kernel_size=5, normalization="softmax", padding="zeros", needs=(True, False, False)),
    dict(kernel_size=5, normalization="softmax", padding="zeros", needs=(False, True, False)),
]


def _jobs():
    """(id, arch, dtype, sizes, options, label) for every distinct binary the runtime would build."""
    cases = []
    for arch, dt in TARGETS:
        for sname, sizes in SIZES.items():
            if dt == "float16" and sname != "64x64":
                continue
            for C in (64, 128, 256, 512):
                cases.append((arch, dt, sname, dict(sizes, C=C), HEAD))
    for opts in BRANCHES:
        cases.append((90, "float32", "64x64", dict(SIZES["64x64"], C=256), opts))
    jobs, seen = [], set()
    for arch, dt, sname, sizes, opts in cases:
        for label, launch in triton_ops.launches_for_sizes(getattr(torch, dt), **sizes, **opts):
            key = triton_ops.launch_key(launch, arch)
            if key in seen:
                continue
            seen.add(key)
            tag = "K{kernel_size}-{normalization}-{padding}".format(**opts)
            tag += "-grads" + "".join("qkv"[i] for i, n in enumerate(opts["needs"]) if n)
            jobs.append((f"{label}-sm{arch}-{dt}-{sname}-C{sizes['C']}-{tag}", arch, dt, sizes, opts, label))
    return jobs


JOBS = _jobs()
#: a launch configuration known to spill (the old 4-warp query-gradient tiles): the check must see it
SPILLING = ("bwd_q-sm90-float32-spilling", 90, "float32", dict(SIZES["64x64"], C=256), HEAD, "bwd_q",
            {"num_warps": 4, "BLOCK_P": 64, "BLOCK_C": 64})


@pytest.fixture(scope="module")
def compiled(request, tmp_path_factory):
    """Submit the selected tests' jobs at once to a 2-process pool; tests wait for their own."""
    selected = " ".join(item.name for item in request.session.items)
    cache = str(tmp_path_factory.mktemp("triton_cache"))
    pool = cf.ProcessPoolExecutor(
        max_workers=2, mp_context=mp.get_context("spawn"),
        initializer=_triton_worker.init, initargs=(cache,),
    )
    futures = {job[0]: pool.submit(_triton_worker.compile_job, *job[1:]) for job in JOBS + [SPILLING]
               if job[0] in selected or (job is SPILLING and "spill_check" in selected)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_jobs_cover_every_kernel_and_target():
    labels = {(job[5], job[1], job[2]) for job in JOBS}
    for arch, dt in TARGETS:
        for label in ("fwd", "bwd_q", "gather_k", "gather_v"):
            assert (label, arch, dt) in labels
    # both integer specialisations of the spatial sizes give distinct binaries
    assert any("45x61" in job[0] for job in JOBS) and any("64x64" in job[0] for job in JOBS)


@pytest.mark.parametrize("job", JOBS, ids=[job[0] for job in JOBS])
def test_launch_compiles_without_spills(compiled, job):
    name, arch, *_ = job
    res = compiled[name].result(timeout=900)
    assert res["ptx_target"] in (f"sm_{arch}", f"sm_{arch}a")  # Triton emits sm_90a for Hopper
    assert res["entry"] and res["cubin_bytes"] > 1000
    assert res["num_warps"] == res["meta"]["num_warps"]
    assert res["spill_stores"] == 0 and res["spill_loads"] == 0 and res["stack"] == 0, (
        f"{name} {res['meta']}: {res['registers']} registers, {res['spill_stores']} bytes spill stores, "
        f"{res['spill_loads']} bytes spill loads\n{res['ptxas_log']}"
    )


def test_spill_check_sees_a_spilling_configuration(compiled):
    res = compiled[SPILLING[0]].result(timeout=900)
    assert res["spill_stores"] > 0 and res["spill_loads"] > 0 and res["stack"] > 0, res["ptxas_log"]


def test_binder_specialises_like_the_runtime():
    launches = dict(triton_ops.launches_for_sizes(torch.float32, **SIZES["64x64"], C=256, **HEAD))
    _fn, _target, src, options = triton_ops._bind_like_runtime(launches["fwd"], 90)
    assert src.attrs[(0,)] == [["tt.divisibility", 16]]  # q_ptr: 16-byte aligned
    assert options.num_warps == triton_ops.cuda_config("fwd", 32, 256)["num_warps"]
    assert src.constants[(src.fn.arg_names.index("BLOCK_C"),)] == triton_ops.cuda_config("fwd", 32, 256)["BLOCK_C"]
    odd = dict(triton_ops.launches_for_sizes(torch.float32, **SIZES["45x61"], C=256, **HEAD))
    assert triton_ops.launch_key(odd["fwd"], 90) != triton_ops.launch_key(launches["fwd"], 90)
    assert triton_ops.launch_key(launches["fwd"], 80) != triton_ops.launch_key(launches["fwd"], 90)


def test_parse_ptxas_log():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    1056 bytes stack frame, 1184 bytes spill stores, 1056 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 1056 bytes cumulative stack size\n")
    assert triton_ops.parse_ptxas_log(log) == {"registers": 255, "spill_stores": 1184, "spill_loads": 1056,
                                                "stack": 1056}
    with pytest.raises(ValueError, match="registers"):
        triton_ops.parse_ptxas_log("ptxas info : nothing")
