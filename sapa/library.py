"""``torch.library`` registration of the operator: ``sapa::upsample`` and its backward.

The two ops are opaque to ``torch.compile`` and ``torch.export``: they see one node with a
fake (shape-only) implementation, an autograd formula and a vmap rule, and never trace into
a backend. A backend (``sapa.backends``) is chosen by :func:`sapa.sapa_upsample` before the
call and passed to the ops by name.

``sapa::upsample(query, key, value, kernel_size, normalization, padding, backend) -> (out, stat)``
    query (B, d, H', W'), key (B, d, H, W), value (B, C, H, W) -> out (B, C, H', W') and
    the float32 statistic the backend's backward needs ((B, H'*W') or (0,)).
``sapa::upsample_backward(grad_out, query, key, value, out, stat, kernel_size, normalization,
padding, backend, need_query, need_key, need_value) -> (grad_query, grad_key, grad_value)``
    a gradient that is not needed comes back as an empty (0,) tensor. ``out`` is an empty
    (0,) tensor unless the backend reads it (``needs_out``; no built-in backend does), so
    that the autograd formula keeps only the inputs and ``stat`` from the forward.

Shapes depend on the input shapes only (no ``.item()``), so meta tensors, ``FakeTensorMode``,
``torch.export`` and ``dynamic=True`` compilation work. The autograd formula calls the
backward op, so ``torch.func`` transforms compose: ``vmap`` (rule below: the vmapped
dimension is folded into the batch, every batch item being independent), ``grad``,
``jacrev``, ``functional_call``. A custom op's own autograd wrapper does not support the
``torch.func`` gradient transforms, so under them :func:`sapa.sapa_upsample` calls the ops
through :class:`UpsampleFunction` (an ``autograd.Function`` with ``setup_context`` and a
generated vmap rule) instead.

Higher derivatives. The backends' backward kernels compute first-order gradients only; every
derivative beyond them (double backward, e.g. a gradient penalty with ``create_graph=True``;
forward mode: ``torch.func.jvp``, ``jacfwd``, ``hessian``, ``torch.autograd.forward_ad``)
differentiates the standard-op formulation :func:`sapa.decomposition.shifted_upsample`
instead (same values, no (K*K x C) tensor): ``sapa::upsample_backward`` has an autograd
formula of its own (the vector-Jacobian product of that formulation's gradients), and the
``autograd.Function`` wrappers have ``jvp`` rules. Plain first-order training keeps the
fused kernels and saves only what they read (the inputs and ``stat``); the formulation is
recomputed from the saved inputs inside a backward that runs with ``create_graph=True``, so
only a step that asks for higher derivatives pays for them (``tests/test_memory.py``).

Decomposition. ``torch.export`` keeps the op (opaque, with its fake implementation);
:data:`DECOMPOSITIONS` maps it to :func:`sapa.decomposition.export_upsample` (standard aten
ops): ``ep.run_decompositions(sapa.library.DECOMPOSITIONS)`` gives a graph of aten ops only,
which ``torch.onnx.export`` translates (an exported program that still holds the op cannot be:
"No ONNX function found for sapa.upsample"; exporting the model itself,
``torch.onnx.export(model, args, dynamo=True)``, needs nothing). The decomposition is for
inference graphs: its ``stat`` output is zeros of the right shape (nothing in such a graph
reads it). It is deliberately not registered in ``torch._decomp.decomposition_table``: fake
tensors with symbolic sizes run a registered decomposition instead of the fake
implementation, so ``torch.compile(dynamic=True)`` would guard on the sizes and recompile.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .backends import get_backend
from .decomposition import export_upsample, shifted_upsample

__all__ = ["DECOMPOSITIONS", "upsample", "upsample_backward", "UpsampleFunction", "BackwardFunction", "backward_vjp", "backward_jvp",
           "forward_jvp"]


def _empty_stat(like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=torch.float32)


def _not_needed(like: Tensor) -> Tensor:
    return like.new_empty(0)


@torch.library.custom_op("sapa::upsample", mutates_args=())
def upsample(
    query: Tensor, key: Tensor, value: Tensor, kernel_size: int, normalization: str, padding: str, backend: str
) -> Tuple[Tensor, Tensor]:
    """Run ``backend``'s forward: (out (B, C, H', W'), stat)."""
    out, stat = get_backend(backend).forward(query, key, value, kernel_size, normalization, padding)
    return out, stat


@upsample.register_fake
def _upsample_fake(query, key, value, kernel_size, normalization, padding, backend):
    B, _, Hq, Wq = query.shape
    out = query.new_empty(B, value.shape[1], Hq, Wq)
    if get_backend(backend).saves_stat:
        return out, query.new_empty(B, Hq * Wq, dtype=torch.float32)
    return out, _empty_stat(query)


def _upsample_decomposition(query, key, value, kernel_size, normalization, padding, backend):
    """Standard-op form of ``sapa::upsample`` for decomposed (inference) graphs, e.g. ONNX from
    an exported program. ``stat`` comes back as zeros of the fake implementation's shape."""
    out = export_upsample(query, key, value, kernel_size, normalization, padding)
    return out, torch.zeros_like(_upsample_fake(query, key, value, kernel_size, normalization, padding, backend)[1])


