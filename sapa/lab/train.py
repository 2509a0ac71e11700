"""Train the :class:`sapa.lab.models.Segmenter` with one upsampler; resumable, DDP-ready.

Command line::

    python -m sapa.lab.train --upsampler sapa-b --profile quick --seed 0 --out runs/sapa-b-s0
    torchrun --standalone --nproc_per_node=2 -m sapa.lab.train --upsampler sapa-g --out runs/g

Python::

    from sapa.lab.train import train
    result = train({"upsampler": "bilinear", "profile": "quick", "out": "runs/bilinear"})
    result["final"]["val_miou"]

What a run writes (rank 0 only) in ``out``:

* ``last.pt``: model, optimizer, finished epoch count, history, config (a dict of plain
  values) and the Python/NumPy/torch RNG states, as tensors and plain values only, under a
  format header (:mod:`sapa.lab.checkpoint`). It is read back with ``weights_only=True``, so
  loading it never runs code. Written atomically (a temporary file, flushed, then
  ``os.replace``-d): an interruption never leaves a torn checkpoint in place of the last one;
* ``metrics.json``: config, parameter counts, one record per finished epoch (train loss,
  val mIoU, boundary IoU, pixel accuracy, per-class scores, ms per iteration, lr) and
  ``final`` (the last epoch's record).

Rerunning the same command continues after the last finished epoch (``--no-resume`` starts
over). ``epochs`` may grow between runs: the cosine schedule is a function of the step and
the total step count, so it is recomputed for the new length. Any other change of a
setting that defines the run (upsampler, data, sizes, seed, batch, lr, ...) is refused
with an error listing the differences. A last.pt that is damaged, not a checkpoint, of
another model or of another checkpoint format version is refused with one line naming it,
before any training starts.

Your own data: ``train(config, train_dataset=ds_train, val_dataset=ds_val)`` trains on any
map-style Datasets returning ``(image (C, H, W) float, mask (H, W) int64)`` pairs; the class
count comes from ``config["num_classes"]`` or the dataset's ``num_classes`` attribute, the
ignored label from its ``ignore_index`` attribute (default none), and a ``set_epoch(epoch)``
method, if the dataset has one, is called before every epoch. The first item of each set is
checked (types, shapes, labels) before anything is built.

Schedules (``schedule``):

* ``"cosine"`` (default): AdamW, linear warm-up over the first 5 % of the steps (at least
  one), then cosine decay to 1 % of ``lr`` at ``epochs``.
* ``"plateau"``, **train to convergence**: after the same warm-up, a constant learning rate
  that is multiplied by ``decay_factor`` (0.2) whenever the epoch's mean training loss has
  not improved on the best so far by more than ``plateau_tol`` (1 %, relative) for
  ``patience`` (3) consecutive epochs. The run has *converged*, and stops, at the
  ``max_decays + 1``-th (3rd) such plateau: the loss no longer improves even at the
  smallest learning rate. ``epochs`` is then only a cap; a run that reaches it unconverged
  is reported with ``converged = False``. With fresh samples every epoch
  (:class:`sapa.lab.data.TexturedRegions`) the training loss is an unbiased estimate of the
  expected loss, so no validation data is used to stop.

Seeds and pairing: ``seed`` seeds Python, NumPy and torch (model initialisation) and the
shuffling (the sampler's own generator, seeded by ``seed`` and the epoch), and ``data_seed``
fixes the data (``TexturedRegions`` draws epoch ``e``'s samples from ``(data_seed, e)``). The
data order therefore depends on ``seed`` only, not on the upsampler or the model: runs of
different upsamplers with one seed see the same batches in the same order, so their results
are paired (see :mod:`sapa.lab.stats`).

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl on CUDA), ``batch_size`` is the *global* batch
(split evenly across processes), training batches come from a DistributedSampler, the
validation set is sharded and its counts are summed, BatchNorm running statistics are
averaged across processes at the end of each epoch, and only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import (CheckpointError, atomic_write, check_plain, describe_mismatch,
                         load_training_checkpoint, rng_state, save_training_checkpoint, set_rng_state)
from . import data as data_module
from .data import DATASETS, IGNORE_INDEX, make_dataset
from .metrics import SegmentationMeter
from .models import HEADS, SKIP_FUSIONS, Segmenter, available_segmenter_upsamplers, count_parameters
from .profiles import PROFILES, get_profile

__all__ = ["TrainConfig", "PROFILE_DEFAULTS", "SCHEDULES", "resolve_config", "train", "lr_at",
           "plateau_state", "main"]

SCHEDULES = ("cosine", "plateau")

#: settings filled in from the profile when left as None
PROFILE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # a minute or two per upsampler on a laptop CPU
    "quick": dict(size=64, train_samples=1024, val_samples=256, epochs=4, batch_size=16,
                  lr=2e-3, width=16, decoder_width=16),
    # meant for a GPU (e.g. a Colab T4): about 10x the pixels and 30x the steps
    "full": dict(size=128, train_samples=8000, val_samples=1000, epochs=30, batch_size=32,
                 lr=1e-3, width=32, decoder_width=64),
}

#: settings that may change when a run is resumed
_RESUMABLE_CHANGES = ("epochs", "num_workers", "progress", "resume", "out", "device", "download",
                      "threads", "profile")


@dataclass
class TrainConfig:
    """Settings of one training run (None = the profile's default, see PROFILE_DEFAULTS)."""

    upsampler: str = "bilinear"
    profile: Optional[str] = None  # None: $SAPA_PROFILE (default "quick")
    seed: int = 0
    out: Optional[str] = None  # None: nothing written, no resuming
    dataset: str = "synthetic"
    data_root: Optional[str] = None
    download: bool = False
    data_seed: int = 0
    num_classes: Optional[int] = None  # synthetic: 2..6 (default 6); folder: inferred
    size: Optional[int] = None
    train_samples: Optional[int] = None
    val_samples: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    width: Optional[int] = None
    decoder_width: Optional[int] = None
    stages: int = 4
    head: str = "unet"  # "unet" or "segformer" (see sapa.lab.models)
    skip_fusion: Optional[str] = None  # None: "concat" for the U-Net arm, "none" for SegFormer
    upsampler_options: Dict[str, Any] = field(default_factory=dict)
    schedule: str = "cosine"  # or "plateau": train to convergence (see the module docstring)
    patience: int = 3
    plateau_tol: float = 0.01
    decay_factor: float = 0.2
    max_decays: int = 2
    eval_every: int = 1  # validate every N epochs (0: only the last); the last epoch always
    max_steps_per_epoch: Optional[int] = None  # cap (smoke tests)
    num_workers: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = True
    resume: bool = True


def resolve_config(config, custom_data: bool = False) -> TrainConfig:
    """A TrainConfig (or dict of its fields) with profile defaults filled in and checked.

    Every mistake raises ValueError/TypeError naming the setting (and the CLI flag), before
    anything is built: unknown upsampler, head, dataset or option of the upsampler
    (``--upsampler-option``), a CUDA device without CUDA, non-positive sizes. With
    ``custom_data=True`` (datasets passed to :func:`train`) ``dataset`` is "custom".
    """
    if isinstance(config, TrainConfig):
        cfg = dataclasses.replace(config)
    elif isinstance(config, dict):
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        cfg = TrainConfig(**config)
    else:
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    cfg.profile = cfg.profile or get_profile()
    if cfg.profile not in PROFILES:
        raise ValueError(f"unknown profile {cfg.profile!r}; expected one of {PROFILES}")
    for key, value in PROFILE_DEFAULTS[cfg.profile].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    names = available_segmenter_upsamplers()
    if cfg.upsampler not in names:
        raise ValueError(f"unknown upsampler {cfg.upsampler!r} (--upsampler); available: {', '.join(names)}")
    if custom_data:
        cfg.dataset = "custom"
    elif cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r} (--dataset); expected one of {DATASETS}")
    elif cfg.dataset not in data_module.PROCEDURAL_DATASETS and not cfg.data_root:
        raise ValueError(f"--dataset {cfg.dataset} needs --data-root PATH")
    if cfg.head not in HEADS:
        raise ValueError(f"unknown head {cfg.head!r} (--head); expected one of {HEADS}")
    if cfg.skip_fusion is None:
        cfg.skip_fusion = "none" if cfg.head == "segformer" else "concat"
    if cfg.skip_fusion not in SKIP_FUSIONS:
        raise ValueError(f"unknown skip_fusion {cfg.skip_fusion!r}; expected one of {SKIP_FUSIONS}")
    if cfg.head == "segformer" and cfg.skip_fusion != "none":
        raise ValueError(f"--head segformer never fuses the guide: --skip-fusion must be 'none', "
                         f"got {cfg.skip_fusion!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r} (--schedule); expected one of {SCHEDULES}")
    if isinstance(cfg.patience, bool) or not isinstance(cfg.patience, int) or cfg.patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {cfg.patience!r}")
    if isinstance(cfg.eval_every, bool) or not isinstance(cfg.eval_every, int) or cfg.eval_every < 0:
        raise ValueError(f"eval_every must be an int >= 0, got {cfg.eval_every!r}")
    if isinstance(cfg.max_decays, bool) or not isinstance(cfg.max_decays, int) or cfg.max_decays < 0:
        raise ValueError(f"max_decays must be an int >= 0, got {cfg.max_decays!r}")
    if not (isinstance(cfg.plateau_tol, (int, float)) and 0 <= cfg.plateau_tol < 1):
        raise ValueError(f"plateau_tol must lie in [0, 1), got {cfg.plateau_tol!r}")
    if not (isinstance(cfg.decay_factor, (int, float)) and 0 < cfg.decay_factor < 1):
        raise ValueError(f"decay_factor must lie in (0, 1), got {cfg.decay_factor!r}")
    device = str(cfg.device)
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r} (--device); expected auto, cpu or cuda[:N]")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                         f"{'no GPU visible' if torch.version.cuda else 'a CPU-only build'}); "
                         f"use --device cpu or auto")
    for key in ("epochs", "batch_size", "size", "width", "decoder_width", "stages", "train_samples", "val_samples"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{key} must be a positive int, got {v!r}")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise ValueError(f"lr must be a positive number, got {cfg.lr!r}")
    if cfg.max_steps_per_epoch is not None and cfg.max_steps_per_epoch <= 0:
        raise ValueError(f"max_steps_per_epoch must be positive or None, got {cfg.max_steps_per_epoch}")
    if not isinstance(cfg.upsampler_options, dict):
        raise TypeError(f"upsampler_options must be a dict, got {type(cfg.upsampler_options).__name__}")
    check_plain(cfg.upsampler_options, "upsampler_options")  # stored in checkpoints and JSON
    try:  # an unknown or bad option fails here, in one line, not inside the model
        Segmenter(2, cfg.upsampler, width=1, stages=2, decoder_width=cfg.decoder_width,
                  upsampler_options=dict(cfg.upsampler_options))
    except (TypeError, ValueError) as e:
        raise ValueError(f"--upsampler-option {cfg.upsampler_options} for {cfg.upsampler!r}: {e}") from None
    return cfg


def plateau_state(losses, cfg: TrainConfig):
    """The "plateau" schedule folded over the epochs' training losses so far.

    Returns ``(lr_scale, decays, converged)``: the factor applied to ``lr`` for the next
    epoch, the number of decays so far, and whether the run has converged (the
    ``max_decays + 1``-th plateau of ``patience`` epochs without a relative improvement
    greater than ``plateau_tol``). A pure function of the history, so resuming continues it.
    """
    best, since, decays = math.inf, 0, 0
    for loss in losses:
        if loss < best * (1 - cfg.plateau_tol):
            best, since = loss, 0
            continue
        since += 1
        if since >= cfg.patience:
            if decays >= cfg.max_decays:
                return cfg.decay_factor ** decays, decays, True
            decays, since = decays + 1, 0
    return cfg.decay_factor ** decays, decays, False


def lr_at(step: int, total_steps: int, base_lr: float, warmup_fraction: float = 0.05,
          final_fraction: float = 0.01) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then cosine decay."""
    warm = max(1, int(round(warmup_fraction * total_steps)))
    if step < warm:
        return base_lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(_json_safe(data), indent=2)
    atomic_write(path, lambda f: f.write(text.encode()))


class _Dist:
    """Process-group bookkeeping: world size, rank, device, and whether we own the group."""

    def __init__(self, device: str):
        import torch.distributed as dist

        self.dist = dist
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.owns_group = False
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if (torch.cuda.is_available() and device in ("auto", "cuda")) else "gloo"
            dist.init_process_group(backend=backend)
            self.owns_group = True
        self.enabled = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world = dist.get_world_size() if self.enabled else 1
        self.rank = dist.get_rank() if self.enabled else 0
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and self.enabled:
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        self.device = torch.device(device)

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return float(t) / self.world

    def sync_buffers(self, model: nn.Module) -> None:
        """Average float buffers (BatchNorm running stats) over processes; copy the rest from rank 0."""
        if not self.enabled:
            return
        for b in model.buffers():
            if b.dtype.is_floating_point:
                self.dist.all_reduce(b)
                b.div_(self.world)
            else:
                self.dist.broadcast(b, 0)

    def barrier(self):
        if self.enabled:
            self.dist.barrier()

    def close(self):
        if self.owns_group:
            self.dist.destroy_process_group()


def _check_resume(saved: dict, cfg: TrainConfig) -> None:
    now = dataclasses.asdict(cfg)
    defaults = dataclasses.asdict(TrainConfig())  # keys older checkpoints lack: their default
    defaults["skip_fusion"] = "concat" if saved.get("head", "unet") == "unet" else "none"
    diff = {k: (saved.get(k, defaults[k]), now[k]) for k in now
            if k not in _RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]}
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(
            f"cannot resume from {cfg.out}/last.pt: the run settings changed ({lines}); "
            f"use the original settings, another --out, or --no-resume to start over"
        )


def _check_dataset(ds, name: str, num_classes: Optional[int], ignore_index) -> int:
    """Check a user's dataset on its first item; returns the image channel count."""
    if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
        raise TypeError(f"{name} must be a map-style Dataset (with __getitem__ and __len__), got {type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError(f"{name} is empty")
    item = ds[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, torch.Tensor) for t in item)):
        raise TypeError(f"{name}[0] must be an (image, mask) pair of tensors, got {type(item).__name__}")
    img, mask = item
    if img.dim() != 3 or not img.dtype.is_floating_point:
        raise ValueError(f"{name}[0] image must be a float (C, H, W) tensor, got {img.dtype} {tuple(img.shape)}")
    if mask.dim() != 2 or mask.dtype.is_floating_point or mask.dtype == torch.bool or mask.shape != img.shape[1:]:
        raise ValueError(f"{name}[0] mask must be an integer (H, W) tensor matching the image {tuple(img.shape)}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if num_classes is not None:
        m = mask[mask != ignore_index] if ignore_index is not None else mask
        if m.numel() and (int(m.min()) < 0 or int(m.max()) >= num_classes):
            raise ValueError(f"{name}[0] mask has labels in [{int(m.min())}, {int(m.max())}], outside "
                             f"[0, num_classes={num_classes})"
                             + (f" (ignore_index {ignore_index})" if ignore_index is not None else ""))
    return int(img.shape[0])


def _check_folder_labels(ds, num_classes: int, split: str) -> None:
    """Read every mask of a folder dataset; ValueError naming the first with a label >= num_classes."""
    from torch.utils.data import Subset

    base = ds.dataset if isinstance(ds, Subset) else ds
    idx = list(ds.indices) if isinstance(ds, Subset) else range(len(base))
    for i in idx:
        mp = base.pairs[i][1]
        m = data_module._mask_array(mp)
        bad = (m != IGNORE_INDEX) & ((m < 0) | (m >= num_classes))
        if bad.any():
            raise ValueError(
                f"mask {mp} ({split} split) has labels {sorted(set(m[bad].tolist()))[:5]} outside "
                f"[0, {num_classes}) (--num-classes {num_classes}; {IGNORE_INDEX} = ignore)")


def _evaluate(model: nn.Module, loader, num_classes: int, ignore_index, device, dist: _Dist) -> dict:
    meter = SegmentationMeter(num_classes, ignore_index=ignore_index)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for img, mask in loader:
            logits = model(img.to(device))
            meter.update(logits.argmax(1).cpu(), mask)
    model.train(was_training)
    meter.all_reduce()
    return meter.compute()


# --------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------
def _run_epoch(model, loader, optimizer, step0, total_steps, cfg, dist, epoch, max_steps, lr_scale=1.0,
               ignore_index=None, steps_per_epoch=1):
    """One epoch of training; returns (mean loss over processes, steps done, mean step seconds, lr)."""
    from tqdm.auto import tqdm

    model.train()
    total_loss, n, step_time, lr = 0.0, 0, 0.0, cfg.lr
    bar = tqdm(loader, total=min(len(loader), max_steps), desc=f"epoch {epoch}/{cfg.epochs}",
               disable=not (cfg.progress and dist.rank == 0), leave=False, dynamic_ncols=True)
    for img, mask in bar:
        if n >= max_steps:
            break
        t0 = time.perf_counter()
        if cfg.schedule == "plateau":  # warm-up over the first epoch's first steps, then constant
            warm = max(1, int(round(cfg.warmup_fraction * steps_per_epoch)))
            lr = cfg.lr * lr_scale * min(1.0, (step0 + n + 1) / warm)
        else:
            lr = lr_at(step0 + n, total_steps, cfg.lr, cfg.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        img, mask = img.to(dist.device, non_blocking=True), mask.to(dist.device, non_blocking=True)
        logits = model(img)
        loss = F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX if ignore_index is None else ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        step_time += time.perf_counter() - t0
        total_loss += loss_value
        n += 1
        bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    return dist.mean(total_loss / max(n, 1)), n, step_time / max(n, 1), lr


def train(config, train_dataset=None, val_dataset=None) -> Dict[str, Any]:
    """Train one Segmenter; resumable; DDP-aware. See the module docstring.

    Args:
        config: a :class:`TrainConfig` or a dict of its fields.
        train_dataset, val_dataset: your own map-style Datasets of (image (C, H, W) float,
            mask (H, W) int64) pairs, both or neither (then ``config["dataset"]`` is used;
            with them it is recorded as "custom"). The class count is
            ``config["num_classes"]`` or ``train_dataset.num_classes``.

    Returns:
        dict with ``config`` (resolved, as a dict), ``params``, ``upsampler_params``,
        ``world_size``, ``epochs`` (one record per finished epoch), ``final`` (the last
        record, or {} if no epoch ran), ``class_names`` (the content of metrics.json), plus
        ``model``: the trained (unwrapped) Segmenter. ``converged`` is True/False under the
        "plateau" schedule (see :func:`plateau_state`) and None under "cosine".
    """
    if (train_dataset is None) != (val_dataset is None):
        raise ValueError("pass both train_dataset and val_dataset, or neither")
    cfg = resolve_config(config, custom_data=train_dataset is not None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = _Dist(cfg.device)
    try:
        return _train(cfg, dist, train_dataset, val_dataset)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: _Dist, user_train=None, user_val=None) -> Dict[str, Any]:
    from torch.utils.data import DataLoader, Subset
    from torch.utils.data.distributed import DistributedSampler

    out = Path(cfg.out) if cfg.out else None
    ckpt_path = out / "last.pt" if out else None
    if out and dist.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.batch_size % dist.world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {dist.world}")
    resume = None  # read and checked before anything is built or trained
    if ckpt_path is not None and cfg.resume and ckpt_path.exists():
        resume = load_training_checkpoint(ckpt_path)
        _check_resume(resume["config"], cfg)
        if resume["epoch"] > cfg.epochs:
            raise ValueError(
                f"{ckpt_path} has {resume['epoch']} finished epochs but epochs={cfg.epochs} was asked for: "
                f"pass epochs >= {resume['epoch']} to resume, or --no-resume (a new --out) to start over"
            )
    _seed_everything(cfg.seed)

    # data ----------------------------------------------------------------------------
    in_channels = 3
    if user_train is not None:
        train_ds, val_ds = user_train, user_val
        num_classes = cfg.num_classes or getattr(train_ds, "num_classes", None)
        if num_classes is None:
            raise ValueError("the class count is unknown: pass num_classes in the config or give "
                             "train_dataset a num_classes attribute")
        ignore_index = getattr(train_ds, "ignore_index", None)
        in_channels = _check_dataset(train_ds, "train_dataset", num_classes, ignore_index)
        if _check_dataset(val_ds, "val_dataset", num_classes, ignore_index) != in_channels:
            raise ValueError("train_dataset and val_dataset images have different channel counts")
    else:
        common = dict(root=cfg.data_root, size=cfg.size, seed=cfg.data_seed, download=cfg.download,
                      num_classes=cfg.num_classes)
        if cfg.download and dist.enabled and dist.rank != 0:
            dist.barrier()  # rank 0 downloads first
        train_ds = make_dataset(cfg.dataset, split="train", num_samples=cfg.train_samples, **common)
        if cfg.download and dist.enabled and dist.rank == 0:
            dist.barrier()
        val_ds = make_dataset(cfg.dataset, split="val", num_samples=cfg.val_samples, **common)
        num_classes, ignore_index = train_ds.num_classes, train_ds.ignore_index
        if cfg.dataset == "folder":  # every label checked before training, naming the file
            _check_folder_labels(train_ds, num_classes, "train")
            _check_folder_labels(val_ds, num_classes, "val")
    per_rank_batch = cfg.batch_size // dist.world
    sampler = DistributedSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    drop_last = len(train_ds) // dist.world >= per_rank_batch
    train_loader = DataLoader(train_ds, batch_size=per_rank_batch, sampler=sampler,
                              num_workers=cfg.num_workers, drop_last=drop_last,
                              pin_memory=dist.device.type == "cuda")
    val_shard = Subset(val_ds, list(range(dist.rank, len(val_ds), dist.world)))
    val_loader = DataLoader(val_shard, batch_size=max(per_rank_batch, 1), shuffle=False,
                            num_workers=cfg.num_workers)
    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({len(train_ds)} samples) gives no batch of {per_rank_batch} per process")
    total_steps = steps_per_epoch * cfg.epochs

    # model -----------------------------------------------------------------------------
    model = Segmenter(num_classes, cfg.upsampler, width=cfg.width, stages=cfg.stages, in_channels=in_channels,
                      decoder_width=cfg.decoder_width, upsampler_options=cfg.upsampler_options,
                      skip_fusion=cfg.skip_fusion, head=cfg.head).to(dist.device)
    params = count_parameters(model)
    up_params = sum(count_parameters(u) for u in model.upsamplers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    history, start_epoch = [], 0
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt_path}: its weights do not fit the model of its config "
                                  f"({describe_mismatch(e)}); expected a checkpoint of this Segmenter") from e
        try:
            optimizer.load_state_dict(resume["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{ckpt_path}: damaged optimizer state ({e}); expected the AdamW "
                                  f"state of this Segmenter") from e
        history, start_epoch = list(resume["history"]), int(resume["epoch"])
        set_rng_state(resume["rng"], dist.device)
        if dist.rank == 0:
            print(f"resuming {ckpt_path} after epoch {start_epoch}", file=sys.stderr)
    train_model = model
    if dist.enabled:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def summary() -> Dict[str, Any]:
        return {
            "config": dataclasses.asdict(cfg),
            "params": params,
            "upsampler_params": up_params,
            "world_size": dist.world,
            "class_names": list(train_ds.class_names) if getattr(train_ds, "class_names", None) else None,
            "epochs": history,
            "final": dict(history[-1]) if history else {},
            "converged": (plateau_state([r["train_loss"] for r in history], cfg)[2]
                          if cfg.schedule == "plateau" else None),
        }

    for epoch in range(start_epoch, cfg.epochs):
        lr_scale = 1.0
        if cfg.schedule == "plateau":
            lr_scale, _, converged = plateau_state([r["train_loss"] for r in history], cfg)
            if converged:
                break
        t_epoch = time.perf_counter()
        sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)  # fresh samples (TexturedRegions), the same for every upsampler
        loss, steps, sec_per_it, lr = _run_epoch(
            train_model, train_loader, optimizer, epoch * steps_per_epoch, total_steps, cfg, dist,
            epoch + 1, steps_per_epoch, lr_scale, ignore_index, steps_per_epoch)
        dist.sync_buffers(model)
        last = epoch + 1 == cfg.epochs or (
            cfg.schedule == "plateau" and plateau_state([r["train_loss"] for r in history] + [loss], cfg)[2])
        if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            val = _evaluate(model, val_loader, num_classes, ignore_index, dist.device, dist)
        else:  # eval_every: validation skipped this epoch (the last epoch is always evaluated)
            val = dict.fromkeys(("miou", "boundary_iou", "pixel_acc", "iou_per_class", "boundary_iou_per_class",
                                 "fg_boundary_iou", "error_rate", "loc_error_rate", "rec_error_rate",
                                 "loc_error_share"))
        record = {
            "epoch": epoch + 1,
            "train_loss": loss,
            "val_miou": val["miou"],
            "val_boundary_iou": val["boundary_iou"],
            "val_pixel_acc": val["pixel_acc"],
            "val_iou_per_class": val["iou_per_class"],
            "val_boundary_iou_per_class": val["boundary_iou_per_class"],
            "val_fg_boundary_iou": val["fg_boundary_iou"],
            "val_error_rate": val["error_rate"],
            "val_loc_error_rate": val["loc_error_rate"],
            "val_rec_error_rate": val["rec_error_rate"],
            "val_loc_error_share": val["loc_error_share"],
            "time_per_iter_ms": 1000 * sec_per_it,
            "steps": steps,
            "lr": lr,
            "epoch_time_s": time.perf_counter() - t_epoch,
        }
        history.append(record)
        if dist.rank == 0:
            scores = (f"mIoU {val['miou']:.4f}  boundary IoU {val['boundary_iou']:.4f}  acc {val['pixel_acc']:.4f}"
                      if val["miou"] is not None else "(not evaluated)")
            print(f"[{cfg.upsampler}] epoch {epoch + 1}/{cfg.epochs}  loss {loss:.4f}  {scores}  "
                  f"({record['epoch_time_s']:.1f} s, {record['time_per_iter_ms']:.0f} ms/it)", file=sys.stderr)
            if out is not None:
                save_training_checkpoint(ckpt_path, {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "config": dataclasses.asdict(cfg),
                    "rng": rng_state(dist.device),
                })
                _write_json(out / "metrics.json", summary())
        dist.barrier()

    result = summary()
    if out is not None and dist.rank == 0 and len(history) == start_epoch:
        _write_json(out / "metrics.json", result)  # nothing left to train: refresh the file
    result["model"] = model
    return result


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def _parse_option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--upsampler-option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # keep as a string
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sapa.lab.train",
        description="Train the small Segmenter with one upsampler (resumable; runs under torchrun).",
    )
    p.add_argument("--upsampler", help="upsampler name (see --list-upsamplers)")
    p.add_argument("--list-upsamplers", action="store_true", help="print the available names and exit")
    p.add_argument("--profile", choices=PROFILES, default=None, help="default: $SAPA_PROFILE or quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<upsampler>-s<seed>)")
    p.add_argument("--dataset", choices=DATASETS, default="synthetic",
                   help="synthetic (default), textures (the boundary-dominated task), folder, oxford-pets")
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true", help="oxford-pets: fetch it with torchvision if missing")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--size", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--decoder-width", type=int)
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--head", choices=HEADS, default="unet", help="decoder arm (see sapa.lab.models)")
    p.add_argument("--skip-fusion", choices=SKIP_FUSIONS, default=None,
                   help="U-Net arm: concat (default), add or none; the segformer arm: none")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="cosine over --epochs, or plateau: train to convergence (--epochs is a cap)")
    p.add_argument("--patience", type=int, default=3, help="plateau: epochs without improvement")
    p.add_argument("--plateau-tol", type=float, default=0.01, help="plateau: relative improvement that counts")
    p.add_argument("--max-decays", type=int, default=2, help="plateau: lr decays before the stop")
    p.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (0: only the last)")
    p.add_argument("--upsampler-option", action="append", type=_parse_option, default=[],
                   metavar="KEY=VALUE", help="extra build_upsampler option, repeatable")
    p.add_argument("--train-samples", type=int)
    p.add_argument("--val-samples", type=int)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT/last.pt if present (default) or start over")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_upsamplers:
        print("\n".join(available_segmenter_upsamplers()))
        return 0
    if not args.upsampler:
        parser.error("--upsampler is required (see --list-upsamplers)")
    out = args.out or f"runs/{args.dataset}-{args.upsampler}-s{args.seed}"
    config = dict(
        upsampler=args.upsampler, profile=args.profile, seed=args.seed, out=out,
        dataset=args.dataset, data_root=args.data_root, download=args.download,
        data_seed=args.data_seed, num_classes=args.num_classes, size=args.size,
        train_samples=args.train_samples, val_samples=args.val_samples, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, width=args.width,
        decoder_width=args.decoder_width,
        stages=args.stages, skip_fusion=args.skip_fusion, head=args.head, schedule=args.schedule,
        patience=args.patience, plateau_tol=args.plateau_tol, max_decays=args.max_decays,
        eval_every=args.eval_every,
        upsampler_options=dict(args.upsampler_option), max_steps_per_epoch=args.max_steps_per_epoch,
        num_workers=args.num_workers, device=args.device, threads=args.threads,
        progress=args.progress, resume=args.resume,
    )
    try:
        resolve_config(config)  # a bad setting (ValueError or TypeError) ends here, in one line
    except (ValueError, TypeError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    try:
        result = train(config)
    except (ValueError, FileNotFoundError, ImportError) as e:  # CheckpointError is a ValueError
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if int(os.environ.get("RANK", "0")) == 0:
        final = result["final"]
        print(json.dumps(_json_safe({k: final.get(k) for k in
                                     ("epoch", "val_miou", "val_boundary_iou", "val_pixel_acc",
                                      "time_per_iter_ms")} | {"out": out, "params": result["params"],
                                                              "converged": result["converged"]})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
