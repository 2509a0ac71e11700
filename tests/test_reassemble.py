"""``sapa.upsamplers.reassemble`` on the fused C++ CPU kernels (sapa.backends.cpp) against its
PyTorch path and an independent float64 reference: forward, both gradients, the fallbacks.

The extension is the SAPA backend's (one build per source version and machine, cached in
PyTorch's extensions directory); a failed build fails these tests with the reason.
"""
import pytest
import torch
import torch.nn.functional as F

import sapa
from sapa.backends import cpp
from sapa.upsamplers import base, build_upsampler, reassemble

pytestmark = pytest.mark.usefixtures("one_thread")

# (B, C, H, W, H', W'): integer ratios 1, 2, 3, 4 and 2 x 3; non-integer sizes; 1-pixel and
# 2-pixel maps (smaller than K); widths that are not a multiple of the vector width; C = 1
SHAPES = [
    (2, 3, 5, 6, 5, 6),
    (2, 4, 5, 7, 10, 14),
    (1, 3, 4, 3, 12, 9),
    (1, 2, 3, 5, 12, 20),
    (2, 5, 6, 4, 12, 12),
    (2, 3, 5, 6, 11, 13),
    (1, 4, 4, 7, 9, 8),
    (1, 1, 1, 1, 3, 2),
    (2, 1, 2, 2, 4, 4),
    (1, 17, 9, 21, 20, 45),
]
KS = (1, 3, 5, 7)


@pytest.fixture(scope="module")
def ext():
    mod = cpp.load_extension()
    assert mod is not None, f"the C++ extension did not build: {cpp.build_error()}"
    return mod


def _inputs(B, C, H, W, Hq, Wq, K, dtype=torch.float64):
    x = torch.randn(B, C, H, W, dtype=torch.float64).to(dtype)
    k = torch.randn(B, K * K, Hq, Wq, dtype=torch.float64).to(dtype)
    go = torch.randn(B, C, Hq, Wq, dtype=torch.float64).to(dtype)
    return x, k, go


def _reference(x, k, K):
    """Independent float64 formulation: unfold, then index the window centres."""
    B, C, H, W = x.shape
    Hq, Wq = k.shape[-2:]
    rows, cols = sapa.window_centres(Hq, H), sapa.window_centres(Wq, W)
    unf = F.unfold(x, K, padding=K // 2).view(B, C, K * K, H, W)[..., rows, :][..., cols]
    return torch.einsum("bkhw,bckhw->bchw", k, unf)


def _with_grads(fn, x, k, go, K):
    x, k = x.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    out = fn(x, k, K)
    gx, gk = torch.autograd.grad(out, (x, k), go)
    return out.detach(), gx, gk


def _is_cpp(out):
    return type(out.grad_fn).__name__ == "_CppReassembleBackward"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpp_equals_torch_path_and_float64_reference(ext, shape, K, dtype):
    x, k, go = _inputs(*shape, K, dtype)
    probe = reassemble(x.clone().requires_grad_(), k, K)
    assert _is_cpp(probe)
    fast = _with_grads(reassemble, x, k, go, K)
    torch_path = _with_grads(base._reassemble_torch, x, k, go, K)
    ref = _with_grads(_reference, x.double(), k.double(), go.double(), K)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for name, a, b, r in zip(("out", "grad_x", "grad_kernels"), fast, torch_path, ref):
        assert a.dtype == dtype and a.shape == r.shape, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name} vs the PyTorch path: {m}")
        torch.testing.assert_close(a, r.to(dtype), **tol, msg=lambda m: f"{name} vs float64: {m}")


@pytest.mark.parametrize("need", [(True, False), (False, True)])
def test_one_gradient_only(ext, need):
    x, k, go = _inputs(2, 3, 5, 4, 10, 8, 5)
    xs, ks = x.clone().requires_grad_(need[0]), k.clone().requires_grad_(need[1])
    out = reassemble(xs, ks, 5)
    (g,) = torch.autograd.grad(out, xs if need[0] else ks, go)
    _, gx, gk = _with_grads(_reference, x, k, go, 5)
    torch.testing.assert_close(g, gx if need[0] else gk)


