"""``sapa.from_official``: a module of this package, ready, from an official checkpoint.

The official code (``poppinace/sapa``, ``tiny-smart/sapa``, ``poppinace/fade``, mmcv's
``CARAFEPack``, ``tiny-smart/dysample``...) builds its modules as ``SAPA(dim_y, dim_x,
up_factor=2, up_kernel_size=5, embedding_dim=64)`` and calls them as ``forward(y, x)``:
the high-res guide y first. Here the low-res feature comes first everywhere:
``sapa.SAPA(in_channels=dim_x, guide_channels=dim_y, kernel_size=up_kernel_size,
embedding_dim=64)`` and ``forward(x, y)``. :func:`from_official` reads the sizes from the
state dict, checks every shape against a shape-only (``meta``) build, then builds the module
and loads the weights (renamed by :func:`sapa.upsamplers.load_official_state_dict`), so
nothing needs translating by hand. The keys tell which official module a checkpoint comes
from; asking for another one is refused with the one to pass ("this is a SAPA-D checkpoint:
pass 'sapa-d'").
"""
from __future__ import annotations

import inspect
import math
import os
import re
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .modules import SAPA
from .upsamplers import (
    A2U, CARAFE, FADE, DySample, IndexNetHIN, IndexNetM2O, SAPADynamic, SAPAUpsampler, Upsampler, build_upsampler,
)
from .upsamplers.official import (
    _official_key, _read, _unwrap, convert_official_state_dict, load_official_state_dict, official_names,
)

__all__ = ["from_official"]

_Sizes = Dict[str, object]
_BGP = ("sapa-b", "sapa-g", "sapa-p")

#: name -> (short label, the official module it loads)
_OFFICIAL = {
    "sapa-b": ("SAPA-B", "poppinace/sapa's SAPA (SAPA.py; SAPAExp with q_mode='encoder_only')"),
    "sapa-g": ("SAPA-G", "poppinace/sapa's SAPAExp with q_mode='gate'"),
    "sapa-p": ("SAPA-P", "poppinace/sapa's SAPAExp with q_mode='cat'"),
    "sapa-d": ("SAPA-D", "tiny-smart/sapa's SAPADeform (sapa_deform.py), whose module here is "
                         "sapa.upsamplers.SAPADynamic"),
    "fade": ("FADE", "poppinace/fade's FADE"),
    "carafe": ("CARAFE", "mmcv's CARAFEPack"),
    "dysample": ("DySample", "tiny-smart/dysample's DySample"),
    "indexnet-hin": ("IndexNet-HIN", "indexnet_matting's HolisticIndexBlock"),
    "indexnet-m2o": ("IndexNet-M2O", "indexnet_matting's DepthwiseM2OIndexBlock"),
    "a2u": ("A2U", "a2u_matting's InterChannelUpDown"),
}

#: the upsampler classes of the designs with an official module (SAPAUpsampler: B, G or P)
_CLASSES = {SAPADynamic: "sapa-d", FADE: "fade", CARAFE: "carafe", DySample: "dysample",
            IndexNetHIN: "indexnet-hin", IndexNetM2O: "indexnet-m2o", A2U: "a2u"}

#: names of the official classes (lower case) -> our names; None: read B/G/P from the keys
_ALIASES = {"sapa": "sapa-b", "sapaexp": None, "sapaexp-gate": "sapa-g", "sapaexp-cat": "sapa-p",
            "sapadeform": "sapa-d", "carafepack": "carafe", "holisticindexblock": "indexnet-hin",
            "depthwisem2oindexblock": "indexnet-m2o", "interchannelupdown": "a2u"}


def _keys(sd: Mapping, n: int = 12) -> str:
    return f"{sorted(sd)[:n]}{' ...' if len(sd) > n else ''}"


def _shape(sd: Mapping, key: str, name: str):
    if key not in sd:
        raise ValueError(
            f"cannot read the sizes of an official {name!r} checkpoint: it has no key {key!r} "
            f"(keys: {_keys(sd)}); pass in_channels=... (and guide_channels=...) explicitly, "
            "or check the name and prefix"
        )
    return tuple(sd[key].shape)


