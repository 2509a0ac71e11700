"""Derivatives beyond the first order on every backend: double backward (gradient penalties),
forward mode (torch.func.jvp, jacfwd, hessian, forward_ad), and torch.compile of a double
backward (works, or errors clearly: never a silent wrong answer)."""
from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import sapa
from _kink import away_from_kink
from sapa._checks import NORMALIZATIONS, PADDINGS


def _cpu_backends():
    names = ["reference", "torch"]
    if sapa.backends.resolve_backend("auto", torch.zeros(1)).name == "cpp":
        names.append("cpp")
    return names


def _qkv(B=1, d=2, C=2, H=2, W=3, Hq=4, Wq=5, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, d, Hq, Wq), (B, d, H, W), (B, C, H, W))
    return tuple(torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(requires_grad) for s in shapes)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("backend", _cpu_backends())
def test_gradgradcheck(backend, normalization, padding, one_thread):
    q, k, v = _qkv(seed=10 * NORMALIZATIONS.index(normalization) + PADDINGS.index(padding))
    if normalization == "relu":  # every in-map logit q . k away from relu's kink (finite differences)
        away_from_kink(q, k, 3)

    def f(q, k, v):
        return sapa.sapa_upsample(q, k, v, 3, normalization, padding, backend=backend)

    assert torch.autograd.gradgradcheck(f, (q, k, v))


def _penalised_grads(backend, variant="G"):
    torch.manual_seed(0)
    m = sapa.SAPA(8, 4, variant=variant, kernel_size=3, embedding_dim=6, backend=backend).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 11, 13, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(m(x, y).sum(), x, create_graph=True)
    gx.square().sum().backward()
    return {n: p.grad for n, p in m.named_parameters()}


@pytest.mark.parametrize("backend", [b for b in _cpu_backends() if b != "reference"])
def test_gradient_penalty_through_the_module_matches_reference(backend, one_thread):
    expected = _penalised_grads("reference")
    got = _penalised_grads(backend)
    assert set(got) == set(expected)
    for n in expected:
        assert expected[n] is not None and expected[n].norm() > 1
        torch.testing.assert_close(got[n], expected[n], msg=lambda s: f"{n}: {s}")


@pytest.mark.parametrize("backend", _cpu_backends())
def test_forward_mode_matches_reference(backend, one_thread):
    q, k, v = _qkv(H=3, W=3, Hq=6, Wq=5, requires_grad=False)
    tangents = tuple(torch.randn_like(t) for t in (q, k, v))

    def f(backend):
        return lambda q, k, v: sapa.sapa_upsample(q, k, v, 3, "softmax", "ignore", backend=backend)

    ref_out, ref_tan = torch.func.jvp(f("reference"), (q, k, v), tangents)
    out, tan = torch.func.jvp(f(backend), (q, k, v), tangents)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tan, ref_tan)
    with fwAD.dual_level():  # plain forward AD (dual tensors), the eager path
        dual = fwAD.unpack_dual(f(backend)(*(fwAD.make_dual(p, t) for p, t in zip((q, k, v), tangents))))
        torch.testing.assert_close(dual.tangent, ref_tan)
    jf = torch.func.jacfwd(f(backend), argnums=(0, 1, 2))(q, k, v)
    jr = torch.func.jacrev(f("reference"), argnums=(0, 1, 2))(q, k, v)
    torch.testing.assert_close(jf, jr)

    def loss(backend):
        return lambda q: f(backend)(q, k, v).square().sum()

    torch.testing.assert_close(torch.func.hessian(loss(backend))(q), torch.func.hessian(loss("reference"))(q))
    gg = torch.func.grad(lambda q: torch.func.grad(loss(backend))(q).square().sum())(q)
    gg_ref = torch.func.grad(lambda q: torch.func.grad(loss("reference"))(q).square().sum())(q)
    torch.testing.assert_close(gg, gg_ref)


def test_double_backward_through_the_op():
    """The registered op (tracing, export, fake tensors use it) is twice differentiable too."""
    q, k, v = _qkv()
    out = torch.ops.sapa.upsample(q, k, v, 3, "softplus", "zeros", "torch")[0]
    ref = sapa.sapa_upsample(q, k, v, 3, "softplus", "zeros", backend="reference")
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g, create_graph=True)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g, create_graph=True)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    w = [torch.randn_like(t) for t in grads]
    second = torch.autograd.grad(sum((a * c).sum() for a, c in zip(grads, w)), (q, k, v))
    second_ref = torch.autograd.grad(sum((a * c).sum() for a, c in zip(ref_grads, w)), (q, k, v))
    torch.testing.assert_close(second, second_ref)


def test_compile_of_a_double_backward_errors_clearly():
    """AOTAutograd has no double backward: torch says so (no silent wrong answer)."""
    q, k, v = _qkv()
    f = torch.compile(lambda q, k, v: sapa.sapa_upsample(q, k, v, 3, backend="torch"), backend="aot_eager")
    with pytest.raises(RuntimeError, match="double backward"):
        (gq,) = torch.autograd.grad(f(q, k, v).sum(), q, create_graph=True)
        torch.autograd.grad(gq.square().sum(), q)
