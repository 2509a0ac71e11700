"""backend="triton" against the float64 reference, on the CPU through Triton's interpreter.

Triton chooses between compiling and interpreting when it is first imported
(``TRITON_INTERPRET=1`` must be set before that), so the interpreter cases run in a child
process: in a normal test run this module defines only ``test_interpreter_suite`` (plus the
tests that need no kernel), which runs this same file again under ``TRITON_INTERPRET=1``;
in that child process the cases below are defined and run. To run them directly::

    TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py

The interpreter emulates the very kernels that are compiled for CUDA with numpy, one program
after the other; shapes are tiny because every kernel statement is a numpy call.
"""
import importlib
import os
import subprocess
import sys
import time

import pytest
import torch

import sapa

try:
    from sapa.backends import triton as triton_ops
except ImportError:  # no triton: only the triton-free tests run
    triton_ops = None

#: the Triton interpreter / ahead-of-time compiles: minutes of CPU (`make test-fast` skips them)
pytestmark = pytest.mark.slow

needs_triton = pytest.mark.skipif(triton_ops is None, reason="triton is not installed")
IN_INTERPRETER = triton_ops is not None and triton_ops.INTERPRETED

NORMS = ("softmax", "relu", "sigmoid", "softplus", "none")
PADS = ("zeros", "ignore")


def normal_only(fn):
    """Test defined only in the normal (compiled-mode) process."""
    fn._sapa_mode = "normal"
    return fn


def interp_only(fn):
    """Test defined only in the interpreter child process."""
    fn._sapa_mode = "interp"
    return fn


@needs_triton
@normal_only
def test_interpreter_suite():
    """Run this file under TRITON_INTERPRET=1 in a child process; fail with its report."""
    env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    report = res.stdout[-6000:] + res.stderr[-3000:]
    assert res.returncode == 0, f"interpreter suite failed ({time.time() - t0:.0f} s):\n{report}"
    summary = [line for line in res.stdout.splitlines() if " passed" in line]
    assert summary and "skipped" not in summary[-1], report


def test_import_without_triton_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # "import triton" now fails
    monkeypatch.delitem(sys.modules, "sapa.backends.triton", raising=False)
    with pytest.raises(ImportError):
        importlib.import_module("sapa.backends.triton")


@needs_triton
@normal_only
def test_available_outside_interpreter():
    x = torch.zeros(1, 1, 2, 2)
    assert not triton_ops.available(x)  # CPU tensors need the interpreter process
    assert "triton" in sapa.available_backends()
    with pytest.raises(ValueError, match="triton"):
        sapa.sapa_upsample(x, x, x, 3, backend="triton")


@needs_triton
@normal_only
def test_index_range_guard():
    triton_ops.check_index_range(32, 512, 5, 2048, 2047, 1024, 1024)  # 512 * 2048 * 2047 < 2**31
    with pytest.raises(ValueError, match=r"C, d, K\*K\) \* H' \* W' = 2147483648 >= 2\*\*31"):
        triton_ops.check_index_range(32, 512, 5, 2048, 2048, 1024, 1024)
    with pytest.raises(ValueError, match=r"\(H \+ 1\) \* H'"):
        triton_ops.check_index_range(1, 1, 1, 65536, 1, 32768, 1)


@needs_triton
@normal_only
def test_cuda_configs_are_powers_of_two_and_cover_every_kernel():
    for kernel in ("fwd", "bwd_q", "gather_k", "gather_v"):
        for d, C in ((32, 64), (32, 512), (5, 3), (64, 1)):
            cfg = triton_ops.cuda_config(kernel, d, C)
            blocks = [v for k, v in cfg.items() if k.startswith("BLOCK_")]
            assert blocks and all(b & (b - 1) == 0 for b in blocks), (kernel, cfg)
            assert cfg["num_warps"] in (1, 2, 4, 8) and cfg["maxnreg"] <= 255
    with pytest.raises(ValueError, match="unknown kernel"):
        triton_ops.cuda_config("bogus", 32, 64)


# ---- everything below runs only in the interpreter process ---------------------------