# ------------------------------------------------------------------------------------
# which official module the keys come from
# ------------------------------------------------------------------------------------
def _has(sd: Mapping, *heads: str) -> bool:
    return any(k == h or k.startswith(h + ".") for k in sd for h in heads)


def _identify(sd: Mapping) -> Tuple[Optional[str], str]:
    """(name, the keys that tell) of the official module whose state dict ``sd`` is;
    ``("sapa-base", ...)`` for tiny-smart/sapa's base SAPA (no counterpart here); (None, "")
    when the keys are not recognised."""
    if _has(sd, "kernel_generator", "gate_generator"):
        return "fade", "kernel_generator.*, gate_generator.*"
    if _has(sd, "channel_compressor", "content_encoder"):
        return "carafe", "channel_compressor.*, content_encoder.*"
    if _has(sd, "bconv_U", "bconv_V", "bconv_UP", "bnu", "bnv"):
        return "a2u", "bconv_U.*, bconv_V.*, bconv_UP.*, bnu.*, bnv.*"
    if any(re.match(r"indexnet\d+\.", k) for k in sd):
        return "indexnet-m2o", "indexnet1.*, indexnet2.*, ..."
    if _has(sd, "indexnet"):
        return "indexnet-hin", "indexnet.*"
    if "offset.weight" in sd:
        if _has(sd, "q", "k"):
            return "sapa-d", "q, k, offset"
        extra = (", scope" if _has(sd, "scope") else "") + (", init_pos" if "init_pos" in sd else "")
        return "dysample", "offset" + extra
    if _has(sd, "qy", "qx", "gate"):
        return "sapa-g", "qy, qx, gate"
    if "q.weight" in sd:
        q = sd["q.weight"]
        if q.dim() == 4:
            return "sapa-base", "q, k (1x1 convolutions)"
        if "norm_y.weight" in sd and "norm_x.weight" in sd:
            cy, cx = sd["norm_y.weight"].shape[0], sd["norm_x.weight"].shape[0]
            if q.dim() == 2 and q.shape[1] == cy + cx:
                return "sapa-p", f"q over [y; x] ({cy} + {cx} inputs), k, norm_y, norm_x"
        return "sapa-b", "q, k, norm_y, norm_x"
    return None, ""


def _refuse_unsupported(found: Optional[str], sd: Mapping) -> None:
    if found == "sapa-base":
        raise ValueError(
            "state_dict_or_path holds the 2023 extension's base SAPA (tiny-smart/sapa sapa_base.py): "
            f"'q.weight' has shape {tuple(sd['q.weight'].shape)}, a 1x1 convolution, and its norm_y/norm_x "
            "(if any) are GroupNorm(32) over channels and space; no module here computes it (sapa.SAPA, "
            "like poppinace/sapa's SAPA.py, normalises each pixel with LayerNorm and projects with Linear "
            "layers), so it cannot be loaded"
        )
    if found in _BGP and _has(sd, "v"):
        raise ValueError(
            f"state_dict_or_path has 'v.weight' of shape {tuple(sd['v.weight'].shape)}: a SAPAExp checkpoint "
            "with v_embed=True (or out_dim != dim_x), whose value is a projection of LN(x); sapa.SAPA uses "
            "the raw x as the value (the paper's design) and has no counterpart, so it cannot be loaded"
        )


