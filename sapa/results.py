"""Stored results of the book: where they live, and the trained models kept next to them.

The chapters that compare upsamplers read ``<results>/segmentation.csv`` and
``<results>/ablations.csv`` (written by :mod:`sapa.sweep`), the JSON files beside them
(``command``, ``seconds``, ``date``, ``machine``, ``train_overrides``), and a few trained
models ``<results>/models/<run>.pt`` exported from the sweep's run folders::

    from sapa.results import export_model, load_model
    export_model("runs/segmentation/sapa-b_s0", "book/results/models/sapa-b_s0.pt")
    model = load_model("book/results/models/sapa-b_s0.pt")     # a Segmenter in eval mode

An exported file is a dict ``{"config": TrainConfig as a dict, "model": float32 state dict}``:
no optimizer state, no history, so it is a fraction of the checkpoint's size.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

__all__ = ["ENV_VAR", "repo_root", "results_dir", "export_model", "load_model", "model_config"]

#: environment variable that overrides the results folder
ENV_VAR = "SAPA_RESULTS_DIR"

PathLike = Union[str, os.PathLike]


def repo_root(start: Optional[PathLike] = None) -> Optional[Path]:
    """The repository root: the first folder, from ``start`` (default: the cwd) upwards, then from
    this package's folder upwards, that holds ``_config.yml`` (the book's configuration).

    Returns None when there is none (e.g. the package installed from a wheel on Colab).
    """
    starts = [Path(start) if start is not None else Path.cwd(), Path(__file__).resolve().parent]
    for s in starts:
        s = s.resolve()
        for d in (s, *s.parents):
            if (d / "_config.yml").is_file():
                return d
    return None


def results_dir(start: Optional[PathLike] = None) -> Optional[Path]:
    """``$SAPA_RESULTS_DIR`` if set, else ``<repo root>/book/results``; None without a checkout."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root(start)
    return root / "book" / "results" if root is not None else None


def export_model(run_dir: PathLike, dest: PathLike) -> Path:
    """Save the model of a training run (``run_dir/last.pt``) as ``{"config", "model"}``.

    The state dict is stored in float32 on the CPU (integer buffers such as BatchNorm's
    ``num_batches_tracked`` keep their dtype). Returns the destination path.
    """
    src = Path(run_dir) / "last.pt"
    if not src.is_file():
        raise FileNotFoundError(f"no checkpoint {src}: train the run first")
    state = torch.load(src, map_location="cpu", weights_only=False)
    sd = {k: (v.detach().to(torch.float32) if v.is_floating_point() else v.detach()).clone()
          for k, v in state["model"].items()}
    config = dict(state["config"])
    config["epochs_trained"] = int(state.get("epoch", config.get("epochs") or 0))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    torch.save({"config": config, "model": sd}, tmp)
    os.replace(tmp, dest)
    return dest


def _num_classes(config: Dict[str, Any], state_dict: Dict[str, torch.Tensor]) -> int:
    if "head.weight" in state_dict:
        return int(state_dict["head.weight"].shape[0])
    if config.get("num_classes"):
        return int(config["num_classes"])
    from .data import SYNTHETIC_CLASSES

    return len(SYNTHETIC_CLASSES)


def model_config(path: PathLike) -> Dict[str, Any]:
    """The training config stored in an exported model file (a dict of TrainConfig fields)."""
    return dict(torch.load(path, map_location="cpu", weights_only=False)["config"])


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """Rebuild the :class:`sapa.models.Segmenter` of an exported file, in eval mode.

    The architecture comes from the stored config (``upsampler``, ``width``, ``stages``,
    ``upsampler_options``, ``skip_fusion``); the class count and the decoder width from the
    head's weight (so configs written before ``decoder_width`` existed load too). The
    config is attached as ``model.config``.
    """
    from .models import Segmenter

    blob = torch.load(path, map_location="cpu", weights_only=False)
    cfg, sd = dict(blob["config"]), blob["model"]
    decoder_width = int(sd["head.weight"].shape[1]) if "head.weight" in sd else cfg.get("decoder_width")
    model = Segmenter(_num_classes(cfg, sd), cfg["upsampler"], width=int(cfg["width"]),
                      stages=int(cfg.get("stages", 4)), decoder_width=decoder_width,
                      upsampler_options=dict(cfg.get("upsampler_options") or {}),
                      skip_fusion=cfg.get("skip_fusion", "concat"))
    model.load_state_dict(sd)
    model.config = cfg
    return model.to(device).eval()