def _inputs(B, d, C, H, W, Hq, Wq, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return mk(B, d, Hq, Wq), mk(B, d, H, W), mk(B, C, H, W), mk(B, C, Hq, Wq)


def _run(backend, q, k, v, gout, dtype, K, norm, pad, grads=(True, True, True)):
    leaves = [t.detach().to(dtype).clone().requires_grad_(r) for t, r in zip((q, k, v), grads)]
    out = sapa.sapa_upsample(*leaves, kernel_size=K, normalization=norm, padding=pad, backend=backend)
    out.backward(gout.to(dtype))
    return [out] + [t.grad for t in leaves]


def _check(q, k, v, gout, K, norm, pad, dtype=torch.float32, tol=1e-4, grads=(True, True, True)):
    """triton(dtype) vs reference(float64 of the same dtype-rounded inputs)."""
    q, k, v, gout = (t.to(dtype).double() for t in (q, k, v, gout))
    ref = _run("reference", q, k, v, gout, torch.float64, K, norm, pad, grads)
    got = _run("triton", q, k, v, gout, dtype, K, norm, pad, grads)
    for name, a, e in zip(("out", "grad_query", "grad_key", "grad_value"), got, ref):
        if e is None:
            assert a is None, name
            continue
        assert a.dtype == dtype and a.shape == e.shape, name
        scale = max(e.abs().max().item(), 1.0)
        torch.testing.assert_close(a.double(), e, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("norm", NORMS)
@interp_only
def test_all_normalisations_odd_sizes(norm, pad):
    # non-power-of-two channels and embedding, odd sizes, non-integer ratio 11/5, 13/7
    q, k, v, g = _inputs(1, 3, 5, 5, 7, 11, 13, seed=1)
    _check(q, k, v, g, 3, norm, pad)


@pytest.mark.parametrize(
    "B,d,C,H,W,Hq,Wq,K,norm,pad",
    [
        (2, 3, 5, 5, 7, 5, 7, 5, "softmax", "zeros"),    # ratio 1
        (1, 3, 5, 4, 5, 8, 10, 5, "softmax", "ignore"),  # ratio 2
        (1, 4, 6, 3, 4, 9, 12, 3, "softplus", "zeros"),  # ratio 3
        (1, 3, 5, 3, 3, 7, 5, 5, "relu", "ignore"),      # window larger than the map
        (1, 2, 3, 5, 7, 11, 13, 1, "sigmoid", "zeros"),  # K = 1
        (1, 3, 5, 3, 4, 3, 4, 9, "softmax", "zeros"),    # K = 9
        (1, 2, 3, 1, 1, 3, 2, 3, "softmax", "ignore"),   # 1 x 1 low-res map
    ],
)
@interp_only
def test_shapes(B, d, C, H, W, Hq, Wq, K, norm, pad):
    q, k, v, g = _inputs(B, d, C, H, W, Hq, Wq, seed=2)
    _check(q, k, v, g, K, norm, pad)


@pytest.mark.parametrize("norm,pad", [("softmax", "zeros"), ("sigmoid", "ignore")])
@interp_only
def test_many_tiles_and_channel_blocks(monkeypatch, norm, pad):
    # tiny tiles: several pixel tiles and channel blocks with partial (masked) last blocks,
    # as on a GPU (the interpreter runs the programs one after the other: keep it small)
    monkeypatch.setitem(triton_ops.INTERPRETER_BLOCKS, "max_p", 16)
    monkeypatch.setitem(triton_ops.INTERPRETER_BLOCKS, "max_c", 4)
    q, k, v, g = _inputs(1, 5, 11, 4, 5, 7, 9, seed=3)
    _check(q, k, v, g, 3, norm, pad)


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)]
)
@pytest.mark.parametrize("norm,pad", [("softmax", "zeros"), ("sigmoid", "ignore")])
@interp_only
def test_half_precision(dtype, tol, norm, pad):
    q, k, v, g = _inputs(1, 3, 5, 5, 7, 11, 13, seed=4)
    _check(q, k, v, g, 3, norm, pad, dtype=dtype, tol=tol)


@pytest.mark.parametrize("grads", [(False, False, True), (True, False, False), (False, True, False)])
@interp_only
def test_partial_gradients(grads):
    q, k, v, g = _inputs(1, 3, 5, 4, 5, 8, 10, seed=5)
    _check(q, k, v, g, 3, "softmax", "zeros", grads=grads)


@interp_only
def test_non_contiguous_inputs():
    q, k, v, g = _inputs(1, 3, 5, 4, 5, 8, 10, seed=6)
    qn = q.float().transpose(2, 3).contiguous().transpose(2, 3)  # strided view, same values
    kn = k.float().to(memory_format=torch.channels_last)
    vn = torch.stack([v.float(), v.float()], 2)[:, :, 0]  # strided view of v
    assert not qn.is_contiguous() and not kn.is_contiguous() and not vn.is_contiguous()
    got = sapa.sapa_upsample(qn, kn, vn, 3, backend="triton")
    ref = sapa.sapa_upsample(q, k, v, 3, backend="reference")
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


@interp_only
def test_backward_is_deterministic(monkeypatch):
    monkeypatch.setitem(triton_ops.INTERPRETER_BLOCKS, "max_p", 16)
    q, k, v, g = _inputs(1, 3, 6, 4, 5, 7, 9, seed=7)
    runs = [_run("triton", q, k, v, g, torch.float32, 3, "softmax", "zeros") for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@interp_only
def test_sapa_triton_direct_call():
    # the autograd.Function behind backend="triton", called without sapa_upsample's dispatch
    q, k, v, g = _inputs(1, 3, 5, 4, 5, 9, 11, seed=8)
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    out = triton_ops.sapa_triton(*leaves, 3, "softplus", "ignore")
    out.backward(g.float())
    ref = _run("reference", q, k, v, g, torch.float64, 3, "softplus", "ignore")
    for a, e in zip([out] + [t.grad for t in leaves], ref):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4 * max(1.0, e.abs().max().item()))


