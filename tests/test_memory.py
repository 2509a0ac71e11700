"""What an ordinary (first-order) training step keeps for the backward, on every CPU backend and
through every autograd wrapper (the eager fast path, the registered op, ``UpsampleFunction``).

Deterministic: the tensors saved for the backward are recorded with
``torch.autograd.graph.saved_tensors_hooks`` (no timing, no resident-set readings). A fused
backend's first-order backward reads the inputs (and its per-pixel statistic) only; the
output (B, C, H', W'), the largest tensor of the op, must not be kept alive by the graph.
Derivatives beyond the first order (``create_graph=True``) may save more: they recompute
the standard-op formulation in the backward, and are checked against the reference here.
"""
from __future__ import annotations

import pytest
import torch

import sapa
from sapa.library import UpsampleFunction

K = 3


def _fused_cpu_backends():
    names = ["torch"]
    if sapa.backends.resolve_backend("auto", torch.zeros(1)).name == "cpp":
        names.append("cpp")
    else:  # the extension did not build here: say so rather than pass silently
        names.append(pytest.param("cpp", marks=pytest.mark.skip(reason="the C++ extension is unavailable")))
    return names


def _qkv(dtype=torch.float32, seed=0, B=2, d=4, C=16, H=6, W=7, Hq=12, Wq=14):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, d, Hq, Wq), (B, d, H, W), (B, C, H, W))
    return tuple(torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Saved:
    """Records every tensor autograd saves while active: (storage pointer, bytes of the storage)."""

    def __init__(self):
        self.items = []

    def pack(self, t):
        self.items.append((_storage(t), t.untyped_storage().nbytes(), tuple(t.shape)))
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    @property
    def storages(self):
        return {p: n for p, n, _ in self.items}

    @property
    def bytes(self) -> int:
        """Bytes of the distinct storages kept (a storage saved twice counts once)."""
        return sum(self.storages.values())


def _wrappers(backend):
    """The three autograd routes to a backend, as functions (q, k, v) -> out."""
    return {
        "eager": lambda q, k, v: sapa.sapa_upsample(q, k, v, K, "softmax", "zeros", backend=backend),
        "op": lambda q, k, v: torch.ops.sapa.upsample(q, k, v, K, "softmax", "zeros", backend)[0],
        "function": lambda q, k, v: UpsampleFunction.apply(q, k, v, K, "softmax", "zeros", backend)[0],
    }


@pytest.mark.parametrize("route", ["eager", "op", "function"])
@pytest.mark.parametrize("backend", _fused_cpu_backends())
def test_first_order_step_saves_the_inputs_and_stats_only(backend, route, one_thread):
    q, k, v = _qkv()
    with _Saved() as saved:
        out = _wrappers(backend)[route](q, k, v)
    inputs = {_storage(t): t.untyped_storage().nbytes() for t in (q, k, v)}
    B, _, Hq, Wq = q.shape
    stats = 4 * B * Hq * Wq  # at most one float32 per output pixel (e.g. a log-sum-exp)
    assert saved.items, "nothing saved: the backward could not run"
    assert _storage(out) not in saved.storages, (
        f"the output {tuple(out.shape)} is kept for a backward that does not read it")
    extra = {p: n for p, n in saved.storages.items() if p not in inputs}
    assert sum(extra.values()) <= stats, f"saved besides the inputs: {saved.items}"
    assert saved.bytes <= sum(inputs.values()) + stats
    # the first-order backward itself builds no graph: nothing more is saved while it runs
    with _Saved() as during_backward:
        out.backward(torch.randn_like(out))
    assert during_backward.items == []
    assert all(t.grad is not None and t.grad.shape == t.shape for t in (q, k, v))


@pytest.mark.parametrize("backend", _fused_cpu_backends())
def test_first_order_keeps_less_than_second_order_and_than_the_reference(backend, one_thread):
    """The cost of higher derivatives is paid by the step that asks for them, not by every step."""
    q, k, v = _qkv()
    f = _wrappers(backend)["eager"]
    with _Saved() as first:
        out = f(q, k, v)
    g = torch.randn_like(out)
    with _Saved() as second:  # the graph of a differentiable backward (a gradient penalty)
        torch.autograd.grad(out, (q, k, v), g, create_graph=True)
    with _Saved() as reference:  # autograd through the materialising formulation
        sapa.sapa_upsample(q, k, v, K, backend="reference")
    assert 0 < first.bytes < second.bytes
    assert second.bytes > out.untyped_storage().nbytes()  # it recomputes: grad_out and more are kept
    assert first.bytes < reference.bytes


@pytest.mark.parametrize("route", ["eager", "op", "function"])
@pytest.mark.parametrize("backend", _fused_cpu_backends())
def test_second_order_after_a_lean_forward_matches_reference(backend, route, one_thread):
    """create_graph=True then .backward(): float64 second-order gradients equal the reference's."""
    q, k, v = _qkv(dtype=torch.float64, seed=1, B=1, C=3, H=3, W=4, Hq=7, Wq=8)
    w = tuple(torch.randn_like(t) for t in (q, k, v))

    def second_order(f):
        out = f(q, k, v)
        g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads = torch.autograd.grad(out, (q, k, v), g, create_graph=True)
        penalty = sum((a * c).sum() for a, c in zip(grads, w)) + sum(a.square().sum() for a in grads)
        for t in (q, k, v):
            t.grad = None
        penalty.backward()
        return grads, tuple(t.grad.clone() for t in (q, k, v))

    grads, second = second_order(_wrappers(backend)[route])
    ref_grads, ref_second = second_order(_wrappers("reference")["eager"])
    torch.testing.assert_close(grads, ref_grads)
    for a, b in zip(second, ref_second):
        assert b.norm() > 0
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("needs_out", [False, True])
def test_a_backend_that_reads_the_output_gets_it_kept(needs_out, one_thread):
    """``needs_out`` (register_backend / NEEDS_OUT) decides whether the graph keeps the output."""
    from sapa.backends import _BACKENDS, get_backend, register_backend

    torch_be = get_backend("torch")
    seen = []

    def backward(grad_out, query, key, value, out, stat, *args):
        seen.append(tuple(out.shape))
        return torch_be.backward(grad_out, query, key, value, out, stat, *args)

    name = f"test_needs_out_{needs_out}"
    register_backend(name, torch_be.forward, backward, needs_out=needs_out)
    try:
        q, k, v = _qkv()
        for route, f in _wrappers(name).items():
            with _Saved() as saved:
                out = f(q, k, v)
            assert (_storage(out) in saved.storages) == needs_out, route
            grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
            ref = torch.autograd.grad(sapa.sapa_upsample(q, k, v, K, backend="torch"), (q, k, v),
                                      torch.ones_like(out))
            torch.testing.assert_close(grads, ref)
        assert seen == [tuple(out.shape) if needs_out else (0,)] * 3
    finally:
        _BACKENDS.pop(name, None)
