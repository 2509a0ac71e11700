"""Load the authors' checkpoints of the baseline upsamplers into the modules built here.

Each official module names its weights its own way (``poppinace/fade``: ``kernel_generator.
conv2_kernels``; mmcv's ``CARAFEPack``: ``channel_compressor.weight``, ...). With the same
weights, every module here computes the official module's output (see the tests), so an
official checkpoint only needs its keys renamed, and in two cases its tensors regrouped:

============ ============================================= =====================================
name         official module                               keys (official -> here)
============ ============================================= =====================================
carafe       mmcv ``CARAFEPack``                           channel_compressor -> compressor,
                                                           content_encoder -> encoder
indexnet-hin ``HolisticIndexBlock`` (indexnet_matting)     indexnet -> index
indexnet-m2o ``DepthwiseM2OIndexBlock``                    indexnet1..4 (s^2 branches) ->
                                                           index, concatenated along the output
                                                           channels (BatchNorm statistics too;
                                                           ``num_batches_tracked`` of branch 1)
a2u          ``InterChannelUpDown`` (a2u_matting)          bconv_U.1 -> filter_u, bconv_V.1 ->
                                                           filter_v, bnu.0 -> norm_u, bnv.0 ->
                                                           norm_v, bconv_UP.1 -> proj;
                                                           bconv_DP.1 (the A2D downsampling
                                                           kernels the encoder uses) is dropped
fade         ``FADE`` (``FADE_H2L.py``)                    gate_generator.conv -> gate,
                                                           kernel_generator.conv1_en ->
                                                           compress_y, .conv1_de -> compress_x,
                                                           .conv2_kernels -> kernel_weight,
                                                           .conv2_bias -> kernel_bias
dysample     ``DySample`` (tiny-smart/dysample)            identical (offset, scope, init_pos)
sapa-b       ``SAPA`` (poppinace/sapa ``SAPA.py``)         norm_y, norm_x -> sapa.norm_y/x,
                                                           q -> sapa.q_y, k -> sapa.k_x
sapa-g       ``SAPAExp(q_mode="gate")``                    qy -> sapa.q_y, qx -> sapa.q_x,
                                                           gate -> sapa.gate, k -> sapa.k_x
sapa-p       ``SAPAExp(q_mode="cat")``                     q -> sapa.q_yx, k -> sapa.k_x
sapa-d       ``SAPADeform`` (tiny-smart/sapa)              identical (q, k, offset, norm_y/x)
============ ============================================= =====================================

Nearest, bilinear, deconv, pixel shuffle and SAPA-I have no official module of their own.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Mapping, Union

import torch
import torch.nn as nn

from ..serialization import load_state_dict_file

__all__ = ["load_official_state_dict", "official_names", "convert_official_state_dict"]

StateDict = Dict[str, torch.Tensor]


def _rename(table: Dict[str, str], drop: tuple = ()) -> Callable[[StateDict, nn.Module], StateDict]:
    """Converter that renames key prefixes (longest first) and drops those under ``drop``."""

    def convert(sd: StateDict, module: nn.Module) -> StateDict:
        out = {}
        for key, v in sd.items():
            if any(key == d or key.startswith(d + ".") for d in drop):
                continue
            for old in sorted(table, key=len, reverse=True):
                if key == old or key.startswith(old + "."):
                    key = table[old] + key[len(old):]
                    break
            out[key] = v
        return out

    convert.inverse = {new: old for old, new in table.items()}  # for messages: ours -> official
    return convert


def _indexnet_m2o(sd: StateDict, module: nn.Module) -> StateDict:
    """Concatenate the official branches ``indexnet1..n`` into our stacked convolutions."""
    n = module.scale_factor**2
    branch_keys = {}
    out = {}
    for key, v in sd.items():
        head, _, rest = key.partition(".")
        if head.startswith("indexnet") and head[len("indexnet"):].isdigit():
            branch_keys.setdefault(rest, {})[int(head[len("indexnet"):])] = v
        else:
            out[key] = v  # reported as unexpected by the caller
    for rest, branches in branch_keys.items():
        if sorted(branches) != list(range(1, n + 1)):
            # incomplete or extra branches: keep them under their own names so that the
            # caller's key check names them
            for b, v in branches.items():
                out[f"indexnet{b}.{rest}"] = v
            continue
        ours = rest
        if not module.use_nonlinear:  # official: Sequential(conv) -> "0.weight"; ours: a bare conv
            ours = rest[2:] if rest.startswith("0.") else rest
        tensors = [branches[b] for b in range(1, n + 1)]
        if rest.endswith("num_batches_tracked"):
            out["index." + ours] = tensors[0]
        else:
            out["index." + ours] = torch.cat(tensors, dim=0)
    return out


_CONVERTERS: Dict[str, Callable[[StateDict, nn.Module], StateDict]] = {
    "carafe": _rename({"channel_compressor": "compressor", "content_encoder": "encoder"}),
    "indexnet-hin": _rename({"indexnet": "index"}),
    "indexnet-m2o": _indexnet_m2o,
    "a2u": _rename(
        {"bconv_U.1": "filter_u", "bconv_V.1": "filter_v", "bnu.0": "norm_u", "bnv.0": "norm_v",
         "bconv_UP.1": "proj"},
        drop=("bconv_DP",),
    ),
    "fade": _rename({
        "gate_generator.conv": "gate",
        "kernel_generator.conv1_en": "compress_y",
        "kernel_generator.conv1_de": "compress_x",
        "kernel_generator.conv2_kernels": "kernel_weight",
        "kernel_generator.conv2_bias": "kernel_bias",
    }),
    "dysample": _rename({}),
    "sapa-b": _rename({"norm_y": "sapa.norm_y", "norm_x": "sapa.norm_x", "q": "sapa.q_y", "k": "sapa.k_x"}),
    "sapa-g": _rename({"norm_y": "sapa.norm_y", "norm_x": "sapa.norm_x", "qy": "sapa.q_y", "qx": "sapa.q_x",
                       "gate": "sapa.gate", "k": "sapa.k_x"}),
    "sapa-p": _rename({"norm_y": "sapa.norm_y", "norm_x": "sapa.norm_x", "q": "sapa.q_yx", "k": "sapa.k_x"}),
    "sapa-d": _rename({}),
}


def official_names():
    """Names of :func:`sapa.build_upsampler` whose official checkpoints can be loaded."""
    return tuple(_CONVERTERS)


def _official_key(name: str, key: str, module: nn.Module) -> str:
    """The official key that becomes ``key`` of ``module`` (upsampler ``name``), for messages;
    the official keys of IndexNet-M2O's stacked convolutions read ``indexnet1..n.<rest>``."""
    if name == "indexnet-m2o" and key.startswith("index."):
        rest = key[len("index."):]
        if not module.use_nonlinear:
            rest = "0." + rest
        return f"indexnet1..{module.scale_factor**2}.{rest}"
    inverse = getattr(_CONVERTERS.get(name), "inverse", {})
    for ours in sorted(inverse, key=len, reverse=True):
        if key == ours or key.startswith(ours + "."):
            return inverse[ours] + key[len(ours):]
    return key


