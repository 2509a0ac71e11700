"""``sapa.from_official``: a module of this package, ready, from an official checkpoint.

The official code (``poppinace/sapa``, ``tiny-smart/sapa``, ``poppinace/fade``, mmcv's
``CARAFEPack``, ``tiny-smart/dysample``...) builds its modules as ``SAPA(dim_y, dim_x,
up_factor=2, up_kernel_size=5, embedding_dim=64)`` and calls them as ``forward(y, x)``:
the high-res guide y first. Here the low-res feature comes first everywhere:
``sapa.SAPA(in_channels=dim_x, guide_channels=dim_y, kernel_size=up_kernel_size,
embedding_dim=64)`` and ``forward(x, y)``. :func:`from_official` reads the sizes from the
state dict, builds the module with them and loads the weights (renamed by
:func:`sapa.upsamplers.load_official_state_dict`), so nothing needs translating by hand.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, Mapping, Tuple, Union

import torch
import torch.nn as nn

from .modules import SAPA
from .upsamplers import build_upsampler
from .upsamplers.official import _read, _unwrap, load_official_state_dict, official_names

__all__ = ["from_official"]

_Sizes = Dict[str, int]


def _shape(sd: Mapping, key: str, name: str):
    if key not in sd:
        raise ValueError(
            f"cannot read the sizes of an official {name!r} checkpoint: it has no key {key!r} "
            f"(keys: {sorted(sd)[:12]}{' ...' if len(sd) > 12 else ''}); pass in_channels=... "
            "(and guide_channels=...) explicitly, or check the name and prefix"
        )
    return tuple(sd[key].shape)


def _sapa_bpg(variant: str) -> Callable[[Mapping, int], _Sizes]:
    def infer(sd: Mapping, s: int) -> _Sizes:
        name = f"sapa-{variant.lower()}"
        Cy = _shape(sd, "norm_y.weight", name)[0]
        C = _shape(sd, "norm_x.weight", name)[0]
        d = _shape(sd, "k.weight", name)[0]
        return {"in_channels": C, "guide_channels": Cy, "embedding_dim": d}

    return infer


def _sapa_d(sd: Mapping, s: int) -> _Sizes:
    gd, Cy = _shape(sd, "q.weight", "sapa-d")[:2]
    C = _shape(sd, "k.weight", "sapa-d")[1]
    return {"in_channels": C, "guide_channels": Cy}


def _fade(sd: Mapping, s: int) -> _Sizes:
    d, C = _shape(sd, "kernel_generator.conv1_en.weight", "fade")[:2]
    KK = _shape(sd, "kernel_generator.conv2_kernels", "fade")[0]
    return {"in_channels": C, "embedding_dim": d, "kernel_size": math.isqrt(KK)}


def _carafe(sd: Mapping, s: int) -> _Sizes:
    m, C = _shape(sd, "channel_compressor.weight", "carafe")[:2]
    out, _, ke = _shape(sd, "content_encoder.weight", "carafe")[:3]
    return {"in_channels": C, "compressed_channels": m, "encoder_kernel_size": ke,
            "kernel_size": math.isqrt(out // (s * s))}


def _dysample(sd: Mapping, s: int) -> _Sizes:
    return {"in_channels": _shape(sd, "offset.weight", "dysample")[1]}


#: name -> reads the constructor sizes from the official state dict (already unprefixed)
_INFER: Dict[str, Callable[[Mapping, int], _Sizes]] = {
    "sapa-b": _sapa_bpg("B"), "sapa-g": _sapa_bpg("G"), "sapa-p": _sapa_bpg("P"),
    "sapa-d": _sapa_d, "fade": _fade, "carafe": _carafe, "dysample": _dysample,
}
_ALIASES = {"sapa": "sapa-b", "sapa-i": None, "sapaexp-gate": "sapa-g", "sapaexp-cat": "sapa-p",
            "sapadeform": "sapa-d", "carafepack": "carafe"}


def _official_variant(sd: Mapping) -> str:
    """SAPA-B/G/P from the official keys (``q``; ``qy``/``qx``/``gate``; ``q`` over [y; x])."""
    if "qy.weight" in sd or "gate.weight" in sd:
        return "sapa-g"
    if "q.weight" in sd and "norm_y.weight" in sd and "norm_x.weight" in sd:
        cy, cx = sd["norm_y.weight"].shape[0], sd["norm_x.weight"].shape[0]
        return "sapa-p" if sd["q.weight"].shape[1] == cy + cx else "sapa-b"
    if "offset.weight" in sd and "q.weight" in sd:
        return "sapa-d"
    raise ValueError("the checkpoint does not look like an official SAPA module (no norm_y/norm_x/q/k keys)")


def _resolve_name(name_or_class, sd: Mapping) -> Tuple[str, bool]:
    """(upsampler name, whether a bare :class:`sapa.SAPA` is wanted)."""
    if name_or_class is SAPA:
        return _official_variant(sd), True
    if isinstance(name_or_class, type):
        name = getattr(name_or_class, "name", None)
        if not isinstance(name, str):
            from .upsamplers import sapa_variants

            if issubclass(name_or_class, sapa_variants.SAPAUpsampler):
                return _official_variant(sd), False
            raise TypeError(f"{name_or_class.__name__} is not a module class of sapa with an official "
                            f"checkpoint; expected sapa.SAPA or one of the names {list(official_names())}")
        return name, False
    if not isinstance(name_or_class, str):
        raise TypeError(f"name_or_module_class must be a name such as 'sapa-b' or a class such as sapa.SAPA, "
                        f"got {type(name_or_class).__name__}")
    key = name_or_class.strip().lower().replace("_", "-")
    if key in _ALIASES:
        if _ALIASES[key] is None:
            raise ValueError(f"{name_or_class!r} has no official module of its own (no weights to load)")
        key = _ALIASES[key]
    if key not in official_names():
        raise ValueError(f"no official module is known for {name_or_class!r}; loadable: {list(official_names())}")
    return key, False


def from_official(
    name_or_module_class: Union[str, type],
    state_dict_or_path: Union[Mapping, str, os.PathLike],
    *,
    prefix: str = "",
    scale_factor: int = 2,
    map_location: Union[str, torch.device] = "cpu",
    **options,
) -> nn.Module:
    """Build a module of this package from an official checkpoint and load it, strictly.

    Args:
        name_or_module_class: ``sapa.SAPA`` (returns a bare :class:`sapa.SAPA`, variant B, G
            or P read from the keys), or a name of :func:`sapa.upsamplers.official_names`
            (``"sapa-b"``, ``"sapa-g"``, ``"sapa-p"``, ``"sapa-d"``, ``"fade"``, ``"carafe"``,
            ``"dysample"``, ``"indexnet-hin"``, ``"indexnet-m2o"``, ``"a2u"``; also the
            official class names ``"SAPA"``, ``"CARAFEPack"``, ...) or one of the upsampler
            classes (returns that upsampler, ``forward(x, y)``).
        state_dict_or_path: the official module's ``state_dict()`` (or a checkpoint dict
            holding it under ``"state_dict"``/``"model"``), or a file: ``*.safetensors`` read
            with safetensors, anything else with ``torch.load(weights_only=True)`` (never
            runs code from the file).
        prefix: take only the keys starting with it (e.g. ``"decode_head.up.0."`` for one
            upsampler in a whole network's checkpoint).
        scale_factor: the official ``up_factor`` (integer-scale designs; CARAFE's kernel size
            is read from its encoder's s^2 K^2 output channels with it).
        **options: constructor options the state dict cannot tell (e.g. ``backend``,
            ``padding``, ``normalization`` for SAPA; ``groups`` for DySample), and sizes
            for the designs whose sizes are not read (``in_channels``, ``guide_channels``);
            an explicit size must match the checkpoint.

    Returns:
        the module with the official weights, in eval mode (``.train()`` to fine-tune).

    Raises:
        ValueError naming the missing/unexpected keys or the shape mismatches (nothing is
        loaded then), or the key the sizes could not be read from; TypeError for a bad name.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        sd = _read(state_dict_or_path)
    else:
        sd = state_dict_or_path
    sd = _unwrap(sd)
    if not isinstance(sd, Mapping):
        raise TypeError(f"state_dict_or_path must be a mapping of tensors or a file path, got {type(sd).__name__}")
    body = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if body and all(k.startswith("module.") for k in body):  # saved from DataParallel
        body = {k[len("module."):]: v for k, v in body.items()}
    if not body:
        raise ValueError(f"no key of the checkpoint starts with prefix {prefix!r} (keys: {sorted(sd)[:8]} ...)")
    name, bare = _resolve_name(name_or_module_class, body)
    sizes = _INFER[name](body, int(scale_factor)) if name in _INFER else {}
    for key, value in sizes.items():
        if key in options and options[key] != value:
            raise ValueError(f"{key}={options[key]} was given but the checkpoint has {key}={value}")
        options.setdefault(key, value)
    if "in_channels" not in options:
        raise ValueError(f"the sizes of {name!r} are not read from its checkpoint: pass in_channels=... "
                         "(and guide_channels=... for guided designs)")
    in_channels = options.pop("in_channels")
    guide_channels = options.pop("guide_channels", None)
    module = build_upsampler(name, in_channels, guide_channels, scale_factor, **options)
    load_official_state_dict(name, module, body)
    module.eval()
    return module.sapa if bare else module
