"""Segmentation metrics: confusion matrix, mIoU, pixel accuracy and boundary IoU.

All functions take integer label maps ``pred`` and ``target`` of shape (H, W) or (N, H, W)
(any integer dtype, same shape, same device) and count over every pixel of every image,
i.e. dataset-level accumulation as in the usual mIoU protocol (not a mean of per-image
scores). Pixels whose target equals ``ignore_index`` are left out of every count.

Per-class scores are NaN for a class with an empty denominator (absent from both the
prediction and the target); means are taken over the classes that are not NaN.

Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation", CVPR 2021): for class c the *boundary band* of a binary mask M is
``M minus erode(M, d)``, the pixels of M within d pixels (chessboard distance, i.e.
d iterations of a 3 x 3 erosion) of a pixel that is not in M. The class score is

    |band(G_c) & band(P_c)| / |band(G_c) | band(P_c)|

with G_c, P_c the target and predicted masks of class c. Default d: 2 % of the image
diagonal, rounded, at least 1 pixel (2 px at 64 x 64, 4 px at 128 x 128, 10 px at 512 x 512),
the choice of Cheng et al. for their benchmarks.

One deliberate difference from their reference code: the image frame is *not* a boundary
here (``frame_is_boundary=False``): a semantic class touching the image border gets no band
along the border, so the score measures the object contours an upsampler has to recover,
not the frame. Pass ``frame_is_boundary=True`` for the original behaviour (pixels outside
the image count as "not in M").

Class-agnostic boundary IoU (:func:`foreground_boundary_iou`): the same band score for the
binary map "foreground = not ``background``" (default class 0): it scores whether object
edges are where they should be, whatever class the object is given.

Error breakdown (:func:`error_breakdown`): every wrong pixel is either a *localisation*
error, if the predicted class occurs in the target within ``d`` pixels (chessboard
distance, the boundary-band width) of it, so moving a boundary by at most ``d`` pixels
would fix it, or a *recognition* error otherwise (a class that is not there).

:class:`SegmentationMeter` accumulates the counts over batches (and across processes with
``torch.distributed``) for evaluation loops.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "confusion_matrix",
    "iou_from_confusion",
    "mean_iou",
    "pixel_accuracy",
    "boundary_band",
    "default_boundary_dilation",
    "boundary_counts",
    "boundary_iou",
    "foreground_boundary_counts",
    "foreground_boundary_iou",
    "error_breakdown",
    "SegmentationMeter",
]


def _check_labels(pred, target, num_classes, ignore_index):
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer label map, got dtype {t.dtype}")
        if t.dim() not in (2, 3):
            raise ValueError(f"{name} must have shape (H, W) or (N, H, W), got {tuple(t.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)}, "
            f"target {tuple(target.shape)}"
        )
    if pred.device != target.device:
        raise ValueError(f"pred and target are on different devices: {pred.device}, {target.device}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    for name, t, v in (("pred", pred, valid), ("target", target, valid)):
        vals = t[v]
        if vals.numel() and (int(vals.min()) < 0 or int(vals.max()) >= num_classes):
            raise ValueError(
                f"{name} has labels outside [0, {num_classes}) (num_classes={num_classes}"
                f"{', ignore_index=%d' % ignore_index if ignore_index is not None else ''}): "
                f"min {int(vals.min())}, max {int(vals.max())}"
            )
    if pred.dim() == 2:
        pred, target, valid = pred[None], target[None], valid[None]
    return pred.long(), target.long(), valid


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: Optional[int] = None
) -> torch.Tensor:
    """Confusion matrix of integer label maps.

    Args:
        pred, target: (H, W) or (N, H, W) integer tensors with labels in [0, num_classes)
            (target may also hold ``ignore_index``; pred is not checked there).
        num_classes: number of classes C.
        ignore_index: target label whose pixels are not counted.

    Returns:
        (C, C) int64 tensor ``M`` with ``M[t, p]`` = number of pixels of target class t
        predicted as p (rows: target, columns: prediction).
    """
    pred, target, valid = _check_labels(pred, target, num_classes, ignore_index)
    idx = target[valid] * num_classes + pred[valid]
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """Per-class IoU TP / (TP + FP + FN) from a (C, C) confusion matrix; (C,) float64, NaN if empty."""
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


def mean_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: Optional[int] = None,
    per_class: bool = False,
):
    """Mean intersection over union of label maps (H, W) or (N, H, W).

    Returns the mean over classes present in pred or target (a float, NaN if none), or
    ``(mean, per_class_iou)`` with ``per_class_iou`` a (C,) float64 tensor (NaN for absent
    classes) when ``per_class=True``.
    """
    ious = iou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))
    m = _nanmean(ious)
    return (m, ious) if per_class else m


def pixel_accuracy(
    pred: torch.Tensor, target: torch.Tensor, ignore_index: Optional[int] = None
) -> float:
    """Fraction of (non-ignored) pixels where pred == target, for (H, W) or (N, H, W) maps.

    NaN when every pixel is ignored.
    """
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    labels = target[target != ignore_index] if ignore_index is not None else target
    num_classes = 1 + int(max(pred.max(), labels.max() if labels.numel() else 0)) if pred.numel() else 1
    pred, target, valid = _check_labels(pred, target, max(num_classes, 1), ignore_index)
    n = int(valid.sum())
    return float(((pred == target) & valid).sum()) / n if n else math.nan


def default_boundary_dilation(height: int, width: int, fraction: float = 0.02) -> int:
    """Band width d in pixels: ``max(1, round(fraction * sqrt(H^2 + W^2)))`` (2 at 64 x 64)."""
    return max(1, int(round(fraction * math.hypot(height, width))))


def boundary_band(mask: torch.Tensor, dilation: int, frame_is_boundary: bool = False) -> torch.Tensor:
    """Inner boundary band of binary masks: ``mask & ~erode(mask, dilation)``.

    Args:
        mask: (N, H, W) or (H, W) bool tensor.
        dilation: d >= 1, erosion by a (2d+1) x (2d+1) square (= d iterations of 3 x 3).
        frame_is_boundary: if True, pixels outside the image count as background, so the
            band also runs along the image frame (Cheng et al.'s reference code).

    Returns:
        bool tensor shaped like ``mask``.
    """
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() not in (2, 3):
        seen = f"{mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a (H, W) or (N, H, W) bool tensor, got {seen}")
    squeeze = mask.dim() == 2
    m = mask[None] if squeeze else mask
    outside = (~m).float()[:, None]  # (N, 1, H, W)
    k = 2 * dilation + 1
    if frame_is_boundary:
        padded = F.pad(outside, (dilation,) * 4, value=1.0)
    else:
        padded = F.pad(outside, (dilation,) * 4, mode="replicate")
    near_outside = F.max_pool2d(padded, k, stride=1)[:, 0] > 0  # dilation of the complement
    band = m & near_outside
    return band[0] if squeeze else band


def boundary_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    dilation: Optional[int] = None,
    ignore_index: Optional[int] = None,
    frame_is_boundary: bool = False,
):
    """Per-class (intersection, union) pixel counts of boundary bands, each (C,) int64.

    Inputs as in :func:`boundary_iou`. Summing the counts over batches and dividing gives
    the dataset-level boundary IoU.
    """
    pred, target, valid = _check_labels(pred, target, num_classes, ignore_index)
    if dilation is None:
        dilation = default_boundary_dilation(*target.shape[-2:])
    # Ignored target pixels take the predicted label, so that the edge of an ignored region
    # is not a boundary of the target (they are excluded from the counts below anyway).
    target = torch.where(valid, target, pred)
    inter = torch.zeros(num_classes, dtype=torch.int64, device=target.device)
    union = torch.zeros_like(inter)
    for c in range(num_classes):
        g, p = target == c, pred == c
        if not (g.any() or p.any()):
            continue
        bg = boundary_band(g, dilation, frame_is_boundary) & valid
        bp = boundary_band(p, dilation, frame_is_boundary) & valid
        inter[c] = (bg & bp).sum()
        union[c] = (bg | bp).sum()
    return inter, union


def boundary_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    dilation: Optional[int] = None,
    ignore_index: Optional[int] = None,
    per_class: bool = False,
    frame_is_boundary: bool = False,
):
    """Boundary IoU (Cheng et al. 2021) of label maps (H, W) or (N, H, W).

    Args:
        pred, target: integer label maps of one shape.
        num_classes: number of classes C.
        dilation: band width d in pixels; default :func:`default_boundary_dilation`
            (2 % of the image diagonal: 2 px at 64 x 64).
        ignore_index: target label whose pixels are not counted.
        per_class: also return the (C,) float64 per-class scores.
        frame_is_boundary: see :func:`boundary_band` (default False: the image frame is
            not a boundary).

    Returns:
        Mean over classes with a non-empty band union (float, NaN if none), or
        ``(mean, per_class)`` with NaN for classes without any band.
    """
    inter, union = boundary_counts(pred, target, num_classes, dilation, ignore_index, frame_is_boundary)
    scores = torch.where(union > 0, inter.double() / union.clamp_min(1).double(), torch.full((num_classes,), math.nan, dtype=torch.float64, device=union.device))
    m = _nanmean(scores)
    return (m, scores) if per_class else m


def foreground_boundary_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    background: int = 0,
    dilation: Optional[int] = None,
    ignore_index: Optional[int] = None,
    frame_is_boundary: bool = False,
):
    """(intersection, union) pixel counts (ints) of the foreground/background boundary bands.

    Inputs as in :func:`foreground_boundary_iou`; summing over batches and dividing gives the
    dataset-level score.
    """
    if isinstance(background, bool) or not isinstance(background, int) or not 0 <= background < num_classes:
        raise ValueError(f"background must be a class index in [0, {num_classes}), got {background!r}")
    pred, target, valid = _check_labels(pred, target, num_classes, ignore_index)
    if dilation is None:
        dilation = default_boundary_dilation(*target.shape[-2:])
    target = torch.where(valid, target, pred)
    bg = boundary_band(target != background, dilation, frame_is_boundary) & valid
    bp = boundary_band(pred != background, dilation, frame_is_boundary) & valid
    # the band of the background side too: the edge seen from both masks
    bg |= boundary_band(target == background, dilation, frame_is_boundary) & valid
    bp |= boundary_band(pred == background, dilation, frame_is_boundary) & valid
    return int((bg & bp).sum()), int((bg | bp).sum())


def foreground_boundary_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    background: int = 0,
    dilation: Optional[int] = None,
    ignore_index: Optional[int] = None,
    frame_is_boundary: bool = False,
) -> float:
    """Class-agnostic boundary IoU: the bands of the foreground/background edges.

    Args:
        pred, target: (H, W) or (N, H, W) integer label maps.
        num_classes: number of classes C (labels are checked against it).
        background: the class that is not foreground (default 0).
        dilation, ignore_index, frame_is_boundary: as in :func:`boundary_iou`.

    Returns:
        ``|B_t & B_p| / |B_t | B_p|`` with ``B`` the pixels within ``d`` of a
        foreground/background edge on either side (NaN if neither map has such an edge).
        A foreground region given the wrong class scores as well as one given the right class.
    """
    inter, union = foreground_boundary_counts(pred, target, num_classes, background, dilation,
                                              ignore_index, frame_is_boundary)
    return inter / union if union else math.nan


def error_breakdown(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    dilation: Optional[int] = None,
    ignore_index: Optional[int] = None,
) -> Dict[str, int]:
    """Split the wrong pixels into localisation and recognition errors (counts).

    A wrong pixel (pred != target, target not ignored) is a *localisation* error when its
    predicted class occurs in the (non-ignored) target within chessboard distance ``d`` of
    it (default :func:`default_boundary_dilation`): the boundary is misplaced by at most
    ``d`` pixels. Otherwise it is a *recognition* error: the predicted class is not there.

    Args:
        pred, target: (H, W) or (N, H, W) integer label maps.
        num_classes: number of classes C.
        dilation: d >= 1.
        ignore_index: target label left out.

    Returns:
        dict of ints ``pixels`` (counted), ``errors``, ``localisation``, ``recognition``
        (``errors = localisation + recognition``).
    """
    pred, target, valid = _check_labels(pred, target, num_classes, ignore_index)
    if dilation is None:
        dilation = default_boundary_dilation(*target.shape[-2:])
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    wrong = valid & (pred != target)
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()
    near = F.max_pool2d(onehot, 2 * dilation + 1, stride=1, padding=dilation) > 0  # (N, C, H, W)
    near_pred = near.gather(1, pred[:, None].clamp(0, num_classes - 1))[:, 0]
    loc = int((wrong & near_pred).sum())
    errors = int(wrong.sum())
    return {"pixels": int(valid.sum()), "errors": errors, "localisation": loc, "recognition": errors - loc}


class SegmentationMeter:
    """Accumulates confusion matrix and boundary counts over batches.

    ``update(pred, target)`` with (N, H, W) label maps; ``all_reduce()`` sums the counts over
    the processes of the default ``torch.distributed`` group; ``compute()`` returns a dict with
    ``miou``, ``boundary_iou``, ``pixel_acc``, ``fg_boundary_iou`` (class-agnostic, see
    :func:`foreground_boundary_iou`; background = class ``background``), ``error_rate``,
    ``loc_error_rate``, ``rec_error_rate`` (fractions of all counted pixels, see
    :func:`error_breakdown`), ``loc_error_share`` (localisation / errors) (floats) and
    ``iou_per_class``, ``boundary_iou_per_class`` (lists, NaN for absent classes).
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None,
                 dilation: Optional[int] = None, frame_is_boundary: bool = False, background: int = 0):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.dilation, self.frame_is_boundary, self.background = dilation, frame_is_boundary, background
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.b_inter = torch.zeros(num_classes, dtype=torch.int64)
        self.b_union = torch.zeros(num_classes, dtype=torch.int64)
        # fg/bg band intersection, union; pixels, errors, localisation errors
        self.extra = torch.zeros(5, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of (N, H, W) or (H, W) predictions and targets."""
        pred, target = pred.detach().cpu(), target.detach().cpu()
        self.conf += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        i, u = boundary_counts(pred, target, self.num_classes, self.dilation,
                               self.ignore_index, self.frame_is_boundary)
        self.b_inter += i
        self.b_union += u
        fi, fu = foreground_boundary_counts(pred, target, self.num_classes, self.background, self.dilation,
                                            self.ignore_index, self.frame_is_boundary)
        e = error_breakdown(pred, target, self.num_classes, self.dilation, self.ignore_index)
        self.extra += torch.tensor([fi, fu, e["pixels"], e["errors"], e["localisation"]])

    def all_reduce(self) -> None:
        """Sum the counts over all processes (no-op unless torch.distributed is initialised)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([self.conf.flatten(), self.b_inter, self.b_union, self.extra])
            if dist.get_backend() == "nccl":
                flat = flat.cuda()
            dist.all_reduce(flat)
            flat = flat.cpu()
            C = self.num_classes
            self.conf = flat[: C * C].view(C, C).clone()
            self.b_inter = flat[C * C : C * C + C].clone()
            self.b_union = flat[C * C + C : C * C + 2 * C].clone()
            self.extra = flat[C * C + 2 * C :].clone()

    def compute(self) -> Dict[str, object]:
        ious = iou_from_confusion(self.conf)
        b = torch.where(self.b_union > 0, self.b_inter.double() / self.b_union.clamp_min(1).double(),
                        torch.full((self.num_classes,), math.nan, dtype=torch.float64))
        total = int(self.conf.sum())
        fi, fu, pixels, errors, loc = (int(v) for v in self.extra)
        return {
            "miou": _nanmean(ious),
            "boundary_iou": _nanmean(b),
            "pixel_acc": float(self.conf.diagonal().sum()) / total if total else math.nan,
            "fg_boundary_iou": fi / fu if fu else math.nan,
            "error_rate": errors / pixels if pixels else math.nan,
            "loc_error_rate": loc / pixels if pixels else math.nan,
            "rec_error_rate": (errors - loc) / pixels if pixels else math.nan,
            "loc_error_share": loc / errors if errors else math.nan,
            "iou_per_class": [float(v) for v in ious],
            "boundary_iou_per_class": [float(v) for v in b],
        }
