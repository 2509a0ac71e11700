"""The book's training files, read and written without running code: training checkpoints,
stored models, RNG states (state dicts alone are read by :mod:`sapa.serialization`, whose
:func:`load_state_dict_file` and :class:`CheckpointError` are re-exported here).

Loading a pickle can execute arbitrary code, so nothing here unpickles freely:

* PyTorch files (``.pt``, ``.pth``) are read with ``torch.load(..., weights_only=True)``, which
  only rebuilds tensors and plain Python values; anything else must be allowlisted explicitly
  by the caller (``allow=[SomeClass]``, scoped to that one load);
* stored model weights are ``.safetensors`` files (a JSON header and raw tensor bytes) with
  their training config beside them as JSON.

Every failure to read a file raises :class:`CheckpointError` (a ``ValueError``) with one line
that names the file and says what was expected: a truncated or damaged file, a file that is
not a checkpoint, one that would run code when loaded, one of another model or written by a
``sapa`` with another file format. Writes are atomic (a temporary file in the same folder,
flushed to disk, then ``os.replace``-d), so a crash while saving leaves the previous file.

Public entry points::

    load_state_dict_file("official.pth")          # {name: tensor}, also .safetensors
    save_training_checkpoint(path, state); load_training_checkpoint(path)
    save_model_file("m.safetensors", state_dict, config); load_model_file("m.safetensors")
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..serialization import (CheckpointError, _load_safetensors, _one_line, describe_mismatch,
                             load_state_dict_file, load_torch_file)

__all__ = [
    "CheckpointError", "TRAINING_FORMAT", "MODEL_FORMAT", "FORMAT_VERSION", "atomic_write",
    "check_plain", "load_torch_file", "load_state_dict_file", "save_training_checkpoint",
    "load_training_checkpoint", "save_model_file", "load_model_file", "read_model_config",
    "model_file_paths", "describe_mismatch", "rng_state", "set_rng_state",
]

PathLike = Union[str, os.PathLike]

#: ``format`` field of a training checkpoint (``<out>/last.pt``)
TRAINING_FORMAT = "sapa.train.checkpoint"
#: ``format`` field of a stored model (``<run>.safetensors`` + ``<run>.json``)
MODEL_FORMAT = "sapa.results.model"
#: version of both file layouts this sapa writes and reads
FORMAT_VERSION = 1

_TRAINING_KEYS = {"model": dict, "optimizer": dict, "epoch": int, "history": list, "config": dict,
                  "rng": dict}


def _sapa_version() -> str:
    from .. import __version__

    return __version__


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def atomic_write(path: PathLike, write: Callable[[Any], None]) -> Path:
    """Write ``path`` all or nothing: ``write(f)`` fills a temporary file (an open binary file
    object) in the same folder, which is flushed to disk and then renamed over ``path``.

    If ``write`` raises (or the process dies), ``path`` keeps its previous content and the
    temporary file is removed (or, after a hard kill, left as a harmless ``*.tmp<pid>``).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable; not every platform can open a folder
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


_PLAIN_SCALARS = (type(None), bool, int, float, str)


def check_plain(value: Any, name: str) -> Any:
    """Check that ``value`` is a plain Python value (None, bool, int, float, str, and lists,
    tuples and str-keyed dicts of them) and return it; TypeError naming ``name`` otherwise.

    Such values round-trip through JSON and ``torch.load(weights_only=True)``.
    """
    if isinstance(value, _PLAIN_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{name}[{i}]")
        return value
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{name} must have str keys, got key {k!r} ({type(k).__name__})")
            check_plain(v, f"{name}[{k!r}]")
        return value
    raise TypeError(f"{name} must be a plain value (None, bool, int, float, str, or lists/tuples/"
                    f"str-keyed dicts of them), got {type(value).__name__} {value!r}")


# --------------------------------------------------------------------------------------
# reading PyTorch files safely
# --------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------
# RNG states as tensors and plain values
# --------------------------------------------------------------------------------------
def rng_state(device: Union[str, torch.device, None] = None) -> Dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (plus the CUDA one of
    ``device`` if it is a CUDA device), as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [int(version), list(internal), gauss],
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: Union[str, torch.device, None] = None) -> None:
    """Restore what :func:`rng_state` returned (the CUDA state only onto a CUDA ``device``)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["bit_generator"], npst["key"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["gauss"])))
    torch.set_rng_state(state["torch"])
    device = torch.device(device) if device is not None else None
    if state.get("cuda") is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_rng(path: Path, state: Any) -> None:
    try:
        py, npst = state["python"], state["numpy"]
        ok = (isinstance(py, list) and len(py) == 3 and isinstance(py[1], list)
              and isinstance(npst, dict) and isinstance(npst.get("key"), torch.Tensor)
              and isinstance(state["torch"], torch.Tensor) and state["torch"].dtype == torch.uint8)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: damaged RNG state (expected 'python', 'numpy' and 'torch' "
                              f"generator states); expected a complete sapa training checkpoint")


# --------------------------------------------------------------------------------------
# training checkpoints (<out>/last.pt)
# --------------------------------------------------------------------------------------
def save_training_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write a training checkpoint: ``state`` has ``model`` and ``optimizer`` (state
    dicts), ``epoch`` (finished epochs), ``history`` (list of dicts), ``config`` (dict of plain
    values) and ``rng`` (:func:`rng_state`); the format header is added here."""
    missing = sorted(set(_TRAINING_KEYS) - set(state))
    if missing:
        raise ValueError(f"training checkpoint state lacks {missing}")
    check_plain(state["config"], "config")
    check_plain(state["history"], "history")
    blob = {"format": TRAINING_FORMAT, "format_version": FORMAT_VERSION,
            "sapa_version": _sapa_version(), **state}
    return atomic_write(path, lambda f: torch.save(blob, f))


