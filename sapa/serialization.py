"""Reading state dicts without running code.

Loading a pickle can execute arbitrary code, so nothing here unpickles freely: PyTorch files
(``.pt``, ``.pth``, ``.bin``) are read with ``torch.load(..., weights_only=True)``, which only
rebuilds tensors and plain Python values (anything else must be allowlisted by the caller,
``allow=[SomeClass]``, for that one load), and ``.safetensors`` files hold a JSON header and raw
tensor bytes (reading them needs the ``safetensors`` package: ``pip install safetensors``).

Every failure to read a file raises :class:`CheckpointError` (a ``ValueError``) with one line
that names the file and says what was expected: a truncated or damaged file, a file that is
not a checkpoint, one that would run code when loaded, one that holds no state dict. ::

    from sapa.serialization import load_state_dict_file
    sd = load_state_dict_file("official.pth")      # {name: tensor}; also .safetensors
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Tuple, Union

import torch

__all__ = ["CheckpointError", "load_torch_file", "load_state_dict_file", "describe_mismatch"]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A file that cannot be read as what was expected; the message names the file and why."""


def _one_line(text: str, limit: int = 200) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch_failure(path: Path, err: BaseException, expected: str) -> CheckpointError:
    """Turn whatever torch.load raised into one clear line."""
    msg = str(err)
    size = path.stat().st_size if path.exists() else 0
    with open(path, "rb") as f:
        head = f.read(4)
    if isinstance(err, pickle.UnpicklingError) and ("Weights only load failed" in msg or "WeightsUnpickler" in msg):
        m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\. |\.?$)", msg, re.S)
        detail = _one_line(m.group(1) if m else msg)
        return CheckpointError(
            f"{path}: refused to load: it holds Python objects that only running code could rebuild "
            f"({detail}); expected {expected} made of tensors and plain values "
            f"(sapa loads with torch.load(weights_only=True))")
    if size == 0:
        return CheckpointError(f"{path}: the file is empty; expected {expected}")
    first = _one_line(msg.split(". ")[0], 120)
    if head == b"PK\x03\x04":
        return CheckpointError(f"{path}: the file is truncated or damaged ({first}); expected {expected}")
    if head[:1] == b"\x80":  # a pickle, but not one torch.save wrote
        return CheckpointError(f"{path}: not a PyTorch checkpoint (a pickle torch.load cannot read: "
                               f"{type(err).__name__} {first}); expected {expected}")
    return CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle); "
                           f"expected {expected}")


def load_torch_file(path: PathLike, *, expected: str = "a PyTorch checkpoint", allow: Iterable = (),
                    map_location: Union[str, torch.device, None] = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain Python values only.

    Args:
        path: a file written by ``torch.save``.
        expected: what the caller expects, for the error message.
        allow: classes or functions to allowlist for this one load
            (``torch.serialization.safe_globals``); empty by default.
        map_location: as for ``torch.load``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated, not a checkpoint, or holding objects that only
            running code could rebuild; one line naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {expected}")
    allow = list(allow)
    try:
        if allow:
            with torch.serialization.safe_globals(allow):
                return torch.load(path, map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # torch raises many types here; all mean "not readable as expected"
        raise _torch_failure(path, err, expected) from err


def _load_safetensors(path: Path, expected: str, device: str = "cpu") -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    try:
        from safetensors import safe_open
    except ImportError as err:
        raise ImportError(f"{path}: reading a .safetensors file needs the safetensors package "
                          f"(pip install safetensors, or pip install sapa[book])") from err

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {expected}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:
        size = path.stat().st_size
        what = "the file is empty" if size == 0 else "not a safetensors file, or truncated or damaged"
        raise CheckpointError(f"{path}: {what} ({_one_line(str(err), 120)}); expected {expected}") from err
    return tensors, meta


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_state_dict_file(path: PathLike, *, allow: Iterable = (),
                         map_location: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """Read a state dict ``{name: tensor}`` from a ``.safetensors`` file or a PyTorch file
    (``.pth``/``.pt``/``.bin``, loaded with ``weights_only=True``), e.g. an official checkpoint.

    A PyTorch file may hold the state dict itself or wrap it as ``{"state_dict": ...}``
    (mmcv/mmseg checkpoints, which also carry ``meta`` and ``optimizer``), ``{"model": ...}`` or
    ``{"module": ...}``; the tensors of the first of these are returned, names unchanged.

    Args:
        path: the file.
        allow: classes or functions to allowlist for this load only (PyTorch files), for a
            checkpoint whose metadata holds something other than tensors and plain values.
        map_location: device for the tensors.

    Raises:
        FileNotFoundError, CheckpointError (one line naming the file: damaged, not a
        checkpoint, holding code, or holding no state dict).
    """
    path = Path(path)
    expected = "a state dict (a .safetensors file, or a PyTorch file of {name: tensor})"
    if path.suffix == ".safetensors":
        tensors, _ = _load_safetensors(path, expected, device=str(map_location))
        if not tensors:
            raise CheckpointError(f"{path}: holds no tensors; expected {expected}")
        return tensors
    obj = load_torch_file(path, expected=expected, allow=allow, map_location=map_location)
    if _tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            if _tensor_dict(obj.get(key)):
                return dict(obj[key])
        keys = sorted(map(str, obj))[:8]
        raise CheckpointError(f"{path}: holds a dict with keys {keys} but no state dict (a dict of "
                              f"tensors, at the top or under 'state_dict', 'model' or 'module'); expected {expected}")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict; expected {expected}")


def describe_mismatch(err: RuntimeError) -> str:
    """One line from ``load_state_dict``'s error (missing/unexpected keys, size mismatches)."""
    return _one_line(str(err).replace("Error(s) in loading state_dict for", "").strip(), 300)