def _read(path: Union[str, os.PathLike]) -> Mapping:
    """Read a checkpoint file without running code: :func:`sapa.serialization.load_state_dict_file`
    (safetensors, or torch.load(weights_only=True)); a bad file raises one line naming it."""
    return load_state_dict_file(path)


def _unwrap(obj) -> Mapping:
    """A checkpoint dict {"state_dict": ...} or {"model": ...} -> the tensors' dict."""
    if isinstance(obj, Mapping) and obj and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in ("state_dict", "model", "module"):
            if isinstance(obj.get(k), Mapping):
                return obj[k]
    return obj


def convert_official_state_dict(name: str, module: nn.Module, state_dict: Mapping, prefix: str = "") -> StateDict:
    """Rename (and regroup) an official state_dict of upsampler ``name`` to ``module``'s keys.

    ``prefix``: only keys starting with it are taken, with it removed (e.g.
    ``"decode_head.upsample.0."`` for one upsampler inside a whole network's checkpoint).
    Returns a new dict; nothing is checked (see :func:`load_official_state_dict`).
    """
    if name not in _CONVERTERS:
        raise ValueError(
            f"no official module is known for upsampler {name!r}; loadable: {list(official_names())}"
        )
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return _CONVERTERS[name](sd, module)


def load_official_state_dict(
    name: str,
    module: nn.Module,
    state_dict: Union[Mapping, str, os.PathLike],
    prefix: str = "",
) -> nn.Module:
    """Load a checkpoint of the official module of upsampler ``name`` into ``module``, strictly.

    Args:
        name: a name of :func:`official_names` (``"fade"``, ``"carafe"``, ``"sapa-d"``, ...).
        module: the module of that name from :func:`sapa.build_upsampler`, built with the
            official module's configuration (channels, scale, options).
        state_dict: the official module's ``state_dict()`` (a mapping of tensors, or a
            checkpoint dict holding it under ``"state_dict"``/``"model"``), or the path of a
            file holding one: ``*.safetensors`` is read with safetensors, anything else with
            ``torch.load(..., weights_only=True)`` (never unpickles code).
        prefix: take only keys starting with ``prefix`` (removed before renaming).

    Returns:
        ``module``, with the official weights (and buffers: BatchNorm statistics, DySample's
        ``init_pos``) copied in.

    Raises:
        ValueError naming the missing keys (ours, not provided by the checkpoint), the
        unexpected keys (the checkpoint's, unknown here; shown with their official names) and
        the shape mismatches, before anything is copied.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if name not in _CONVERTERS:
        raise ValueError(
            f"no official module is known for upsampler {name!r}; loadable: {list(official_names())}"
        )
    if getattr(module, "name", None) != name:
        raise TypeError(
            f"module is {type(module).__name__} (name {getattr(module, 'name', None)!r}), not the "
            f"upsampler {name!r}: build it with sapa.build_upsampler({name!r}, ...)"
        )
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = _read(state_dict)
    state_dict = _unwrap(state_dict)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensors or a file path, got {type(state_dict).__name__}")
    converted = convert_official_state_dict(name, module, state_dict, prefix)
    ours = module.state_dict()
    missing = sorted(set(ours) - set(converted))
    unexpected = sorted(set(converted) - set(ours))
    shapes = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)}, module {tuple(ours[k].shape)}"
        for k in set(ours) & set(converted)
        if tuple(converted[k].shape) != tuple(ours[k].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"the official state_dict does not fit {name!r} ({type(module).__name__}, {module.extra_repr()}):"]
        if missing:
            lines.append(f"  missing keys (in the module, not in the checkpoint): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys (in the checkpoint, after renaming): {unexpected}")
        if shapes:
            lines.append(f"  shape mismatches: {shapes}")
        raise ValueError("\n".join(lines))
    module.load_state_dict(converted, strict=True)
    return module