@interp_only
def test_available_in_interpreter():
    x = torch.zeros(1, 1, 2, 2)
    assert triton_ops.available(x)
    assert not triton_ops.available(x.double())  # float32 accumulation only
    with pytest.raises(ValueError, match="triton"):
        sapa.sapa_upsample(x.double(), x.double(), x.double(), 3, backend="triton")




# ---- the traffic model (no kernel involved; runs in the normal process) ---------------
@normal_only
def test_traffic_exact_tiny_case():
    from sapa.traffic import bytes_moved

    # B=1, C=2, d=1, K=1, s=2, H=W=1: N = 4 output pixels, n = 1, P = 1, b = 4
    assert bytes_moved(1, 2, 1, 1, 2, 1, 1, 4, "fused") == 4 * (4 + 1 + 2 + 8) + 4 * 4
    assert bytes_moved(1, 2, 1, 1, 2, 1, 1, 4, "two_kernel") == 4 * (4 + 1 + 4 * 4 + 2 + 8)
    # materialised: dn + Cn + (d+C)Pn + 3(d+C)PN + dN + 4PN + CN = 1+2+3+36+4+16+8
    assert bytes_moved(1, 2, 1, 1, 2, 1, 1, 4, "materialised") == 4 * 70


@normal_only
@pytest.mark.parametrize("dtype_bytes", [2, 4])
@pytest.mark.parametrize("B,C,d,K,s,H,W", [(2, 256, 32, 5, 2, 64, 64), (1, 64, 8, 3, 4, 32, 48),
                                           (1, 512, 64, 7, 2, 16, 16), (1, 1, 1, 1, 1, 5, 5)])
def test_traffic_ordering(B, C, d, K, s, H, W, dtype_bytes):
    from sapa.traffic import bytes_moved, bytes_breakdown

    f, t, m = (bytes_moved(B, C, d, K, s, H, W, dtype_bytes, meth)
               for meth in ("fused", "two_kernel", "materialised"))
    assert 0 < f <= t <= m
    assert sum(bytes_breakdown(B, C, d, K, s, H, W, dtype_bytes, "fused").values()) == f
    with pytest.raises(ValueError):
        bytes_moved(B, C, d, K, s, H, W, dtype_bytes, "bogus")


@normal_only
@pytest.mark.parametrize("dtype_bytes", [2, 4])
@pytest.mark.parametrize("B,C,d,K,s,H,W", [(2, 256, 32, 5, 2, 64, 64), (1, 3, 5, 3, 3, 4, 7)])
def test_traffic_backward_formula(B, C, d, K, s, H, W, dtype_bytes):
    from sapa.traffic import backward_breakdown, backward_bytes

    N, n, P, b = B * s * H * s * W, B * H * W, K * K, dtype_bytes
    full = b * (3 * d * N + 2 * d * n + 2 * C * n + 2 * C * N) + 4 * N + 6 * 4 * P * N
    assert backward_bytes(B, C, d, K, s, H, W, b) == full
    # only grad_value: q, k, g, stat read; weights written and read back; g read; grad_v written
    only_v = b * (d * N + d * n + C * N) + 4 * N + 2 * 4 * P * N + b * (C * N + C * n)
    assert backward_bytes(B, C, d, K, s, H, W, b, needs=(False, False, True)) == only_v
    parts = [backward_bytes(B, C, d, K, s, H, W, b, needs=nd) for nd in
             [(True, False, False), (False, True, False), (False, False, True), (True, True, True)]]
    assert max(parts[:3]) < parts[3]
    assert sum(backward_breakdown(B, C, d, K, s, H, W, b).values()) == full


@pytest.mark.parametrize("norm,pad", [("softmax", "zeros"), ("softplus", "ignore")])
@interp_only
def test_double_backward_matches_reference(norm, pad):
    """A gradient penalty through the Triton backend: second-order gradients as the reference's."""
    q, k, v, _ = _inputs(1, 3, 4, 3, 4, 6, 9, seed=3)
    q, k, v = (t.float().double() for t in (q, k, v))

    def penalty(backend, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = sapa.sapa_upsample(*leaves, kernel_size=3, normalization=norm, padding=pad, backend=backend)
        (gq,) = torch.autograd.grad(out.square().sum(), leaves[0], create_graph=True)
        return torch.autograd.grad(gq.square().sum(), leaves)

    for a, e in zip(penalty("triton", torch.float32), penalty("reference", torch.float64)):
        scale = max(e.abs().max().item(), 1.0)
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4 * scale)


# keep only the tests of this process's mode (no pile of "skipped" in either run)
for _name, _obj in list(globals().items()):
    if _name.startswith("test_") and getattr(_obj, "_sapa_mode", None) == (
        "normal" if IN_INTERPRETER else "interp"
    ):
        del globals()[_name]

