"""Input validation shared by the operator, the module and the upsamplers.

Every check runs before any heavy work and raises ``ValueError``/``TypeError`` that
names the argument and the shapes (or values) it saw. :func:`in_onnx_export` tells the
code paths that write ONNX-friendly graphs when an ONNX exporter is tracing.
"""
from __future__ import annotations

import operator
import sys
from typing import Iterable, Sequence, Tuple

import torch

NORMALIZATIONS = ("softmax", "relu", "sigmoid", "softplus", "none")
PADDINGS = ("zeros", "ignore")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError naming ``name``."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {choices}; got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {choices}")
    return value


def check_tensor(name: str, t, ndim: int = 4) -> torch.Tensor:
    """Check that ``t`` is a floating-point tensor with ``ndim`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions (B, C, H, W), got shape {tuple(t.shape)}"
        )
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {t.dtype}"
        )
    return t


def _as_int(name: str, v) -> int:
    """``v`` as a Python int if it is an integer (int, numpy integer, 0-d integer tensor...), not a bool."""
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None


def check_kernel_size(kernel_size) -> int:
    """Return the window size as an int if it is a positive odd integer, else raise."""
    kernel_size = _as_int("kernel_size", kernel_size)
    if kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    return kernel_size


def check_positive_int(name: str, v) -> int:
    """Return ``v`` as an int if it is a positive integer (``operator.index``: int, np.int64...;
    not a bool), else raise naming ``name``."""
    v = _as_int(name, v)
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {v}")
    return v


def check_size(name: str, size) -> Tuple[int, int]:
    """Return ``size`` as a pair of positive ints (H', W'), else raise naming ``name``."""
    if isinstance(size, (str, bytes)) or not isinstance(size, (Sequence, torch.Size)):
        raise TypeError(f"{name} must be a pair of ints (H', W'), got {type(size).__name__}")
    if len(size) != 2:
        raise ValueError(f"{name} must be a pair of ints (H', W'), got {tuple(size)}")
    if isinstance(size, torch.Size):  # a tensor's size: ints (symbolic while traced: keep them so)
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"{name} must be positive, got {tuple(size)}")
        return size[0], size[1]
    return check_positive_int(f"{name}[0]", size[0]), check_positive_int(f"{name}[1]", size[1])


def check_qkv(query, key, value) -> None:
    """Validate the (query, key, value) triple of :func:`sapa.sapa_upsample`.

    query (B, d, H', W'), key (B, d, H, W), value (B, C, H, W) with H' >= H, W' >= W,
    one dtype and one device.
    """
    check_tensor("query", query)
    check_tensor("key", key)
    check_tensor("value", value)
    qs, ks, vs = tuple(query.shape), tuple(key.shape), tuple(value.shape)
    if not (qs[0] == ks[0] == vs[0]):
        raise ValueError(
            f"batch sizes differ: query {qs}, key {ks}, value {vs}"
        )
    if qs[1] != ks[1]:
        raise ValueError(
            f"query and key must have the same embedding dimension d (dim 1): "
            f"query {qs}, key {ks}"
        )
    if ks[2:] != vs[2:]:
        raise ValueError(
            f"key and value must have the same spatial size (H, W): key {ks}, value {vs}"
        )
    if qs[2] < ks[2] or qs[3] < ks[3]:
        raise ValueError(
            f"query must be at least as large as key (H' >= H and W' >= W): "
            f"query {qs}, key {ks}"
        )
    if min(qs[1:] + ks[2:] + vs[1:2]) <= 0:  # an empty batch (B = 0) is fine
        raise ValueError(
            f"empty tensors are not supported except for batch size 0: query {qs}, key {ks}, value {vs}"
        )
    dtypes = {query.dtype, key.dtype, value.dtype}
    if len(dtypes) != 1:
        raise TypeError(
            f"query, key and value must share one dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
        )
    devices = {query.device, key.device, value.device}
    if len(devices) != 1:
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}"
        )


def in_onnx_export() -> bool:
    """True while ``torch.onnx.export`` (either exporter) traces; never imports torch.onnx."""
    onnx = sys.modules.get("torch.onnx")  # not imported: no export can be running
    return onnx is not None and onnx.is_in_onnx_export()
