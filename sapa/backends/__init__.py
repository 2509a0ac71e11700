"""The backends of :func:`sapa.sapa_upsample`, registered here and nowhere else.

Built in: ``"reference"`` (:mod:`sapa.backends.reference`), ``"torch"``
(:mod:`sapa.backends.pytorch`). Optional (imported on first use, tried once per process;
the reason of a failed import is kept and shown when the backend is asked for):
``"triton"`` (:mod:`sapa.backends.triton`, needs the ``triton`` package), ``"cpp"``
(:mod:`sapa.backends.cpp`, compiled C++ kernels for CPU tensors, built on first use; without
a compiler it reports itself unavailable and ``"auto"`` uses ``"torch"``).

Backend interface
-----------------
A backend is a :class:`Backend` record of plain functions. Inputs have been validated by
:func:`sapa.sapa_upsample` (4-d, one dtype, one device, H' >= H, W' >= W):
query (B, d, H', W'), key (B, d, H, W), value (B, C, H, W).

``forward(query, key, value, kernel_size, normalization, padding) -> (out, stat)``
    ``out`` (B, C, H', W'), contiguous, dtype of the inputs. ``stat`` a float32 tensor the
    backward needs besides the inputs and ``out``: shape (B, H'*W') (e.g. the per-pixel
    log-sum-exp) when ``saves_stat`` is True, shape (0,) otherwise. Shapes of ``out`` and
    ``stat`` follow from the input shapes alone (the compiler's fake implementation relies
    on it).
``backward(grad_out, query, key, value, out, stat, kernel_size, normalization, padding, needs)``
    ``-> (grad_query, grad_key, grad_value)``; ``needs`` is three bools, a gradient whose
    flag is False may be None. ``backward=None`` means ``forward`` is made of
    differentiable PyTorch ops and autograd differentiates it (the reference backend).
    ``out`` is the forward's output only when ``needs_out`` is True; otherwise it is an
    empty (0,) tensor, and the autograd graph does not keep the output (B, C, H', W') alive
    from the forward to the backward (no built-in backend reads it: a first-order step
    keeps the inputs and ``stat``, nothing else).
``available(query) -> bool``
    whether the backend runs on this device and dtype (checked before every call).
    ``query`` is a stand-in with the query's ``device``, ``dtype`` and ``is_cuda`` only:
    dispatch runs once per compilation under ``torch.compile``, never on data.
``auto(query) -> bool``
    whether ``backend="auto"`` may pick it for this tensor; ``"auto"`` takes the first
    backend of :data:`AUTO_ORDER` that says yes (``"torch"`` always does).

Adding a backend is one change in this file: a module ``sapa/backends/<name>.py`` exposing
``forward``, ``backward``, ``available`` (and optionally ``auto``, ``SAVES_STAT``,
``NEEDS_OUT``), plus one entry ``"<name>": _module_loader("sapa.backends.<name>")`` in
:data:`_OPTIONAL` (and its name in :data:`AUTO_ORDER` if ``"auto"`` should pick it). Or,
from user code, :func:`register_backend`.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from . import pytorch as _pytorch
from . import reference as _reference

__all__ = ["Backend", "register_backend", "available_backends", "get_backend", "resolve_backend",
           "resolve_backend_name", "has_backward", "AUTO_ORDER"]


def _assume_constant_result(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` (seconds
    of import time): the decorator only sets this attribute, which Dynamo reads when it traces."""
    fn._dynamo_marked_constant = True
    return fn


def _always(query: torch.Tensor) -> bool:
    return True


def _never(query: torch.Tensor) -> bool:
    return False


@dataclass(frozen=True)
class Backend:
    """One implementation of the operator (see the module docstring for the contract)."""

    name: str
    forward: Callable
    backward: Optional[Callable] = None
    available: Callable[[torch.Tensor], bool] = _always
    auto: Callable[[torch.Tensor], bool] = _never
    saves_stat: bool = False
    needs_out: bool = False


_BACKENDS: Dict[str, Backend] = {}

#: the order in which ``backend="auto"`` asks the backends (first that accepts wins)
AUTO_ORDER: Tuple[str, ...] = ("triton", "cpp", "torch")


