"""Figures of the book: feature and kernel maps (the paper's Fig. 2), predictions with boundary
crops (Fig. 4), and mean +- std bar charts of sweep results.

Every function takes tensors or NumPy arrays and returns NumPy images in [0, 1] or matplotlib
objects; matplotlib is imported only when a figure is drawn.

* :func:`feature_to_rgb` ``(C, H, W) -> (H, W, 3)``
* :func:`kernel_map` ``(K*K, H, W)`` or ``(B, K*K, H, W) -> (H, W, 3)``
* :func:`collect_kernels` the last upsampling step of a :class:`sapa.models.Segmenter`
* :func:`palette`, :func:`colorize` class colours
* :func:`boundary_crop`, :func:`show_predictions` predictions side by side, cropped at boundaries
* :func:`error_bar_plot` mean +- std over seeds from :func:`sapa.sweep.summarize`
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "feature_to_rgb",
    "kernel_map",
    "collect_kernels",
    "palette",
    "colorize",
    "boundary_crop",
    "show_predictions",
    "error_bar_plot",
]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _np(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().float().numpy()
    return np.asarray(a)


def _normalise(a: np.ndarray, axis=None, q: float = 1.0) -> np.ndarray:
    """Rescale to [0, 1] between the q-th and (100-q)-th percentiles (per channel with axis)."""
    lo = np.percentile(a, q, axis=axis, keepdims=True)
    hi = np.percentile(a, 100 - q, axis=axis, keepdims=True)
    out = (a - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)
    return np.clip(out, 0.0, 1.0)


def _pca3(flat: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, 3): projections on the first three principal axes (zero-padded if C < 3).

    The sign of each axis is fixed so that its largest-magnitude loading is positive, so
    the colours do not flip between runs.
    """
    x = flat - flat.mean(0, keepdims=True)
    n = min(3, x.shape[1])
    # eigenvectors of the C x C covariance: cheap for the small C used here
    cov = x.T @ x / max(len(x) - 1, 1)
    vals, vecs = np.linalg.eigh(cov.astype(np.float64))
    vecs = vecs[:, np.argsort(vals)[::-1][:n]]
    signs = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(n)])
    proj = x @ (vecs * np.where(signs == 0, 1, signs))
    if n < 3:
        proj = np.concatenate([proj, np.zeros((len(x), 3 - n))], axis=1)
    return proj


def feature_to_rgb(feat: ArrayLike, method: str = "pca") -> np.ndarray:
    """A feature map as an RGB image.

    Args:
        feat: (C, H, W) (or (1, C, H, W)) feature map.
        method: ``"pca"`` (default): the first three principal components of the C-vectors
            of all pixels; ``"channels"``: the first three channels, as in the paper's Fig. 2.
            Either way each of the three is rescaled to [0, 1] between its 1st and 99th
            percentile; with fewer than three channels/components the rest are zero.

    Returns:
        (H, W, 3) float array in [0, 1].
    """
    f = _np(feat).astype(np.float64)
    if f.ndim == 4 and f.shape[0] == 1:
        f = f[0]
    if f.ndim != 3:
        raise ValueError(f"feat must be (C, H, W), got shape {f.shape}")
    C, H, W = f.shape
    if method == "channels":
        rgb = np.zeros((H, W, 3))
        rgb[..., : min(3, C)] = f[:3].transpose(1, 2, 0)
    elif method == "pca":
        rgb = _pca3(f.reshape(C, -1).T).reshape(H, W, 3)
    else:
        raise ValueError(f"method must be 'pca' or 'channels', got {method!r}")
    out = _normalise(rgb.reshape(-1, 3), axis=0).reshape(H, W, 3)
    return out.astype(np.float32)