# ------------------------------------------------------------------------------------
# what is asked for
# ------------------------------------------------------------------------------------
def _resolve(name_or_class) -> Tuple[Tuple[str, ...], bool, str]:
    """(the names the request accepts, whether a bare :class:`sapa.SAPA` is wanted, the
    request as messages show it)."""
    obj = name_or_class
    if obj is SAPA:
        return _BGP, True, "sapa.SAPA"
    if inspect.isclass(obj):
        if obj is SAPAUpsampler:
            return _BGP, False, "SAPAUpsampler"
        if obj in _CLASSES:
            return (_CLASSES[obj],), False, obj.__name__
        base = next((c for c in (SAPA, SAPAUpsampler, *_CLASSES) if issubclass(obj, c)), None)
        if base is not None:
            raise TypeError(f"name_or_module_class is {obj.__name__}, a subclass of {base.__name__}: pass "
                            f"{base.__name__} (or a name) and load into your subclass with its load_state_dict")
        if issubclass(obj, Upsampler):
            raise ValueError(f"{obj.__name__} has no official module (no official weights to load); loadable: "
                             f"sapa.SAPA, SAPAUpsampler, {', '.join(c.__name__ for c in _CLASSES)} or the names "
                             f"{list(official_names())}")
        raise TypeError(f"{obj.__name__} is not a module class of sapa with an official checkpoint; expected "
                        "sapa.SAPA, an upsampler class of sapa.upsamplers or one of the names "
                        f"{list(official_names())}")
    if isinstance(obj, nn.Module):
        name = getattr(obj, "name", None)
        hint = (f"; or load into this module with sapa.upsamplers.load_official_state_dict({name!r}, module, "
                "state_dict)") if name in official_names() else ""
        raise TypeError(f"name_or_module_class is an instance of {type(obj).__name__}: pass the class or a name"
                        f"{hint}")
    if not isinstance(obj, str):
        raise TypeError(f"name_or_module_class must be a name such as 'sapa-b' or a class such as sapa.SAPA, "
                        f"got {type(obj).__name__}")
    key = obj.strip().lower().replace("_", "-")
    if key == "sapa-i":
        raise ValueError(f"{obj!r} has no official module of its own (no weights to load)")
    if key in _ALIASES:
        if _ALIASES[key] is None:
            return _BGP, False, repr(obj)
        key = _ALIASES[key]
    if key not in official_names():
        raise ValueError(f"no official module is known for {obj!r}; loadable: {list(official_names())}")
    return (key,), False, repr(obj)


def _article(label: str) -> str:
    return "an" if label[0] in "AEIOU" else "a"


def _choose(names: Tuple[str, ...], request: str, sd: Mapping) -> str:
    """The name to build: the one asked for, or B/G/P read from the keys; a checkpoint of another
    module raises a ValueError that names it and what to pass."""
    found, evidence = _identify(sd)
    _refuse_unsupported(found, sd)
    if found is not None and found not in names:
        label, source = _OFFICIAL[found]
        asked = _OFFICIAL[names[0]][0] if len(names) == 1 else "SAPA-B, -G or -P"
        raise ValueError(
            f"this is {_article(label)} {label} checkpoint: pass {found!r} (name_or_module_class={request} "
            f"asks for {asked}; the keys of state_dict_or_path ({evidence}) are those of {source})"
        )
    if len(names) == 1:
        return names[0]
    if found is None:
        raise ValueError(
            f"name_or_module_class={request} reads SAPA-B, -G or -P from the keys, but the keys of "
            f"state_dict_or_path are not those of an official SAPA-B, -G or -P module (norm_y, norm_x, k, and q "
            f"or qy/qx/gate): {_keys(sd)}; check the prefix"
        )
    return found


# ------------------------------------------------------------------------------------
# sizes and options read from the state dict (already unprefixed)
# ------------------------------------------------------------------------------------
def _sapa_bgp(name: str) -> Callable[[Mapping, int, Mapping], _Sizes]:
    def infer(sd: Mapping, s: int, options: Mapping) -> _Sizes:
        Cy = _shape(sd, "norm_y.weight", name)[0]
        C = _shape(sd, "norm_x.weight", name)[0]
        d = _shape(sd, "k.weight", name)[0]
        return {"in_channels": C, "guide_channels": Cy, "embedding_dim": d}

    return infer