def test_no_grad_forward(ext):
    x, k, _ = _inputs(2, 3, 4, 4, 8, 8, 3)
    with torch.no_grad():
        out = reassemble(x, k, 3)
    torch.testing.assert_close(out, _reference(x, k, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_zero_and_zero_channels(ext, dtype):
    for B, C in ((0, 3), (2, 0)):
        x, k, go = _inputs(B, C, 4, 5, 8, 10, 5, dtype)
        out, gx, gk = _with_grads(reassemble, x, k, go, 5)
        assert out.shape == (B, C, 8, 10) and gx.shape == x.shape and gk.shape == k.shape
        assert not gx.any() and not gk.any()


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous_inputs(ext, layout):
    x, k, go = _inputs(2, 4, 6, 5, 12, 10, 5)
    if layout == "channels_last":
        xs, ks = x.contiguous(memory_format=torch.channels_last), k.contiguous(memory_format=torch.channels_last)
        gos = go.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":  # (B, C, W, H) storage seen as (B, C, H, W)
        xs, ks, gos = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (x, k, go))
    else:
        xs = torch.randn(2, 8, 6, 10, dtype=x.dtype)[:, ::2, :, ::2].copy_(x)
        ks = torch.randn(2, 50, 12, 10, dtype=k.dtype)[:, 25:].copy_(k)
        gos = torch.randn(2, 4, 24, 10, dtype=go.dtype)[:, :, ::2].copy_(go)
    assert not (xs.is_contiguous() and ks.is_contiguous() and gos.is_contiguous())
    fast = _with_grads(reassemble, xs, ks, gos, 5)
    ref = _with_grads(_reference, x, k, go, 5)
    for a, r in zip(fast, ref):
        torch.testing.assert_close(a, r)


def test_gradcheck_and_gradgradcheck(ext):
    x = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 9, 6, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: reassemble(a, b, 3)  # noqa: E731
    assert _is_cpp(fn(x, k))
    assert torch.autograd.gradcheck(fn, (x, k))
    assert torch.autograd.gradgradcheck(fn, (x, k))


def test_forward_mode_ad(ext):
    import torch.autograd.forward_ad as fwAD

    x, k, _ = _inputs(2, 3, 4, 5, 8, 10, 5)
    tx, tk = torch.randn_like(x), torch.randn_like(k)
    with fwAD.dual_level():
        out = reassemble(fwAD.make_dual(x, tx), fwAD.make_dual(k, tk), 5)
        tangent = fwAD.unpack_dual(out).tangent
    torch.testing.assert_close(tangent, _reference(tx, k, 5) + _reference(x, tk, 5))


def test_double_backward_through_carafe_equals_the_torch_path(ext, monkeypatch):
    """create_graph=True: the backward recomputes the PyTorch path; a gradient penalty's
    gradients equal those of the pure PyTorch path."""
    m = build_upsampler("carafe", 6, compressed_channels=8, kernel_size=5).double()
    with torch.no_grad():
        m.encoder.weight.normal_(0, 0.3)
    x0 = torch.randn(2, 6, 5, 4, dtype=torch.float64)

    def penalty_grads():
        x = x0.clone().requires_grad_()
        out = m(x)
        (gx,) = torch.autograd.grad((out * out.detach().sin()).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), (x, *m.parameters()))

    fast = penalty_grads()
    monkeypatch.setattr(base, "_cpp_path", lambda *a: False)
    slow = penalty_grads()
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b)


def test_same_bits_for_one_and_two_threads(ext):
    x, k, go = _inputs(3, 5, 7, 9, 14, 19, 5, torch.float32)
    results = []
    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_with_grads(reassemble, x, k, go, 5))
    finally:
        torch.set_num_threads(n)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_fallback_without_the_extension(monkeypatch):
    monkeypatch.setattr(cpp, "load_extension", lambda *a, **kw: None)
    x, k, go = _inputs(2, 3, 4, 5, 8, 10, 3)
    xs = x.clone().requires_grad_()
    out = reassemble(xs, k, 3)
    assert not _is_cpp(out) and out.grad_fn is not None
    torch.testing.assert_close(out, _reference(x, k, 3))


def test_torch_path_under_dispatch_modes_functorch_and_meta(ext):
    """FlopCounterMode (sapa.complexity), torch.func and meta tensors take the PyTorch path."""
    from torch.utils.flop_counter import FlopCounterMode

    x, k, go = _inputs(2, 3, 4, 5, 8, 10, 3)
    with FlopCounterMode(display=False) as counter:
        out = reassemble(x.clone().requires_grad_(), k, 3)
    assert not _is_cpp(out) and counter.get_total_flops() == 0  # the gather path: no matmul
    torch.testing.assert_close(out, _reference(x, k, 3))
    g = torch.func.grad(lambda a: (reassemble(a, k, 3) * go).sum())(x)
    torch.testing.assert_close(g, _with_grads(_reference, x, k, go, 3)[1])
    meta = reassemble(x.to("meta"), k.to("meta"), 3)
    assert meta.is_meta and meta.shape == (2, 3, 8, 10)
    traced = torch.jit.trace(lambda a, b: reassemble(a, b, 3), (x, k))
    torch.testing.assert_close(traced(x, k), _reference(x, k, 3))


def test_complexity_counts_unchanged(ext, monkeypatch):
    for name in ("carafe", "fade"):
        m = build_upsampler(name, 8, 8)
        x, y = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 12, 12)
        counts = sapa.complexity.count_flops(m, x, y)
        monkeypatch.setattr(base, "_cpp_path", lambda *a: False)
        assert sapa.complexity.count_flops(m, x, y) == counts
        monkeypatch.undo()


def test_compile_fullgraph_carafe(ext):
    m = build_upsampler("carafe", 8, compressed_channels=8)
    x = torch.randn(2, 8, 6, 7)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    xs = x.clone().requires_grad_()
    out = compiled(xs)
    (gx,) = torch.autograd.grad(out.square().sum(), xs)
    xe = x.clone().requires_grad_()
    ref = m(xe)
    assert _is_cpp(ref)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, torch.autograd.grad(ref.square().sum(), xe)[0])