def kernel_map(kernels: ArrayLike, mode: str = "pca", batch_index: int = 0, cmap: str = "magma") -> np.ndarray:
    """A map of per-pixel upsampling kernels as an RGB image (the "kernel maps" of Fig. 2).

    Args:
        kernels: (K*K, H, W) or (B, K*K, H, W): the normalised weights each output pixel gives
            to the K*K points of its window (IndexNet: its (1 or C, H, W) index map).
        mode: ``"pca"`` (default): the first three principal components of the K*K weight
            vectors of all pixels, each rescaled to [0, 1] (percentiles 1-99): pixels with the
            same kernel get the same colour, so flat regions are uniform and a change of
            kernel, e.g. at a boundary, shows as a change of colour; ``"max"``: the largest
            weight per pixel (before the display rescaling: 1 = the pixel copies one point,
            1/K^2 = a uniform average; the map is then min-max rescaled for display);
            ``"entropy"``: the entropy of the weights divided by log(K^2) (0 = one point,
            1 = uniform); ``"channels"``: the first three weights. The scalar modes (and a
            single-channel input such as IndexNet-HIN's index) are rendered with ``cmap``.
        batch_index: which sample of a batched input.

    Returns:
        (H, W, 3) float array in [0, 1].
    """
    k = _np(kernels).astype(np.float64)
    if k.ndim == 4:
        k = k[batch_index]
    if k.ndim != 3:
        raise ValueError(f"kernels must be (K*K, H, W) or (B, K*K, H, W), got shape {_np(kernels).shape}")
    n, H, W = k.shape
    if mode == "pca" and n >= 3:
        return feature_to_rgb(k, "pca")
    if mode == "channels" and n >= 3:
        return feature_to_rgb(k, "channels")
    if mode in ("pca", "channels"):  # fewer than three weights: show the first as a scalar
        scalar = _normalise(k[0])
    elif mode == "max":
        scalar = k.max(0)
        scalar = (scalar - scalar.min()) / max(scalar.max() - scalar.min(), 1e-12)
    elif mode == "entropy":
        p = np.clip(k, 1e-12, None)
        p = p / p.sum(0, keepdims=True)
        scalar = np.clip(-(p * np.log(p)).sum(0) / np.log(max(n, 2)), 0.0, 1.0)
    else:
        raise ValueError(f"mode must be 'pca', 'max', 'entropy' or 'channels', got {mode!r}")
    import matplotlib

    rgb = matplotlib.colormaps[cmap](scalar)[..., :3]
    return rgb.astype(np.float32)


@torch.no_grad()
def collect_kernels(model, image: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
    """Run a Segmenter on ``image`` and return what its last (finest) upsampling step saw and made.

    Args:
        model: a :class:`sapa.models.Segmenter` (put in eval mode by the caller if wanted).
        image: (B, 3, H, W) image batch.

    Returns:
        dict with
        ``name`` (the upsampler name), ``logits`` (B, classes, H, W),
        ``x`` (B, C, H/2, W/2): the low-res decoder feature that is upsampled,
        ``y`` (B, C_y, H, W): the guide (projected encoder feature),
        ``out`` (B, C, H, W): the upsampled feature,
        ``kernels``: per-pixel weights (B, K*K, H, W) for the SAPA family (``.sapa.kernels(x, y)``),
        CARAFE (``.kernels(x)``), A2U (``.kernels(y)``) and FADE (``.kernels(x, y)``); the
        decoder index (B, 1 or C, H, W) for IndexNet; the weights of the P sampled points,
        averaged over the groups, (B, P, H, W) for SAPA-D; None for upsamplers without
        kernels (nearest, bilinear, deconv, pixel shuffle, DySample);
        ``kernel_kind``: a short description of ``kernels``.
    """
    from .upsamplers import A2U, CARAFE, FADE, IndexNetHIN, IndexNetM2O, SAPADynamic, SAPAUpsampler

    up = model.upsamplers[-1]
    seen = {}

    def hook(module, args, output):
        seen["x"], seen["y"] = args[0], args[1] if len(args) > 1 else None
        seen["out"] = output

    handle = up.register_forward_hook(hook)
    try:
        logits = model(image)
    finally:
        handle.remove()
    x, y = seen["x"], seen["y"]
    kernels, kind = None, "none"
    if isinstance(up, SAPAUpsampler):
        kernels, kind = up.sapa.kernels(x, y), "softmax weights over the K x K window (similarity)"
    elif isinstance(up, CARAFE):
        kernels, kind = up.kernels(x), "softmax weights over the K x K window (from the decoder)"
    elif isinstance(up, (IndexNetHIN, IndexNetM2O)):
        kernels, kind = up.decoder_index(y), "decoder index in (0, 1) (from the encoder)"
    elif isinstance(up, A2U):
        kernels, kind = up.kernels(y), "softmax weights over the K x K window (from the encoder)"
    elif isinstance(up, FADE):
        kernels, kind = up.kernels(x, y), "softmax weights over the K x K window (encoder + decoder)"
    elif isinstance(up, SAPADynamic):
        w, _ = up.kernels(x, y)
        kernels, kind = w.mean(1), "weights of the sampled points, mean over groups"
    return dict(name=getattr(model, "upsampler_name", type(up).__name__), logits=logits, x=x, y=y,
                out=seen["out"], kernels=kernels, kernel_kind=kind)


# --------------------------------------------------------------------------------------
# segmentation masks
# --------------------------------------------------------------------------------------
_BASE_COLOURS = np.array([
    [0.15, 0.15, 0.15],  # background: dark grey
    [0.90, 0.30, 0.25], [0.25, 0.55, 0.90], [0.95, 0.75, 0.20], [0.30, 0.80, 0.40],
    [0.70, 0.40, 0.85], [0.20, 0.80, 0.80], [0.95, 0.55, 0.75], [0.60, 0.45, 0.30],
    [0.75, 0.75, 0.75],
])


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) float RGB colours in [0, 1]; class 0 is dark grey, the next nine are
    fixed distinct colours, further classes are spread over the hue circle."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if num_classes <= len(_BASE_COLOURS):
        return _BASE_COLOURS[:num_classes].copy()
    import colorsys

    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9) for i in range(num_classes - len(_BASE_COLOURS))]
    return np.concatenate([_BASE_COLOURS, np.array(extra)], axis=0)