def _sapa_d(sd: Mapping, s: int, options: Mapping) -> _Sizes:
    """Channels; groups (given, or 4, or G d / embedding_dim), d = G d / groups; points from the
    offsets' G P 2 s^2 channels (2 G P with high_offset=False); norm and qkv_bias from the keys."""
    Gd, Cy = _shape(sd, "q.weight", "sapa-d")[:2]
    C = _shape(sd, "k.weight", "sapa-d")[1]
    n_off = _shape(sd, "offset.weight", "sapa-d")[0]
    if "groups" in options:
        G = options["groups"]
    elif "embedding_dim" in options:
        d = options["embedding_dim"]
        if not isinstance(d, int) or d <= 0 or Gd % d:
            raise ValueError(f"embedding_dim={d} was given but 'q.weight' has {Gd} output channels "
                             "(groups * embedding_dim), not a multiple of it")
        G = Gd // d
    else:
        G = 4  # the official default
    if not isinstance(G, int) or G <= 0 or Gd % G:
        raise ValueError(f"'q.weight' has {Gd} output channels (groups * embedding_dim), not a multiple of "
                         f"groups={G}: pass the official groups=... (its default is 4)")
    high = options.get("high_offset", True)
    per = 2 * G * (s * s if high else 1)
    if n_off % per:
        raise ValueError(f"'offset.weight' has {n_off} output channels, not a multiple of 2 * groups"
                         f"{' * scale_factor^2' if high else ''} = {per} (groups={G}, scale_factor={s}, "
                         f"high_offset={high}): pass the official groups, scale_factor (up_factor) and high_offset")
    return {"in_channels": C, "guide_channels": Cy, "groups": G, "embedding_dim": Gd // G, "points": n_off // per,
            "norm": _has(sd, "norm_y", "norm_x"), "qkv_bias": "q.bias" in sd}


def _fade(sd: Mapping, s: int, options: Mapping) -> _Sizes:
    d, C = _shape(sd, "kernel_generator.conv1_en.weight", "fade")[:2]
    KK = _shape(sd, "kernel_generator.conv2_kernels", "fade")[0]
    return {"in_channels": C, "embedding_dim": d, "kernel_size": math.isqrt(KK)}