def register_backend(
    name: str,
    forward: Callable,
    backward: Optional[Callable] = None,
    available: Optional[Callable[[torch.Tensor], bool]] = None,
    auto: Optional[Callable[[torch.Tensor], bool]] = None,
    saves_stat: bool = False,
    needs_out: bool = False,
) -> Backend:
    """Register (or replace) backend ``name``; see the module docstring for the contract
    (``needs_out=True``: ``backward`` reads the forward's output, which the graph then keeps)."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a backend name must be a non-empty string other than 'auto', got {name!r}")
    be = Backend(name, forward, backward, available or _always, auto or _never, bool(saves_stat),
                 bool(needs_out))
    _BACKENDS[name] = be
    return be


# ---- optional backends: imported on first use, once ----------------------------------
def _module_loader(module: str) -> Callable[[], Backend]:
    """Loader of a backend module exposing ``forward``, ``backward``, ``available`` [, ``auto``,
    ``SAVES_STAT``, ``NEEDS_OUT``]."""

    def load() -> Backend:
        mod = importlib.import_module(module)
        name = module.rsplit(".", 1)[-1]
        return Backend(name, mod.forward, getattr(mod, "backward", None), getattr(mod, "available", _always),
                       getattr(mod, "auto", _never), bool(getattr(mod, "SAVES_STAT", False)),
                       bool(getattr(mod, "NEEDS_OUT", False)))

    return load


#: optional backends: name -> loader (called once; an ImportError marks the backend missing)
_OPTIONAL: Dict[str, Callable[[], Backend]] = {
    "triton": _module_loader("sapa.backends.triton"),
    "cpp": _module_loader("sapa.backends.cpp"),
}
_MISSING: Dict[str, str] = {}  # name -> why its import failed
_loaded = False


def _load_optional() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name, loader in _OPTIONAL.items():
        if name in _BACKENDS:
            continue
        try:
            _BACKENDS[name] = loader()
        except ImportError as exc:
            _MISSING[name] = f"{type(exc).__name__}: {exc}"


@_assume_constant_result  # torch.compile runs it at trace time, never traces it
def available_backends() -> Tuple[str, ...]:
    """Names accepted by ``backend=`` (besides ``"auto"``) in this process."""
    _load_optional()
    return tuple(_BACKENDS)


def check_backend_name(backend) -> str:
    """Return ``backend`` if it names a backend of this process or is ``"auto"``, else raise.

    Asking for an optional backend whose import failed (e.g. ``"triton"`` without Triton
    installed) raises a ValueError that says so and why.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    names = available_backends()  # loads the optional backends (once)
    if backend == "auto" or backend in names:
        return backend
    if backend in _MISSING:
        raise ValueError(
            f"backend {backend!r} is not available in this process: importing it failed "
            f"({_MISSING[backend]}); the available backends are {available_backends() + ('auto',)}"
        )
    raise ValueError(f"unknown backend {backend!r}; expected one of {available_backends() + ('auto',)}")


def get_backend(name: str) -> Backend:
    """The registered :class:`Backend` called ``name``."""
    _load_optional()
    return _BACKENDS[name]


class _Probe:
    """What a backend's ``available``/``auto`` may ask of the query: device, dtype, is_cuda."""

    def __init__(self, device_type: str, dtype: torch.dtype):
        self.device, self.dtype = torch.device(device_type), dtype
        self.is_cuda = device_type == "cuda"


@functools.lru_cache(maxsize=None)
def _probe(device_type: str, dtype: torch.dtype) -> _Probe:
    return _Probe(device_type, dtype)


@_assume_constant_result  # runs at trace time: the compiler never sees the registry
def resolve_backend_name(backend: str, device_type: str, dtype: torch.dtype) -> str:
    """Name of the backend that runs a query on ``device_type`` with ``dtype``.

    ``"auto"`` is resolved (first of :data:`AUTO_ORDER` whose ``auto`` accepts, else
    ``"torch"``); an explicit name is checked (known, and ``available`` for that device and
    dtype), raising a ValueError that names the backend, device and dtype otherwise.
    """
    check_backend_name(backend)
    probe = _probe(device_type, dtype)
    if backend == "auto":
        for name in AUTO_ORDER:
            be = _BACKENDS.get(name)
            if be is not None and be.auto(probe):
                return name
        return "torch"
    if not _BACKENDS[backend].available(probe):
        hint = ""
        if backend == "triton":
            hint = (" (the Triton backend runs on CUDA tensors in float32/float16/bfloat16; on CPU "
                    "tensors only in a process started with TRITON_INTERPRET=1)")
        elif backend == "cpp":
            from .cpp import build_error

            why = build_error()
            hint = " (the C++ backend runs on CPU tensors in float32/float64" + (f"; {why})" if why else ")")
        raise ValueError(f"backend {backend!r} cannot run on {device_type} tensors of dtype {dtype}{hint}")
    return backend


def resolve_backend(backend: str, query: torch.Tensor) -> Backend:
    """The :class:`Backend` that runs ``query``: ``"auto"`` resolved, availability checked."""
    return get_backend(resolve_backend_name(backend, query.device.type, query.dtype))


@_assume_constant_result
def has_backward(name: str) -> bool:
    """Whether backend ``name`` brings its own backward (else autograd sees through it)."""
    return get_backend(name).backward is not None


register_backend("reference", _reference.forward)
register_backend("torch", _pytorch.forward, _pytorch.backward, auto=_always)
