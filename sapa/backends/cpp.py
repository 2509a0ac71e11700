"""Backend ``"cpp"``: fused C++ kernels for CPU tensors (float32 and float64).

The source, ``sapa/csrc/sapa_cpu.cpp``, ships with the package and is compiled on first use
with ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja are needed; the ``ninja``
package from PyPI is a dependency). The build is cached in PyTorch's extensions directory
(``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) under a name that
hashes the source, the compiler flags, the torch version and the CPU's instruction set, so a
later process loads it in well under a second and a changed source is rebuilt.

The first build takes about a minute; one line on stderr says so while it runs.
``python -m sapa.build`` builds (or finds) it ahead of time and says whether it worked (``make
venv`` runs it). When the build fails (no C++ compiler, no ninja, a compile error) the backend
reports itself unavailable, ``backend="auto"`` falls back to the pure PyTorch backend
``"torch"`` and one ``RuntimeWarning`` per process says why (``no C++ compiler found`` when
neither ``$CXX`` nor ``c++`` is on the PATH). ``SAPA_CPP=0`` in the environment skips the
build silently (the same fallback, deliberately).

Every normalisation and both paddings are covered, for any output size H' >= H, W' >= W.
Half precision is not: ``"auto"`` runs float16/bfloat16 CPU tensors on ``"torch"``.

The same extension holds the reassembly kernels of :func:`sapa.upsamplers.reassemble` (CARAFE,
FADE, A2U: a weighted sum of each output pixel's K x K low-res window with given kernels),
:func:`reassemble_forward` and :func:`reassemble_backward`; ``reassemble`` falls back to its
pure PyTorch path when the extension is unavailable.

Kernels (see the source's header): forward and the backward's first stage run one low-res
row of window centres at a time (parallel over B x H with ``at::parallel_for``); the
backward's key and value gradients are gathered per low-res row from the first stage's
buffers, so each thread owns the rows it writes and the gradients are bitwise repeatable,
whatever the number of threads.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

__all__ = ["forward", "backward", "available", "auto", "load_extension", "build_error", "build_directory",
           "SOURCE", "reassemble_forward", "reassemble_backward"]

#: the C++ source, shipped as package data
SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "sapa_cpu.cpp"
#: compiler flags (the kernels rely on GCC/Clang vector extensions; -march=native since the
#: build happens on the machine that runs it, and the CPU's flags are part of the cache key).
#: -fopenmp: ``at::parallel_for`` is a header template that runs serially unless the extension
#: itself is compiled with OpenMP (without it the kernels ignored ``torch.set_num_threads``:
#: 2 threads were no faster than 1); its regions then use PyTorch's OpenMP runtime and thread count
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)

_NORM_CODE = {"softmax": 0, "relu": 1, "sigmoid": 2, "softplus": 3, "none": 4}
_DTYPES = (torch.float32, torch.float64)

_lock = threading.Lock()
_ext = None
_error: Optional[str] = None


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _module_name() -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), repr(CFLAGS).encode(), torch.__version__.encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return "sapa_cpu_" + h.hexdigest()[:16]


def _ninja_on_path() -> None:
    """Make the ``ninja`` of the PyPI package visible when its venv is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # the PyPI package

        bin_dir = getattr(ninja, "BIN_DIR", None)
    except ImportError:
        return
    if bin_dir and os.path.isdir(bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _compiler() -> Optional[str]:
    """The C++ compiler PyTorch would call (``$CXX``, else ``c++``), or None if there is none."""
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) or (cxx if os.path.isfile(cxx) and os.access(cxx, os.X_OK) else None)


def build_directory() -> str:
    """Where the extension is built and cached (under ``$TORCH_EXTENSIONS_DIR``)."""
    from torch.utils import cpp_extension

    return cpp_extension._get_build_directory(_module_name(), verbose=False)


def _is_built() -> bool:
    try:
        d = build_directory()
        return any(f.endswith((".so", ".pyd")) for f in os.listdir(d))
    except Exception:  # private helper moved, unreadable directory: just announce the build
        return False


def load_extension(announce: bool = True):
    """The compiled extension module (built on the first call), or None if it cannot be built.

    A build (nothing cached yet) prints one line on stderr first when ``announce``. A failed
    build warns once (RuntimeWarning) and is not retried in this process.
    """
    global _ext, _error
    if _ext is not None or _error is not None:
        return _ext
    with _lock:
        if _ext is not None or _error is not None:
            return _ext
        if os.environ.get("SAPA_CPP", "1").strip() == "0":
            _error = "disabled by SAPA_CPP=0"
            return None
        try:
            if _compiler() is None:
                raise RuntimeError(f"no C++ compiler found ({os.environ.get('CXX', 'c++')!r} is not on the PATH; "
                                   "install g++ or clang++, or set CXX)")
            _ninja_on_path()
            from torch.utils import cpp_extension

            if announce and not _is_built():
                print("sapa: building the C++ CPU kernel (first use only, about a minute;\n"
                      "      `python -m sapa.build` does it ahead of time) ...", file=sys.stderr, flush=True)
            _ext = cpp_extension.load(name=_module_name(), sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                                      extra_ldflags=list(LDFLAGS), verbose=False)
        except Exception as exc:  # no compiler, no ninja, compile error: fall back
            _error = _first_line(exc)
            warnings.warn(
                f"sapa: the C++ CPU kernel could not be built ({_error}); CPU tensors use the pure "
                "PyTorch backend 'torch' (and reassembly its PyTorch path) instead (slower, same results)",
                RuntimeWarning,
                stacklevel=2,
            )
    return _ext


def build_error() -> Optional[str]:
    """Why the extension is unavailable (None if it loaded or was not tried yet)."""
    return _error


def available(query: torch.Tensor) -> bool:
    """CPU tensor of float32/float64 and an extension that builds."""
    return query.device.type == "cpu" and query.dtype in _DTYPES and load_extension() is not None


def auto(query: torch.Tensor) -> bool:
    """``backend="auto"`` runs every case this backend covers on it."""
    return available(query)


def forward(query, key, value, kernel_size, normalization, padding) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H', W') output from query (B, d, H', W'), key (B, d, H, W), value (B, C, H, W)."""
    ext = load_extension()
    out = ext.forward(query, key, value, kernel_size, _NORM_CODE[normalization], padding == "ignore")
    return out, query.new_empty(0, dtype=torch.float32)


def backward(grad_out, query, key, value, out, stat, kernel_size, normalization, padding, needs):
    """(grad_query, grad_key, grad_value); the weights are recomputed from the inputs."""
    ext = load_extension()
    nq, nk, nv = (bool(x) for x in needs)
    gq, gk, gv = ext.backward(grad_out.to(query.dtype), query, key, value, kernel_size, _NORM_CODE[normalization],
                              padding == "ignore", nq, nk, nv)
    return gq, gk, gv


def reassemble_forward(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, C, H', W') = sum_p kernels[:, p] * x around the window centres (see ``reassemble``):
    x (B, C, H, W) and kernels (B, K*K, H', W') of one dtype, float32 or float64, H, W > 0."""
    return load_extension().reassemble_forward(x, kernels, kernel_size)


def reassemble_backward(grad_out: torch.Tensor, x: torch.Tensor, kernels: torch.Tensor, kernel_size: int,
                        need_x: bool = True, need_kernels: bool = True):
    """(grad_x, grad_kernels) of :func:`reassemble_forward`; an undefined (None) gradient where not needed."""
    gx, gk = load_extension().reassemble_backward(grad_out.to(x.dtype), x, kernels, kernel_size, bool(need_x),
                                                  bool(need_kernels))
    return gx, gk