def _check_format(path: Path, found_format: Any, found_version: Any, found_sapa: Any,
                  expected_format: str, expected: str) -> None:
    if found_format != expected_format:
        raise CheckpointError(f"{path}: not a {expected} (its format is {found_format!r}); "
                              f"expected format {expected_format!r}")
    if found_version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: {expected} of format version {found_version!r}, written by sapa {found_sapa}; "
            f"this sapa {_sapa_version()} reads format version {FORMAT_VERSION}: use the sapa "
            f"version that wrote it, or write the file again with this one")


def load_training_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read and check a training checkpoint written by :func:`save_training_checkpoint`.

    Raises FileNotFoundError, or CheckpointError (one line naming ``path``) for a damaged,
    foreign or unsafe file, a checkpoint of another format version, or missing parts.
    """
    path = Path(path)
    expected = "a sapa training checkpoint"
    state = load_torch_file(path, expected=f"{expected} (written by python -m sapa.lab.train)")
    if not isinstance(state, dict) or "format" not in state:
        found = (f"a dict with keys {sorted(map(str, state))[:6]}" if isinstance(state, dict)
                 else f"a {type(state).__name__}")
        raise CheckpointError(f"{path}: not a sapa training checkpoint (it holds {found}, without the "
                              f"'format' header); expected {expected} of format {TRAINING_FORMAT!r}")
    _check_format(path, state.get("format"), state.get("format_version"), state.get("sapa_version", "?"),
                  TRAINING_FORMAT, "sapa training checkpoint")
    for key, kind in _TRAINING_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: damaged: '{key}' is missing or not a {kind.__name__}; "
                                  f"expected a complete {expected}")
    _check_rng(path, state["rng"])
    return state


# --------------------------------------------------------------------------------------
# stored models (<run>.safetensors + <run>.json)
# --------------------------------------------------------------------------------------
def model_file_paths(path: PathLike) -> Tuple[Path, Path]:
    """(``<stem>.safetensors``, ``<stem>.json``) for a stored model given by either file."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".json"):
        hint = (" (a .pt/.pth file is a pickle, which is not read here: sapa.lab.results.export_model "
                "turns a run's last.pt into a stored model)" if path.suffix in (".pt", ".pth") else "")
        raise CheckpointError(f"{path}: expected a stored sapa model, a .safetensors file with its "
                              f".json config beside it{hint}")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save_model_file(path: PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Path:
    """Store model weights as ``<stem>.safetensors`` and ``config`` (plain values) as
    ``<stem>.json`` beside it, each written atomically. Returns the ``.safetensors`` path."""
    from safetensors.torch import save

    weights, cfg_path = model_file_paths(path)
    config = check_plain(dict(config), "config")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = {"format": MODEL_FORMAT, "format_version": str(FORMAT_VERSION), "config": cfg_path.name}
    data = save(tensors, metadata=meta)
    text = json.dumps({"format": MODEL_FORMAT, "format_version": FORMAT_VERSION,
                       "sapa_version": _sapa_version(), "weights": weights.name, "config": config},
                      indent=1, allow_nan=True) + "\n"
    weights.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, lambda f: f.write(data))
    atomic_write(cfg_path, lambda f: f.write(text.encode()))
    return weights


def read_model_config(path: PathLike) -> Dict[str, Any]:
    """The config stored beside a model (``<stem>.json``), checked; path may name either file."""
    _, cfg_path = model_file_paths(path)
    expected = f"the JSON config of a stored sapa model ({MODEL_FORMAT!r})"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no such file; expected {expected}")
    try:
        blob = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({_one_line(str(err), 80)}); expected {expected}") from err
    if not isinstance(blob, dict) or "format" not in blob:
        raise CheckpointError(f"{cfg_path}: no 'format' header; expected {expected}")
    _check_format(cfg_path, blob.get("format"), blob.get("format_version"), blob.get("sapa_version", "?"),
                  MODEL_FORMAT, "stored sapa model config")
    if not isinstance(blob.get("config"), dict):
        raise CheckpointError(f"{cfg_path}: damaged: 'config' is missing or not a dict; expected {expected}")
    return blob["config"]


def load_model_file(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state dict, config) of a model stored by :func:`save_model_file`; path may name either file."""
    weights, _ = model_file_paths(path)
    config = read_model_config(path)
    tensors, meta = _load_safetensors(weights, f"the weights of a stored sapa model ({MODEL_FORMAT!r})",
                                      device=str(device))
    _check_format(weights, meta.get("format"), _int_or(meta.get("format_version")), "?",
                  MODEL_FORMAT, "stored sapa model")
    return tensors, config


def _int_or(text: Optional[str]) -> Any:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return text