def _carafe(sd: Mapping, s: int, options: Mapping) -> _Sizes:
    m, C = _shape(sd, "channel_compressor.weight", "carafe")[:2]
    out, _, ke = _shape(sd, "content_encoder.weight", "carafe")[:3]
    return {"in_channels": C, "compressed_channels": m, "encoder_kernel_size": ke,
            "kernel_size": math.isqrt(out // (s * s))}


def _dysample(sd: Mapping, s: int, options: Mapping) -> _Sizes:
    n, C = _shape(sd, "offset.weight", "dysample")[:2]
    if n % (2 * s * s):
        raise ValueError(f"'offset.weight' has {n} output channels, not 2 * groups * scale_factor^2 for "
                         f"scale_factor={s}: pass the official scale (its up factor) as scale_factor")
    return {"in_channels": C, "groups": n // (2 * s * s), "dyscope": _has(sd, "scope")}


#: name -> reads the constructor sizes (and options the keys tell) from the official state dict
_INFER: Dict[str, Callable[[Mapping, int, Mapping], _Sizes]] = {
    "sapa-b": _sapa_bgp("sapa-b"), "sapa-g": _sapa_bgp("sapa-g"), "sapa-p": _sapa_bgp("sapa-p"),
    "sapa-d": _sapa_d, "fade": _fade, "carafe": _carafe, "dysample": _dysample,
}


def _check_shapes(name: str, probe: nn.Module, sd: Mapping, sizes: str) -> None:
    """Missing/unexpected keys and shape mismatches of ``sd`` against ``probe`` (a meta build),
    named with the official keys; raises ValueError before anything real is built."""
    converted = convert_official_state_dict(name, probe, sd)
    ours = probe.state_dict()
    key = lambda k: _official_key(name, k, probe)  # noqa: E731
    missing = sorted(key(k) for k in set(ours) - set(converted))
    unexpected = sorted(key(k) for k in set(converted) - set(ours))
    shapes = []
    for k in sorted(set(ours) & set(converted)):
        have, want = tuple(converted[k].shape), tuple(ours[k].shape)
        if have != want:
            here = f" (here {k!r})" if key(k) != k else ""
            shapes.append(f"{key(k)!r} has shape {have}, expected {want}{here}")
    if missing or unexpected or shapes:
        label = _OFFICIAL[name][0]
        lines = [f"state_dict_or_path does not fit {label} with {sizes} (read from it or given); nothing was built:"]
        if missing:
            lines.append(f"  missing keys (the module needs them, the checkpoint lacks them): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys (in the checkpoint, unknown to {label}): {unexpected}")
        lines += [f"  {line}" for line in shapes]
        raise ValueError("\n".join(lines))


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
        name_or_module_class: what to build, one of
            ``sapa.SAPA`` -- a bare :class:`sapa.SAPA`, variant B, G or P read from the keys;
            a name of :func:`sapa.upsamplers.official_names` (``"sapa-b"``, ``"sapa-g"``,
            ``"sapa-p"``, ``"sapa-d"``, ``"fade"``, ``"carafe"``, ``"dysample"``,
            ``"indexnet-hin"``, ``"indexnet-m2o"``, ``"a2u"``) or an official class name
            (``"SAPA"``, ``"SAPAExp"`` (B, G or P from the keys), ``"SAPADeform"``,
            ``"CARAFEPack"``, ``"FADE"``, ``"DySample"``, ``"HolisticIndexBlock"``,
            ``"DepthwiseM2OIndexBlock"``, ``"InterChannelUpDown"``) -- that upsampler;
            an upsampler class (``SAPAUpsampler`` (B, G or P from the keys), ``SAPADynamic``,
            ``FADE``, ``CARAFE``, ``DySample``, ``IndexNetHIN``, ``IndexNetM2O``, ``A2U``) --
            that class. Every upsampler has ``forward(x, y)``.
        state_dict_or_path: the official module's ``state_dict()`` (or a checkpoint dict
            holding it under ``"state_dict"``/``"model"``; keys saved from DataParallel with
            ``"module."``), or a file: ``*.safetensors`` read with safetensors, anything else
            with ``torch.load(weights_only=True)`` (never runs code from the file).
        prefix: take only the keys starting with it (e.g. ``"decode_head.up.0."`` for one
            upsampler in a whole network's checkpoint).
        scale_factor: the official ``up_factor`` (integer-scale designs; CARAFE's kernel size,
            DySample's groups and SAPA-D's points are read with it).
        **options: constructor options the state dict cannot tell (``kernel_size``,
            ``backend``, ``padding``, ``normalization`` for SAPA; ``groups`` (default 4) and
            ``high_offset`` for SAPA-D), and the sizes of the designs whose sizes are not read
            (``in_channels``, ``guide_channels`` for IndexNet and A2U); an explicit size
            must match the checkpoint. Read: channels and embedding_dim of SAPA-B/G/P;
            channels, embedding_dim, points, norm, qkv_bias of SAPA-D; FADE's channels,
            embedding_dim, kernel_size; CARAFE's channels, compressed_channels, kernel sizes;
            DySample's channels, groups, dyscope.

    Returns:
        the module with the official weights, in eval mode (``.train()`` to fine-tune).

    Raises:
        ValueError, before anything real is built: the checkpoint is another module's ("this
        is a SAPA-D checkpoint: pass 'sapa-d'") or one without a counterpart here; a size
        cannot be read (the key named) or disagrees with an explicit one; missing or unexpected
        keys, or a key whose shape disagrees with the sizes (the official key, its shape and
        the expected one). TypeError for a bad ``name_or_module_class`` (an instance, a class
        of another library).
    """
    names, bare, request = _resolve(name_or_module_class)
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
    name = _choose(names, request, body)
    s = int(scale_factor)
    sizes = _INFER[name](body, s, options) if name in _INFER else {}
    for key, value in sizes.items():
        if key in options and options[key] != value:
            raise ValueError(f"{key}={options[key]} was given but the checkpoint has {key}={value}")
        options.setdefault(key, value)
    if "in_channels" not in options:
        raise ValueError(f"the sizes of {name!r} are not read from its checkpoint: pass in_channels=... "
                         "(and guide_channels=... for guided designs)")
    in_channels = options.pop("in_channels")
    guide_channels = options.pop("guide_channels", None)
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        probe = build_upsampler(name, in_channels, guide_channels, s, **options)
    shown = ", ".join(f"{k}={v}" for k, v in [("in_channels", in_channels), ("guide_channels", guide_channels),
                                              *sorted(options.items())] if v is not None)
    _check_shapes(name, probe, body, shown)
    module = build_upsampler(name, in_channels, guide_channels, s, **options)
    load_official_state_dict(name, module, body)
    module.eval()
    return module.sapa if bare else module
