"""Per-pixel linear probes: how much the class of a pixel can be read off one encoder stage.

SAPA decides point affiliation from the similarity of the encoder's high-resolution feature
(stage 0, the guide) to the decoder's low-resolution ones; it can only help where the guide
separates the classes. A *linear probe* measures that: the features of one encoder stage of a
trained :class:`sapa.lab.models.Segmenter`, bilinearly upsampled to the mask's resolution, are
fed pixel by pixel to a multinomial logistic regression (a 1 x 1 linear layer) fitted on the
pixels of some images and scored (pixel accuracy, mIoU) on other images.

Command line: train a bilinear Segmenter with the stored task's settings
(:data:`sapa.lab.sweep.STORED_TASK`, its dataset replaced) on each task, then probe the image
itself, the first and the last encoder stage::

    python -m sapa.lab.probes --dataset textures --dataset statistics --out probes.json

The run folders (``--runs``, default ``runs/probes``) are named as the sweep names its runs, so
``--runs runs/sweep`` reuses a finished bilinear run of a stored sweep with the same settings
(seed, epochs) instead of training again; a rerun resumes or reuses them too.

Python::

    from sapa.lab.probes import linear_probe
    linear_probe(model, dataset, stage=0)   # {"pixel_acc": ..., "miou": ..., ...}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_positive_int as _positive_int

__all__ = ["stage_features", "LinearProbe", "fit_probe", "evaluate_probe", "linear_probe", "probe_table",
           "format_table", "main", "STORED_COMMAND"]

Stage = Union[int, str]


#: the command that wrote the stored ``book/results/probes.json``
STORED_COMMAND = ("python -m sapa.lab.probes --dataset textures --dataset statistics --threads 1 --runs runs/sweep "
                  "--out book/results/probes.json")


def _check_stage(stage, num_stages: Optional[int] = None):
    if stage == "image":
        return stage
    if isinstance(stage, bool) or not isinstance(stage, int):
        raise TypeError(f"stage must be an int (encoder stage; negative counts from the last) or 'image', "
                        f"got {stage!r}")
    if num_stages is not None and not -num_stages <= stage < num_stages:
        raise ValueError(f"stage must lie in [{-num_stages}, {num_stages - 1}] for an encoder of {num_stages} "
                         f"stages, got {stage}")
    return stage


@torch.no_grad()
def stage_features(model: nn.Module, images: torch.Tensor, stage: Stage) -> torch.Tensor:
    """Encoder stage ``stage`` of ``model.encode(images)``, upsampled bilinearly to the images' size.

    Args:
        model: a :class:`sapa.lab.models.Segmenter` (anything with ``encode(images) -> list of
            (B, C_k, H_k, W_k)``); used in eval mode, without gradients.
        images: (B, C_in, H, W) float.
        stage: index into the encoder stages (0: the first, high-resolution stage; -1: the last),
            or ``"image"`` for the images themselves.

    Returns: (B, C_stage, H, W) float32 features (``align_corners=False``).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.dtype.is_floating_point:
        raise ValueError(f"images must be a float (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if stage == "image":
        return images.float()
    if not callable(getattr(model, "encode", None)):
        raise TypeError(f"model must have an encode(images) method (a sapa.lab.models.Segmenter), got "
                        f"{type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        feats = model.encode(images)
    finally:
        model.train(was_training)
    _check_stage(stage, len(feats))
    f = feats[stage].float()
    if f.shape[-2:] != images.shape[-2:]:
        f = F.interpolate(f, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return f


class LinearProbe(nn.Module):
    """Per-pixel multinomial logistic regression: standardise each channel, then a 1 x 1 conv.

    ``forward(features (B, C, H, W)) -> logits (B, num_classes, H, W)``; ``mean`` and ``std``
    (C,) are the training pixels' channel statistics.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.linear = nn.Linear(channels, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.movedim(1, -1) - self.mean) / self.std
        return self.linear(x).movedim(-1, 1)


def _check_pair(features, labels, num_classes):
    if not isinstance(features, torch.Tensor) or features.dim() != 4 or not features.dtype.is_floating_point:
        raise ValueError(f"features must be a float (N, C, H, W) tensor, got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    if (not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.dtype.is_floating_point
            or labels.dtype == torch.bool):
        raise ValueError(f"labels must be an integer (N, H, W) tensor, got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.shape != features.shape[:1] + features.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} must match the features {tuple(features.shape)} "
                         f"(N, H, W)")
    return _positive_int("num_classes", num_classes)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, pixels: int = 32768,
              steps: int = 300, lr: float = 0.05, seed: int = 0, ignore_index: Optional[int] = None) -> LinearProbe:
    """Fit a :class:`LinearProbe` to ``pixels`` pixels drawn at random (seeded) from the labelled ones.

    Args:
        features: (N, C, H, W) float; labels: (N, H, W) int in [0, num_classes) or ``ignore_index``.
        pixels: training pixels (all of them if fewer).
        steps, lr: full-batch Adam steps on the cross-entropy, from zero weights (deterministic).
        seed: seeds the choice of the pixels.

    Returns: the fitted probe, in eval mode.
    """
    num_classes = _check_pair(features, labels, num_classes)
    pixels, steps = _positive_int("pixels", pixels), _positive_int("steps", steps)
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    x = features.detach().movedim(1, -1).reshape(-1, features.shape[1]).float()
    y = labels.reshape(-1)
    keep = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    idx = keep.nonzero().squeeze(1)
    if idx.numel() == 0:
        raise ValueError("labels has no labelled pixel (every pixel is ignore_index)")
    if int(y[idx].min()) < 0 or int(y[idx].max()) >= num_classes:
        raise ValueError(f"labels lie in [{int(y[idx].min())}, {int(y[idx].max())}], outside "
                         f"[0, num_classes={num_classes})")
    g = torch.Generator().manual_seed(int(seed))
    if idx.numel() > pixels:
        idx = idx[torch.randperm(idx.numel(), generator=g)[:pixels].to(idx.device)]
    x, y = x[idx], y[idx]
    probe = LinearProbe(x.shape[1], num_classes).to(x.device)
    probe.mean.copy_(x.mean(0))
    probe.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    xs = (x - probe.mean) / probe.std
    opt = torch.optim.Adam(probe.linear.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(probe.linear(xs), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return probe.eval()


@torch.no_grad()
def evaluate_probe(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   ignore_index: Optional[int] = None) -> Dict[str, object]:
    """Score a probe on (N, C, H, W) features against (N, H, W) labels.

    Returns dict with ``pixel_acc``, ``miou`` (over the classes present in the labels or the
    predictions, :func:`sapa.lab.metrics.mean_iou`), ``iou_per_class`` (list, NaN for absent
    classes) and ``majority_acc`` (the accuracy of always answering the most frequent class).
    """
    from .metrics import iou_from_confusion, confusion_matrix

    num_classes = _check_pair(features, labels, num_classes)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for k in range(0, features.shape[0], 16):
        pred = probe(features[k:k + 16].float()).argmax(1)
        conf += confusion_matrix(pred.cpu(), labels[k:k + 16].cpu(), num_classes, ignore_index)
    ious = iou_from_confusion(conf)
    present = ious[~torch.isnan(ious)]
    total = int(conf.sum())
    return dict(pixel_acc=float(conf.diagonal().sum()) / max(total, 1),
                miou=float(present.mean()) if present.numel() else float("nan"),
                iou_per_class=[float(v) for v in ious],
                majority_acc=float(conf.sum(1).max()) / max(total, 1))


def _stack(dataset, indices: Sequence[int]):
    items = [dataset[i] for i in indices]
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def linear_probe(model: nn.Module, dataset, stage: Stage, train_images: int = 64, test_images: int = 64,
                 pixels: int = 32768, steps: int = 300, lr: float = 0.05, seed: int = 0,
                 batch_size: int = 16) -> Dict[str, object]:
    """Linear probe of encoder stage ``stage`` of ``model`` on ``dataset``.

    Images ``0 .. train_images-1`` of ``dataset`` (items ``(image (3, H, W), mask (H, W))``)
    train the probe (:func:`fit_probe` on ``pixels`` of their pixels), images ``train_images ..
    train_images+test_images-1`` score it (:func:`evaluate_probe`, every pixel): disjoint images.

    Args:
        model: a :class:`sapa.lab.models.Segmenter` (its ``encode``), used in eval mode.
        stage: 0 (first, high-resolution stage), -1 (last), any index, or ``"image"``.
        batch_size: images per forward pass of the encoder.

    Returns: the scores of :func:`evaluate_probe` plus ``stage``, ``channels``, ``resolution``
    (the stage's (H_k, W_k) before upsampling), ``train_images``, ``test_images``,
    ``train_pixels``.
    """
    if not callable(getattr(model, "encode", None)):
        raise TypeError(f"model must have an encode(images) method (a sapa.lab.models.Segmenter), got "
                        f"{type(model).__name__}")
    stage = _check_stage(stage)
    train_images = _positive_int("train_images", train_images)
    test_images = _positive_int("test_images", test_images)
    batch_size = _positive_int("batch_size", batch_size)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(f"dataset must be a map-style Dataset, got {type(dataset).__name__}")
    if len(dataset) < train_images + test_images:
        raise ValueError(f"dataset has {len(dataset)} images, fewer than train_images + test_images = "
                         f"{train_images} + {test_images}")
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        raise ValueError("dataset needs a num_classes attribute")
    ignore_index = getattr(dataset, "ignore_index", None)
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")

    def features_of(indices):
        fs, ms, res = [], [], None
        for k in range(0, len(indices), batch_size):
            img, mask = _stack(dataset, indices[k:k + batch_size])
            f = stage_features(model, img.to(device), stage)
            if res is None:
                res = (tuple(img.shape[-2:]) if stage == "image"
                       else tuple(_native_resolution(model, img, stage, device)))
            fs.append(f.cpu())
            ms.append(mask)
        return torch.cat(fs), torch.cat(ms), res

    xf, yf, res = features_of(list(range(train_images)))
    probe = fit_probe(xf, yf, num_classes, pixels=pixels, steps=steps, lr=lr, seed=seed, ignore_index=ignore_index)
    n_fit = int(min(pixels, (yf != ignore_index).sum() if ignore_index is not None else yf.numel()))
    del xf, yf
    xt, yt, _ = features_of(list(range(train_images, train_images + test_images)))
    scores = evaluate_probe(probe, xt, yt, num_classes, ignore_index)
    return dict(stage=stage, channels=int(xt.shape[1]), resolution=list(res), train_images=train_images,
                test_images=test_images, train_pixels=n_fit, **scores)


@torch.no_grad()
def _native_resolution(model, img, stage, device):
    was_training = model.training
    model.eval()
    try:
        return model.encode(img[:1].to(device))[stage].shape[-2:]
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------
# the table: a bilinear Segmenter per task, probed
# --------------------------------------------------------------------------------------
def _train_config(dataset: str, seed: int, runs: str, overrides: Dict) -> Dict:
    """The training config of the bilinear Segmenter of ``dataset``: the stored task's settings,
    run folder named as :mod:`sapa.lab.sweep` names it (so a sweep's finished run is reused)."""
    from .sweep import STORED_TASK, _config_id, _run_name

    cfg = dict(STORED_TASK, dataset=dataset, upsampler="bilinear", seed=seed, data_seed=seed,
               upsampler_options={}, **overrides)
    cid, _ = _config_id(cfg)
    cfg["out"] = str(Path(runs) / f"{_run_name('bilinear', {}, seed)}_{cid}")
    return cfg


def probe_table(datasets: Sequence[str] = ("textures", "statistics"), stages: Sequence[Stage] = ("image", 0, -1),
                seed: int = 0, runs: str = "runs/probes", train_overrides: Optional[Dict] = None,
                train_images: int = 64, test_images: int = 64, pixels: int = 32768, steps: int = 300,
                lr: float = 0.05, progress: bool = True) -> Dict[str, object]:
    """Train (or reuse) a bilinear Segmenter per dataset and probe the given stages.

    The Segmenter is :func:`sapa.lab.train.train` with :data:`sapa.lab.sweep.STORED_TASK`, the
    dataset replaced, ``seed`` (also the data seed, as in the sweep) and ``train_overrides``
    (e.g. ``{"epochs": 10}``); the probes use the first ``train_images + test_images`` images
    of the dataset's validation split (:func:`linear_probe`).

    Returns dict with ``segmenters`` ({dataset: {val_miou, epochs, run, config}}) and ``probes``
    (one :func:`linear_probe` record per (dataset, stage), with ``dataset`` added).
    """
    from tqdm.auto import tqdm

    from .data import PROCEDURAL_DATASETS, make_dataset
    from .train import resolve_config, train

    datasets = list(datasets)
    if not datasets:
        raise ValueError("datasets must name at least one dataset")
    for d in datasets:
        if d not in PROCEDURAL_DATASETS:
            raise ValueError(f"unknown dataset {d!r} (--dataset); expected one of {PROCEDURAL_DATASETS}")
    overrides = dict(train_overrides or {})
    configs = {d: _train_config(d, seed, runs, overrides) for d in datasets}  # every setting checked first
    num_stages = resolve_config(configs[datasets[0]]).stages
    stages = [_check_stage(s, num_stages) for s in stages]
    if not stages:
        raise ValueError("stages must name at least one stage")
    for name, v in (("train_images", train_images), ("test_images", test_images), ("pixels", pixels),
                    ("steps", steps)):
        _positive_int(name, v)
    segmenters, probes = {}, []
    bar = tqdm(total=len(datasets) * (1 + len(stages)), desc="probes", disable=not progress, dynamic_ncols=True)
    try:
        for d in datasets:
            bar.set_postfix_str(f"training on {d}")
            result = train(dict(configs[d], progress=False))
            model = result.pop("model").eval()
            cfg = resolve_config(configs[d])
            segmenters[d] = dict(val_miou=result["final"].get("val_miou"), epochs=len(result["epochs"]),
                                 run=configs[d]["out"], config=result["config"])
            bar.update()
            val = make_dataset(d, split="val", size=cfg.size, num_samples=max(cfg.val_samples,
                                                                               train_images + test_images),
                               seed=cfg.data_seed)
            for s in stages:
                bar.set_postfix_str(f"{d}, stage {s}")
                probes.append(dict(dataset=d, **linear_probe(model, val, s, train_images=train_images,
                                                             test_images=test_images, pixels=pixels,
                                                             steps=steps, lr=lr, seed=seed)))
                bar.update()
    finally:
        bar.close()
    return dict(segmenters=segmenters, probes=probes)


def format_table(table: Dict[str, object]) -> str:
    """The probes as a fixed-width text table."""
    lines = [f"{'dataset':12s} {'segmenter mIoU':>14s} {'stage':>6s} {'channels':>8s} {'resolution':>10s} "
             f"{'probe acc':>9s} {'probe mIoU':>10s} {'majority acc':>12s}"]
    for p in table["probes"]:
        seg = table["segmenters"][p["dataset"]]["val_miou"]
        res = "x".join(map(str, p["resolution"]))
        lines.append(f"{p['dataset']:12s} {seg if seg is not None else float('nan'):14.3f} {str(p['stage']):>6s} "
                     f"{p['channels']:8d} {res:>10s} {p['pixel_acc']:9.3f} {p['miou']:10.3f} "
                     f"{p['majority_acc']:12.3f}")
    return "\n".join(lines)


def _stage_arg(text: str):
    if text == "image":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stage expects an int (0: first stage, -1: last) or 'image', "
                                         f"got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .data import PROCEDURAL_DATASETS
    from .sweep import STORED_TASK

    p = argparse.ArgumentParser(
        prog="python -m sapa.lab.probes",
        description="Train a bilinear Segmenter with the stored task's settings on each dataset and fit "
                    "per-pixel linear probes to its encoder stages (held-out pixel accuracy and mIoU).")
    p.add_argument("--dataset", action="append", choices=PROCEDURAL_DATASETS, default=None,
                   help="a task, repeatable (default: textures and statistics)")
    p.add_argument("--stage", action="append", type=_stage_arg, default=None,
                   help="encoder stage to probe, repeatable: 0 (first), -1 (last), any index, or 'image' "
                        "(default: image, 0, -1)")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default: the stored task's "
                   f"{STORED_TASK['epochs']})")
    p.add_argument("--seed", type=int, default=0, help="training seed, also the data seed (as in the sweep)")
    p.add_argument("--runs", default="runs/probes", help="folder of the run checkpoints (runs/sweep reuses "
                   "a stored sweep's finished bilinear runs)")
    p.add_argument("--out", default=None, help="JSON file of the results, the command and its wall time")
    p.add_argument("--train-images", type=int, default=64, help="images whose pixels fit each probe")
    p.add_argument("--test-images", type=int, default=64, help="other images that score it")
    p.add_argument("--pixels", type=int, default=32768, help="training pixels per probe")
    p.add_argument("--steps", type=int, default=300, help="Adam steps per probe")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of the probes")
    for flag, help_text in (("size", "image side (smoke tests)"), ("train-samples", "training samples per epoch"),
                            ("val-samples", "validation images"),
                            ("max-steps-per-epoch", "cap on steps per epoch (smoke tests)")):
        p.add_argument(f"--{flag}", type=int, default=None, help=f"{help_text}; default: the stored task's")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    argv = list(argv) if argv is not None else sys.argv[1:]
    overrides = {k: v for k, v in (("epochs", a.epochs), ("size", a.size), ("train_samples", a.train_samples),
                                   ("val_samples", a.val_samples), ("max_steps_per_epoch", a.max_steps_per_epoch))
                 if v is not None}
    overrides["device"] = a.device
    if a.threads is not None:
        if a.threads < 1:
            parser.exit(2, f"{parser.prog}: error: --threads must be >= 1, got {a.threads}\n")
        torch.set_num_threads(a.threads)
    if a.out is not None:
        out = Path(a.out)
        if out.is_dir():
            parser.exit(2, f"{parser.prog}: error: --out {a.out} is a folder; give a JSON file name\n")
    t0 = time.time()
    try:
        table = probe_table(a.dataset or ["textures", "statistics"], a.stage or ["image", 0, -1], seed=a.seed,
                            runs=a.runs, train_overrides=overrides, train_images=a.train_images,
                            test_images=a.test_images, pixels=a.pixels, steps=a.steps, lr=a.lr,
                            progress=a.progress)
    except (ValueError, TypeError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    seconds = round(time.time() - t0, 1)
    print(format_table(table))
    if a.out is not None:
        from .checkpoint import atomic_write
        from .train import _json_safe as json_safe

        record = dict(command="python -m sapa.lab.probes " + " ".join(argv), seconds=seconds,
                      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      machine=f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                              f"torch {torch.__version__}, {torch.get_num_threads()} "
                              f"thread{'s' if torch.get_num_threads() != 1 else ''}",
                      settings=dict(seed=a.seed, train_overrides=overrides, train_images=a.train_images,
                                    test_images=a.test_images, pixels=a.pixels, steps=a.steps, lr=a.lr),
                      **table)
        text = json.dumps(json_safe(record), indent=1, default=str)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(a.out, lambda f: f.write(text.encode()))
        print(f"wrote {a.out} ({seconds} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
