"""The SAPA operator: similarity-aware kernels and feature assembly (paper Eq. 2-3).

``sapa_upsample(query, key, value)`` computes, for every output pixel ``l' = (i, j)``,

    centre  l  = (floor(i * H / H'), floor(j * W / W'))
    logits  s_p = <query[:, :, i, j], key[:, :, l + p]>          p in the K x K window
    weights w_p = h(s_p) / (sum_q h(s_q) + eps)   (softmax for h = exp)
    output      = sum_p w_p * value[:, :, l + p]

This module validates the arguments and dispatches to a backend (``sapa.backends``):

``"reference"``  unfold + einsum, materialises the (B, C, K*K, H', W') gathered values.
                 The teaching version and the test oracle.
``"torch"``      pure PyTorch, any device, memory-efficient (phase-grouped row chunks).
``"triton"``     the fused GPU kernels (``sapa.backends.triton``), when Triton imports.
``"cpp"``        fused C++ CPU kernels (``sapa.backends.cpp``), float32/float64, built on first use.
``"auto"``       ``"triton"`` for CUDA tensors when available, ``"cpp"`` for float32/float64
                 CPU tensors when it builds, otherwise ``"torch"``.
"""
from __future__ import annotations

import torch

from ._checks import NORMALIZATIONS, PADDINGS, check_choice, check_kernel_size, check_qkv, check_tensor
from .backends import Backend, check_backend_name, resolve_backend
from .backends.reference import reference_weights
from .normalize import compute_dtype

__all__ = ["sapa_upsample", "sapa_kernels"]


def sapa_kernels(
    query: torch.Tensor, key: torch.Tensor, kernel_size: int = 5, normalization: str = "softmax",
    padding: str = "zeros",
) -> torch.Tensor:
    """The upsampling kernels of :func:`sapa_upsample`: (B, K*K, H', W') weights.

    query (B, d, H', W'), key (B, d, H, W). Entry p = dy * K + dx weighs the low-res pixel
    centre + (dy - K//2, dx - K//2). Materialises the weights (for inspection and plots).
    """
    check_tensor("key", key)
    value = key.new_empty(key.shape[0], 1, *key.shape[-2:])
    check_qkv(query, key, value)
    kernel_size = check_kernel_size(kernel_size)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("padding", padding, PADDINGS)
    ct = compute_dtype(query.dtype)
    return reference_weights(query.to(ct), key.to(ct), kernel_size, normalization, padding).to(query.dtype)


class _SapaFn(torch.autograd.Function):
    """Autograd glue around a backend's forward and backward functions."""

    @staticmethod
    def forward(ctx, query, key, value, kernel_size, normalization, padding, be: Backend):
        out, stat = be.forward(query, key, value, kernel_size, normalization, padding)
        ctx.save_for_backward(query, key, value, out, stat)
        ctx.cfg = (kernel_size, normalization, padding, be)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, stat = ctx.saved_tensors
        kernel_size, normalization, padding, be = ctx.cfg
        grads = be.backward(grad_out, query, key, value, out, stat, kernel_size, normalization, padding,
                            tuple(ctx.needs_input_grad[:3]))
        return (*grads, None, None, None, None)


def sapa_upsample(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int = 5,
    normalization: str = "softmax",
    padding: str = "zeros",
    backend: str = "auto",
) -> torch.Tensor:
    """Similarity-aware upsampling of ``value`` to the size of ``query``.

    Args:
        query: (B, d, H', W') embedding of the high-res guide (encoder feature).
        key:   (B, d, H, W) embedding of the low-res feature.
        value: (B, C, H, W) low-res feature to upsample (the raw decoder feature in SAPA).
        kernel_size: odd window size K (the window is K x K around the centre).
        normalization: ``"softmax"`` (h = exp), ``"relu"``, ``"sigmoid"``, ``"softplus"``
            (w = h(s) / (sum h(s) + NORM_EPS)) or ``"none"`` (the raw similarities).
        padding: ``"zeros"`` (official: positions outside the map have logit 0 and value 0
            and take part in the normalisation) or ``"ignore"`` (they are left out of it).
        backend: ``"auto"``, ``"reference"``, ``"torch"``, ``"cpp"`` or ``"triton"``
            (see ``sapa.available_backends()``).

    Returns:
        (B, C, H', W'), dtype of the inputs. Half-precision inputs are accumulated in float32.

    The window centre of output pixel (i, j) is (floor(i*H/H'), floor(j*W/W')), so any
    H' >= H, W' >= W works (e.g. a skip connection of size 2H+1).
    """
    check_qkv(query, key, value)
    kernel_size = check_kernel_size(kernel_size)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("padding", padding, PADDINGS)
    check_backend_name(backend)
    be = resolve_backend(backend, query)
    if be.backward is None:
        return be.forward(query, key, value, kernel_size, normalization, padding)[0]
    return _SapaFn.apply(query, key, value, kernel_size, normalization, padding, be)