def colorize(mask: ArrayLike, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) RGB in [0, 1] (ignored / out-of-range labels white)."""
    m = _np(mask).astype(np.int64)
    pal = np.concatenate([palette(num_classes), np.ones((1, 3))], axis=0)
    idx = np.where((m >= 0) & (m < num_classes), m, num_classes)
    return pal[idx].astype(np.float32)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label."""
    b = np.zeros(mask.shape, bool)
    b[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    b[:-1, :] |= mask[:-1, :] != mask[1:, :]
    return b


def boundary_crop(mask: ArrayLike, size: int, score: Optional[ArrayLike] = None) -> Tuple[int, int, int, int]:
    """The size x size window (top, left, height, width) of ``mask`` (H, W) with the most
    boundary pixels, or, with ``score`` (H, W), with the largest sum of ``score`` (e.g. the
    pixels where predictions disagree)."""
    m = _np(mask)
    H, W = m.shape
    size = int(min(size, H, W))
    s = _boundary(m).astype(np.float64) if score is None else _np(score).astype(np.float64)
    c = np.pad(s.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    win = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    top, left = np.unravel_index(np.argmax(win), win.shape)
    return int(top), int(left), size, size


def show_predictions(images: ArrayLike, masks: ArrayLike, preds_by_name: Dict[str, ArrayLike],
                     crop: Union[None, str, int, Tuple[int, int, int, int], Sequence] = None,
                     num_classes: Optional[int] = None, cell: float = 1.6, crop_size: Optional[int] = None):
    """A grid of predictions (one row per image): image, ground truth, then each prediction.

    Args:
        images: (N, 3, H, W) in [0, 1].
        masks: (N, H, W) ground-truth labels.
        preds_by_name: {name: (N, H, W) predicted labels}, shown in this order.
        crop: None (whole images); ``"auto"`` (per image, the window of side ``crop_size``,
            default H // 2, where the predictions disagree most, or with the most
            ground-truth boundary when they agree); a (top, left, height, width) tuple for
            every image; or a list of such tuples, one per image. With a crop, the image
            column shows the whole image with the crop outlined and the other columns show
            the crop enlarged (nearest neighbour, so single pixels stay visible), as in the
            paper's Fig. 4.
        num_classes: colours (default: the largest label + 1).
        cell: inches per panel.

    Returns:
        the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    imgs = _np(images)
    gts = _np(masks).astype(np.int64)
    preds = {k: _np(v).astype(np.int64) for k, v in preds_by_name.items()}
    if imgs.ndim != 4 or gts.ndim != 3 or len(imgs) != len(gts):
        raise ValueError(f"images must be (N, 3, H, W) and masks (N, H, W), got {imgs.shape}, {gts.shape}")
    N, _, H, W = imgs.shape
    for k, v in preds.items():
        if v.shape != gts.shape:
            raise ValueError(f"prediction {k!r} has shape {v.shape}, expected {gts.shape}")
    if num_classes is None:
        valid = [a[a != 255] for a in [gts, *preds.values()]]
        num_classes = int(max(int(a.max()) if a.size else 0 for a in valid)) + 1
    boxes: List[Optional[Tuple[int, int, int, int]]]
    if crop is None:
        boxes = [None] * N
    elif isinstance(crop, str):
        if crop != "auto":
            raise ValueError(f"crop must be None, 'auto', a box or a list of boxes, got {crop!r}")
        size = crop_size or max(8, H // 2)
        boxes = []
        for i in range(N):
            if len(preds) >= 2:
                stack = np.stack([p[i] for p in preds.values()])
                disagree = (stack != stack[:1]).any(0).astype(np.float64)
                score = disagree + 0.1 * _boundary(gts[i]) if disagree.any() else None
            else:
                score = None
            boxes.append(boundary_crop(gts[i], size, score))
    elif len(crop) == 4 and all(isinstance(v, (int, np.integer)) for v in crop):
        boxes = [tuple(int(v) for v in crop)] * N
    else:
        boxes = [tuple(int(v) for v in b) for b in crop]
        if len(boxes) != N:
            raise ValueError(f"got {len(boxes)} crop boxes for {N} images")

    cols = ["image", "ground truth", *preds]
    fig, axes = plt.subplots(N, len(cols), figsize=(cell * len(cols), cell * N), squeeze=False)
    for i in range(N):
        box = boxes[i]
        sl = (slice(None), slice(None)) if box is None else (slice(box[0], box[0] + box[2]), slice(box[1], box[1] + box[3]))
        panels = [np.clip(imgs[i].transpose(1, 2, 0), 0, 1), colorize(gts[i][sl], num_classes)]
        panels += [colorize(p[i][sl], num_classes) for p in preds.values()]
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
            if j == 0 and box is not None:
                ax.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), box[3], box[2], fill=False, edgecolor="white",
                                       linewidth=1.2))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# sweep results
# --------------------------------------------------------------------------------------
def error_bar_plot(summary_rows: Sequence[Dict], metric: str, ax=None, label_key: str = "setting",
                   scale: float = 1.0, color=None, highlight: Sequence[str] = (), reference: Optional[float] = None):
    """Bars of ``<metric>_mean`` with ``<metric>_std`` error bars (mean +- sample std over seeds).

    Args:
        summary_rows: rows of :func:`sapa.sweep.summarize` (each has ``<metric>_mean``,
            ``<metric>_std``, ``n`` and ``label_key``), drawn in their order.
        metric: e.g. ``"miou"``, ``"boundary_iou"``, ``"time_per_iter_ms"``.
        ax: matplotlib Axes (default: a new figure).
        label_key: the field naming each bar.
        scale: multiply means and stds (e.g. 100 for percent).
        highlight: labels drawn in a darker colour.
        reference: a horizontal dashed line at this (already scaled) value, e.g. a baseline.

    Returns:
        the Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(3.0, 0.45 * len(summary_rows) + 1), 3.0))
    labels = [str(r[label_key]) for r in summary_rows]
    means = np.array([r[f"{metric}_mean"] for r in summary_rows], dtype=float) * scale
    stds = np.array([r[f"{metric}_std"] for r in summary_rows], dtype=float) * scale
    base = color or "#7aa6d6"
    colours = ["#1f4e8c" if lab in highlight else base for lab in labels]
    xs = np.arange(len(labels))
    ax.bar(xs, means, yerr=stds, color=colours, capsize=3, error_kw=dict(lw=1, ecolor="black"))
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=45 if max((len(s) for s in labels), default=0) > 4 else 0,
                       ha="right" if max((len(s) for s in labels), default=0) > 4 else "center", fontsize=8)
    if len(means):
        lo = float(np.nanmin(means - stds))
        hi = float(np.nanmax(means + stds))
        pad = 0.15 * max(hi - lo, 1e-9)
        ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1)
    ns = sorted({int(r.get("n", 0)) for r in summary_rows})
    ax.set_ylabel(f"{metric} (mean ± std, n={'/'.join(map(str, ns))})", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax
