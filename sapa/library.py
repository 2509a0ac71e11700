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
    a gradient that is not needed comes back as an empty (0,) tensor.

Shapes depend on the input shapes only (no ``.item()``), so meta tensors, ``FakeTensorMode``,
``torch.export`` and ``dynamic=True`` compilation work. The autograd formula calls the
backward op, so ``torch.func`` transforms compose: ``vmap`` (rule below: the vmapped
dimension is folded into the batch, every batch item being independent), ``grad``,
``jacrev``, ``functional_call``. A custom op's own autograd wrapper does not support the
``torch.func`` gradient transforms, so under them :func:`sapa.sapa_upsample` calls the ops
through :class:`UpsampleFunction` (an ``autograd.Function`` with ``setup_context`` and a
generated vmap rule) instead. Double backward is not implemented.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .backends import get_backend

__all__ = ["upsample", "upsample_backward", "UpsampleFunction"]


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
    ctx.save_for_backward(query, key, value, out, stat)
    ctx.cfg = (kernel_size, normalization, padding, backend)
    ctx.mark_non_differentiable(stat)


def _backward(ctx, grad_out, grad_stat):
    query, key, value, out, stat = ctx.saved_tensors
    needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
    grads = torch.ops.sapa.upsample_backward(grad_out, query, key, value, out, stat, *ctx.cfg, *needs)
    return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 4


upsample.register_autograd(_backward, setup_context=_setup_context)


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

    @staticmethod
    def backward(ctx, grad_out, grad_stat):
        query, key, value, out, stat = ctx.saved_tensors
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
        grads = _BackwardFunction.apply(grad_out, query, key, value, out, stat, *ctx.cfg, *needs)
        return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 4


class _BackwardFunction(torch.autograd.Function):
    """``sapa::upsample_backward`` for :class:`UpsampleFunction`; not differentiable itself."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return torch.ops.sapa.upsample_backward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("sapa::upsample_backward is not differentiable (no double backward)")


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
    tensors = (grad_out, query, key, value, out)
    g, q, k, v, o = (_fold(t, d, n) for t, d in zip(tensors, in_dims[:5]))
    if stat.numel() == 0:
        s = stat.new_empty(0)
    else:
        s = _fold(stat, in_dims[5], n)
    grads = torch.ops.sapa.upsample_backward(g, q, k, v, o, s, kernel_size, normalization, padding, backend,
                                             need_query, need_key, need_value)
    return tuple(_unfold(t, n) for t in grads), (0, 0, 0)


upsample.register_vmap(_upsample_vmap)
upsample_backward.register_vmap(_upsample_backward_vmap)