#: ``{sapa::upsample: its standard-op decomposition}``, for ``ExportedProgram.run_decompositions``
DECOMPOSITIONS = {torch.ops.sapa.upsample.default: _upsample_decomposition}


@torch.library.custom_op("sapa::upsample_backward", mutates_args=())
def upsample_backward(
    grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, out: Tensor, stat: Tensor,
    kernel_size: int, normalization: str, padding: str, backend: str,
    need_query: bool, need_key: bool, need_value: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Run ``backend``'s backward: (grad_query, grad_key, grad_value), (0,) where not needed."""
    needs = (need_query, need_key, need_value)
    grads = get_backend(backend).backward(
        grad_out, query, key, value, out, stat, kernel_size, normalization, padding, needs
    )
    return tuple(
        g if need and g is not None else _not_needed(t)  # a fresh tensor: outputs may not alias inputs
        for g, need, t in zip(grads, needs, (query, key, value))
    )


@upsample_backward.register_fake
def _upsample_backward_fake(grad_out, query, key, value, out, stat, kernel_size, normalization, padding,
                            backend, need_query, need_key, need_value):
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format) if need else _not_needed(t)
        for t, need in zip((query, key, value), (need_query, need_key, need_value))
    )


def _setup_context(ctx, inputs, output):
    query, key, value, kernel_size, normalization, padding, backend = inputs
    out, stat = output
    # the output is kept only for a backward that reads it (none built in does): a first-order
    # step keeps the inputs and stat; a double backward recomputes from the inputs
    keep_out = get_backend(backend).needs_out
    ctx.save_for_backward(query, key, value, stat, *((out,) if keep_out else ()))
    ctx.cfg = (kernel_size, normalization, padding, backend)
    ctx.mark_non_differentiable(stat)


def _saved_for_backward(ctx) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(query, key, value, out, stat) of a forward's context; ``out`` is an empty (0,) tensor
    unless the backend's ``needs_out`` made the forward keep it."""
    query, key, value, stat, *out = ctx.saved_tensors
    return query, key, value, (out[0] if out else _not_needed(query)), stat


def _backward(ctx, grad_out, grad_stat):
    query, key, value, out, stat = _saved_for_backward(ctx)
    needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
    grads = torch.ops.sapa.upsample_backward(grad_out, query, key, value, out, stat, *ctx.cfg, *needs)
    return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 4


upsample.register_autograd(_backward, setup_context=_setup_context)


# ---- derivatives beyond the first order: through the standard-op formulation -----------
def _formula_grads(cfg, grad_out, query, key, value):
    """(grad_query, grad_key, grad_value) of :func:`shifted_upsample`: differentiable again."""
    kernel_size, normalization, padding = cfg

    def f(q, k, v):
        return shifted_upsample(q, k, v, kernel_size, normalization, padding)

    return torch.func.vjp(f, query, key, value)[1](grad_out.to(query.dtype))


def _placeholders(grads, needs, like):
    """Not-needed gradients as the ops' (0,) placeholders."""
    return tuple(g if need else _not_needed(t) for g, need, t in zip(grads, needs, like))


def _cotangents(cots, needs, like):
    return tuple(
        (c if c is not None else torch.zeros_like(t)) for c, need, t in zip(cots, needs, like) if need
    )


def backward_vjp(cfg, needs, saved, cots):
    """Vector-Jacobian product of the backward: cotangents of (grad_query, grad_key, grad_value)
    -> gradients w.r.t. (grad_out, query, key, value); ``saved`` = those four tensors."""
    grad_out, query, key, value = saved

    def first(g, q, k, v):
        grads = _formula_grads(cfg, g, q, k, v)
        return tuple(gr for gr, need in zip(grads, needs) if need)

    primal = (grad_out, query, key, value)
    _, pull = torch.func.vjp(first, *primal)
    return pull(_cotangents(cots, needs, (query, key, value)))


def _jvp_by_vjp(fn, primals, tangents):
    """Jacobian-vector product of ``fn`` at ``primals`` from two reverse-mode products (the vjp
    is linear in its cotangent; the vjp of that map is the jvp), so that it also runs inside
    ``torch.autograd.forward_ad``, where forward mode cannot nest."""
    tangents = tuple(t if t is not None else torch.zeros_like(p) for t, p in zip(tangents, primals))
    outs, pull = torch.func.vjp(fn, *primals)
    dummy = tuple(torch.zeros_like(o) for o in outs) if isinstance(outs, tuple) else torch.zeros_like(outs)
    _, pull_pull = torch.func.vjp(pull, dummy)
    (tan,) = pull_pull(tangents)
    return tan


def backward_jvp(cfg, needs, saved, tangents):
    """Jacobian-vector product of the backward: tangents of (grad_out, query, key, value)
    -> tangents of (grad_query, grad_key, grad_value) ((0,) where not needed)."""

    def first(g, q, k, v):
        return _formula_grads(cfg, g, q, k, v)

    return _placeholders(_jvp_by_vjp(first, tuple(saved), tangents), needs, saved[1:])


def forward_jvp(cfg, saved, tangents):
    """Tangent of the output given tangents of (query, key, value) (None = zero)."""

    def f(q, k, v):
        return shifted_upsample(q, k, v, *cfg)

    return _jvp_by_vjp(f, tuple(saved), tangents)


def _setup_backward_context(ctx, inputs, output):
    grad_out, query, key, value = inputs[:4]
    ctx.save_for_backward(grad_out, query, key, value)
    ctx.cfg = tuple(inputs[6:9])
    ctx.needs = tuple(bool(n) for n in inputs[10:13])


def _backward_backward(ctx, grad_query, grad_key, grad_value):
    grads = backward_vjp(ctx.cfg, ctx.needs, ctx.saved_tensors, (grad_query, grad_key, grad_value))
    return tuple(grads) + (None,) * 9  # out, stat (the formula recomputes them) and the options


upsample_backward.register_autograd(_backward_backward, setup_context=_setup_backward_context)


class UpsampleFunction(torch.autograd.Function):
    """``sapa::upsample`` and its backward op as an ``autograd.Function`` (for ``torch.func``).

    ``UpsampleFunction.apply(query, key, value, kernel_size, normalization, padding, backend)``
    returns ``(out, stat)`` like the op.
    """

    generate_vmap_rule = True  # both ops have vmap rules

    @staticmethod
    def forward(query, key, value, kernel_size, normalization, padding, backend):
        return torch.ops.sapa.upsample(query, key, value, kernel_size, normalization, padding, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:3])
        ctx.jvp_cfg = tuple(inputs[3:6])

    @staticmethod
    def jvp(ctx, d_query, d_key, d_value, *_):
        saved = ctx.saved_tensors[:3]
        return forward_jvp(ctx.jvp_cfg, saved, (d_query, d_key, d_value)), None

    @staticmethod
    def backward(ctx, grad_out, grad_stat):
        query, key, value, out, stat = _saved_for_backward(ctx)
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
        grads = BackwardFunction.apply(grad_out, query, key, value, out, stat, *ctx.cfg, *needs)
        return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 4


class BackwardFunction(torch.autograd.Function):
    """``sapa::upsample_backward`` as an ``autograd.Function``: differentiable (reverse and
    forward mode) through :func:`backward_vjp` / :func:`backward_jvp`.

    ``BackwardFunction.apply(grad_out, query, key, value, out, stat, kernel_size,
    normalization, padding, backend, need_query, need_key, need_value)`` returns the op's
    (grad_query, grad_key, grad_value).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return torch.ops.sapa.upsample_backward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_backward_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:4])

    @staticmethod
    def backward(ctx, *grads):
        return _backward_backward(ctx, *grads)

    @staticmethod
    def jvp(ctx, d_grad_out, d_query, d_key, d_value, *_):
        return backward_jvp(ctx.cfg, ctx.needs, ctx.saved_tensors, (d_grad_out, d_query, d_key, d_value))



# ---- vmap: fold the vmapped dimension into the batch ----------------------------------
def _fold(t: Tensor, dim, n: int) -> Tensor:
    """(..., at ``dim``: n, ...) or unbatched -> (n * B, ...)."""
    t = t.unsqueeze(0).expand(n, *t.shape) if dim is None else t.movedim(dim, 0)
    return t.reshape(n * t.shape[1], *t.shape[2:])


def _unfold(t: Tensor, n: int) -> Tensor:
    """(n * B, ...) -> (n, B, ...); the (0,) placeholders become (n, 0)."""
    if t.dim() == 1 and t.numel() == 0:
        return t.new_empty(n, 0)
    return t.reshape(n, t.shape[0] // n, *t.shape[1:])


def _upsample_vmap(info, in_dims, query, key, value, kernel_size, normalization, padding, backend):
    n = info.batch_size
    q, k, v = (_fold(t, d, n) for t, d in zip((query, key, value), in_dims[:3]))
    out, stat = torch.ops.sapa.upsample(q, k, v, kernel_size, normalization, padding, backend)
    return (_unfold(out, n), _unfold(stat, n)), (0, 0)


def _upsample_backward_vmap(info, in_dims, grad_out, query, key, value, out, stat, kernel_size,
                            normalization, padding, backend, need_query, need_key, need_value):
    n = info.batch_size
    tensors = (grad_out, query, key, value)
    g, q, k, v = (_fold(t, d, n) for t, d in zip(tensors, in_dims[:4]))
    # out and stat may be (0,) placeholders (not kept by the forward, no statistic)
    o = out.new_empty(0) if out.numel() == 0 else _fold(out, in_dims[4], n)
    s = stat.new_empty(0) if stat.numel() == 0 else _fold(stat, in_dims[5], n)
    grads = torch.ops.sapa.upsample_backward(g, q, k, v, o, s, kernel_size, normalization, padding, backend,
                                             need_query, need_key, need_value)
    return tuple(_unfold(t, n) for t in grads), (0, 0, 0)


upsample.register_vmap(_upsample_vmap)
upsample_backward.register_vmap(_upsample_backward_vmap)
