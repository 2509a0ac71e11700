"""Figures of the book: feature and kernel maps (the paper's Fig. 2), predictions with boundary
crops (Fig. 4), and mean +- std bar charts of sweep results.

Every function takes tensors or NumPy arrays and returns NumPy images in [0, 1] or matplotlib
objects; matplotlib is imported only when a figure is drawn.

* :func:`feature_to_rgb` ``(C, H, W) -> (H, W, 3)``
* :func:`kernel_map` ``(K*K, H, W)`` or ``(B, K*K, H, W) -> (H, W, 3)``
* :func:`collect_kernels` the last upsampling step of a :class:`sapa.lab.models.Segmenter`
* :func:`palette`, :func:`colorize` class colours
* :func:`boundary_crop`, :func:`show_predictions` predictions side by side, cropped at boundaries
* :func:`error_bar_plot` mean +- std over seeds from :func:`sapa.lab.sweep.summarize`
* :func:`paired_difference_plot` per-seed paired differences to a baseline (dots), their mean
  and interval, Holm's verdict; :func:`seed_lines_plot` the scores of each seed joined across
  settings; :func:`curve_plot` validation curves of a sweep's ``curve`` column
* :func:`show_map` a scalar map with its colour bar; :func:`mechanism_plot` the mechanism
  experiment's scores against the noise level, one point per seed; :func:`task_difference_plot`
  the paired differences to bilinear of two tasks side by side (:mod:`sapa.lab.weak_guide`)
* :func:`use_book_style` the one figure style of the book (>= 10 pt text, SVG output)
* :func:`glue`, :func:`show_table` numbers and tables quoted by the book's prose
* :func:`draw_sapa_pipeline`, :func:`draw_window_gather`, :func:`draw_triton_tiling` diagrams
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
    "paired_difference_plot",
    "seed_lines_plot",
    "curve_plot",
    "show_map",
    "mechanism_plot",
    "task_difference_plot",
    "TASK_TITLES",
    "DISPLAY_NAMES",
    "SEED_COLOURS",
    "BOOK_WIDTH",
    "BOOK_STYLE",
    "MIN_FONT_PT",
    "use_book_style",
    "glue",
    "markdown_table",
    "show_table",
    "class_legend",
    "draw_sapa_pipeline",
    "draw_window_gather",
    "draw_triton_tiling",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

# --------------------------------------------------------------------------------------
# the book's figure style, set once
# --------------------------------------------------------------------------------------
#: Width (inches) of a full-width figure: the book's text column is 688 px wide on a 1280 px
#: screen and an SVG figure is drawn at 96 px per inch, so a 7-inch figure is shown at its own
#: size and its 10 pt text stays 10 pt.
BOOK_WIDTH = 7.0

#: The smallest text size (points) any figure of the book uses.
MIN_FONT_PT = 10

#: rcParams of every figure in the book: no text below MIN_FONT_PT, full-width figures.
BOOK_STYLE = {
    "figure.figsize": (BOOK_WIDTH, 3.0),
    "figure.dpi": 96,
    "savefig.dpi": 192,
    "font.size": MIN_FONT_PT,
    "axes.titlesize": MIN_FONT_PT,
    "axes.labelsize": MIN_FONT_PT,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": MIN_FONT_PT,
    "figure.titlesize": MIN_FONT_PT + 1,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "nearest",
    "svg.fonttype": "path",
}


def use_book_style(fmt: str = "svg") -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib and, inside IPython/Jupyter, show figures as
    ``fmt``: ``"svg"`` (default) or ``"retina"`` (PNG at twice the resolution)."""
    import matplotlib

    if fmt not in ("svg", "retina", "png"):
        raise ValueError(f"fmt must be 'svg', 'retina' or 'png', got {fmt!r}")
    matplotlib.rcParams.update(BOOK_STYLE)
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - plain Python without IPython
        return
    if get_ipython() is not None:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats(fmt)


def glue(name: str, value) -> None:
    """Store ``value`` under ``name`` for the book's prose (myst-nb's ``glue``), never as an
    output box. Strings are stored as Markdown, so ``{glue:}`name``` shows them without
    quotes. Outside Jupyter (or without myst-nb, e.g. on Colab) it does nothing."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    try:
        from IPython import get_ipython
        from myst_nb import glue as _glue
    except ImportError:
        return
    if get_ipython() is None:
        return
    if isinstance(value, str):
        from IPython.display import Markdown

        value = Markdown(value)
    _glue(name, value, display=False)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: Optional[str] = None) -> str:
    """A Markdown pipe table of ``rows`` (each a sequence of len(header) cells). ``align``: one
    letter per column, ``l``, ``r`` or ``c`` (default: first column left, the others right)."""
    header = [str(h) for h in header]
    if align is None:
        align = "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - set("lrc"):
        raise ValueError(f"align must have one of l/r/c per column ({len(header)}), got {align!r}")
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def show_table(header: Sequence[str], rows: Sequence[Sequence], align: Optional[str] = None,
               caption: Optional[str] = None) -> None:
    """Display ``rows`` as a table (rendered as an HTML table in the book and in Jupyter)."""
    from IPython.display import Markdown, display

    text = markdown_table(header, rows, align)
    display(Markdown((f"**{caption}**\n\n" if caption else "") + text))


def class_legend(fig_or_ax, names: Sequence[str], num_classes: Optional[int] = None, ncol: Optional[int] = None,
                 colours: Optional[ArrayLike] = None):
    """A legend of class colours on a Figure (centred below the panels) or an Axes.

    ``colours``: (len(names), 3 or 4) RGB(A) in [0, 1]; default :func:`palette`, the colours
    of :func:`colorize`."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = num_classes or len(names)
    cols = _np(colours) if colours is not None else palette(
        n, (list(names) + [f"class {i}" for i in range(len(names), n)])[:n])
    if len(cols) < len(names):
        raise ValueError(f"{len(cols)} colours for {len(names)} class names")
    handles = [Patch(facecolor=cols[i], edgecolor="black", linewidth=0.5, label=str(n)) for i, n in enumerate(names)]
    ncol = ncol or min(len(names), 6)
    if isinstance(fig_or_ax, Figure):
        from matplotlib.layout_engine import ConstrainedLayoutEngine

        constrained = isinstance(fig_or_ax.get_layout_engine(), ConstrainedLayoutEngine)
        loc = "outside lower center" if constrained else "lower center"
        return fig_or_ax.legend(handles=handles, loc=loc, ncol=ncol, frameon=False)
    return fig_or_ax.legend(handles=handles, loc="best", ncol=ncol, frameon=False)



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
        model: a :class:`sapa.lab.models.Segmenter` (put in eval mode by the caller if wanted).
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
    from ..upsamplers import A2U, CARAFE, FADE, IndexNetHIN, IndexNetM2O, SAPADynamic, SAPAUpsampler

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
#: default class colours. Classes 1-4 are drawn in the colours the texture task's classes are
#: named after (sapa.lab.data.TEXTURE_CLASSES: background, red, lime, cyan, blue, thin), so that
#: a figure never draws "lime" in blue; :func:`palette` with ``names`` maps any colour-named class
#: to its colour.
_BASE_COLOURS = np.array([
    [0.15, 0.15, 0.15],  # background: dark grey
    [1.00, 0.00, 0.00], [0.00, 1.00, 0.00], [0.00, 1.00, 1.00], [0.00, 0.00, 1.00],  # red, lime, cyan, blue
    [0.70, 0.40, 0.85], [0.95, 0.65, 0.10], [0.95, 0.55, 0.75], [0.60, 0.45, 0.30],
    [0.75, 0.75, 0.75],
])


def _colour_word(name) -> Optional[Tuple[float, float, float]]:
    """The RGB of a class name that is a colour word ("lime", "red"), else None."""
    from matplotlib.colors import is_color_like, to_rgb

    n = str(name).strip().lower()
    if len(n) > 1 and n.isalpha() and is_color_like(n):
        return tuple(float(v) for v in to_rgb(n))
    return None


def palette(num_classes: int, names: Optional[Sequence[str]] = None) -> np.ndarray:
    """(num_classes, 3) float RGB colours in [0, 1]; class 0 is dark grey, the next nine are
    fixed distinct colours (1-4: red, lime, cyan, blue), further classes are spread over the
    hue circle.

    ``names`` (one per class): a class named after a colour ("red", "lime", "cyan", "blue", any
    matplotlib colour word) is drawn in that colour; the other classes keep their default
    colour unless a named class took it, then they get the next unused one."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if num_classes <= len(_BASE_COLOURS):
        pal = _BASE_COLOURS[:num_classes].copy()
    else:
        import colorsys

        extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9)
                 for i in range(num_classes - len(_BASE_COLOURS))]
        pal = np.concatenate([_BASE_COLOURS, np.array(extra)], axis=0)
    if names is None:
        return pal
    names = list(names)
    if len(names) != num_classes:
        raise ValueError(f"names has {len(names)} entries for {num_classes} classes")
    named = {i: c for i, n in enumerate(names) if (c := _colour_word(n)) is not None}
    taken = [np.array(c) for c in named.values()]
    spare = [c for c in _BASE_COLOURS if not any(np.allclose(c, t) for t in taken)]
    used = set()
    for i in range(num_classes):
        if i in named:
            pal[i] = named[i]
        elif any(np.allclose(pal[i], t) for t in taken):
            free = [c for c in spare if not any(np.allclose(c, pal[j]) for j in range(num_classes) if j != i)
                    and tuple(c) not in used]
            if free:
                pal[i] = free[0]
                used.add(tuple(free[0]))
    return pal


def colorize(mask: ArrayLike, num_classes: int, ignore_index: int = 255,
             names: Optional[Sequence[str]] = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) RGB in [0, 1] (ignored / out-of-range labels white);
    ``names``: the class names, so that colour-named classes get their colour (:func:`palette`)."""
    m = _np(mask).astype(np.int64)
    pal = np.concatenate([palette(num_classes, names), np.ones((1, 3))], axis=0)
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
                     num_classes: Optional[int] = None, cell: Optional[float] = None,
                     crop_size: Optional[int] = None,
                     class_names: Optional[Sequence[str]] = None):
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
        cell: inches per panel (default: as large as fits :data:`BOOK_WIDTH`, at most 1.6).
        class_names: names of the classes, drawn as a colour legend under the panels
            (default: "class 0", "class 1", ...).

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

    names = list(class_names) if class_names is not None else [f"class {c}" for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes")
    cols = ["image", "ground truth", *preds]
    if cell is None:
        cell = min(1.6, BOOK_WIDTH / len(cols))
    fig, axes = plt.subplots(N, len(cols), figsize=(cell * len(cols), cell * N + 0.5), squeeze=False)
    for i in range(N):
        box = boxes[i]
        sl = (slice(None), slice(None)) if box is None else (slice(box[0], box[0] + box[2]), slice(box[1], box[1] + box[3]))
        panels = [np.clip(imgs[i].transpose(1, 2, 0), 0, 1), colorize(gts[i][sl], num_classes, names=class_names)]
        panels += [colorize(p[i][sl], num_classes, names=class_names) for p in preds.values()]
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                # long names on two lines, so that narrow columns stay legible
                name = cols[j]
                if len(name) > 8:
                    name = name.replace(" ", "\n", 1) if " " in name else name.replace("-", "-\n", 1)
                ax.set_title(name)
            if j == 0 and box is not None:
                ax.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), box[3], box[2], fill=False, edgecolor="white",
                                       linewidth=1.2))
    # a legend no wider than the panels (about 1.2 inches per entry), on as many rows as needed
    width = cell * len(cols)
    ncol = max(1, min(len(names), int(width // 1.2)))
    legend_rows = -(-len(names) // ncol)
    fig.set_size_inches(width, cell * N + 0.5 + 0.25 * (legend_rows - 1))
    fig.tight_layout(rect=(0, min(0.5, (0.22 * legend_rows + 0.08) / fig.get_size_inches()[1]), 1, 1))
    class_legend(fig, names, num_classes, ncol=ncol)
    return fig


# --------------------------------------------------------------------------------------
# sweep results
# --------------------------------------------------------------------------------------
def error_bar_plot(summary_rows: Sequence[Dict], metric: str, ax=None, label_key: str = "setting",
                   scale: float = 1.0, color=None, highlight: Sequence[str] = (), reference: Optional[float] = None):
    """Bars of ``<metric>_mean`` with ``<metric>_std`` error bars (mean +- sample std over seeds).

    Args:
        summary_rows: rows of :func:`sapa.lab.sweep.summarize` (each has ``<metric>_mean``,
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
                       ha="right" if max((len(s) for s in labels), default=0) > 4 else "center")
    if len(means):
        lo = float(np.nanmin(means - stds))
        hi = float(np.nanmax(means + stds))
        pad = 0.15 * max(hi - lo, 1e-9)
        ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1)
    ns = sorted({int(r.get("n", 0)) for r in summary_rows})
    ax.set_ylabel(f"{metric} (mean ± std, n={'/'.join(map(str, ns))})")
    ax.grid(axis="y", alpha=0.3)
    return ax


#: how the book writes each upsampler's name (figures, tables, prose)
DISPLAY_NAMES = {
    "nearest": "Nearest", "bilinear": "Bilinear", "deconv": "Deconv", "pixelshuffle": "PixelShuffle",
    "carafe": "CARAFE", "indexnet-hin": "IndexNet-HIN", "indexnet-m2o": "IndexNet-M2O", "a2u": "A2U",
    "fade": "FADE", "dysample": "DySample", "sapa-i": "SAPA-I", "sapa-b": "SAPA-B", "sapa-p": "SAPA-P",
    "sapa-g": "SAPA-G", "sapa-d": "SAPA-D", "bilinear+conv": "Bilinear+conv",
}

#: colours of the seeds in the per-seed figures (seed k: SEED_COLOURS[k % len])
SEED_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def paired_difference_plot(results: Sequence[Dict], rows: Sequence[Dict], metric: str, ax=None,
                           scale: float = 100.0, names: Optional[Dict[str, str]] = None, key: str = "setting",
                           pair: str = "seed", xlabel: Optional[str] = None):
    """Paired differences to a baseline: one row per setting, one dot per seed, no bars.

    Args:
        results: :func:`sapa.lab.stats.paired_differences` output (its ``setting``, ``seeds``,
            ``mean``, ``ci_low``/``ci_high``, ``significant``, ``baseline``), drawn top to
            bottom in their order.
        rows: the sweep rows the results were computed from (for the per-seed dots).
        metric: the compared column.
        ax: matplotlib Axes (default: a new figure sized to the number of settings).
        scale: multiply the differences (100: percentage points).
        names: display name of each setting (default: the setting itself).
        key, pair: the columns naming a setting and pairing the runs.
        xlabel: the x-axis label (default: ``"<metric> - <baseline>"``).

    Each seed's difference ``metric(setting, seed) - metric(baseline, seed)`` is a coloured
    dot (one colour per seed, the same in every row); the mean is a black diamond with its
    95 % t interval as a line, filled when the difference survives Holm's correction and
    open when it does not. A vertical line marks zero (no difference). The x-axis always
    includes zero and every dot, so no value falls outside the axes.

    Returns:
        the Axes.
    """
    import matplotlib.pyplot as plt

    names = names or {}
    results = list(results)
    if ax is None:
        _, ax = plt.subplots(figsize=(BOOK_WIDTH, 0.32 * len(results) + 1.2))
    if not results:
        return ax
    base = results[0]["baseline"]
    val: Dict[Tuple, float] = {(r[key], r[pair]): float(r[metric]) for r in rows}
    lo, hi = 0.0, 0.0
    seeds_seen = []
    for i, res in enumerate(results):
        y = len(results) - 1 - i
        s = res["setting"]
        for k in res["seeds"]:
            d = scale * (val[(s, k)] - val[(base, k)])
            idx = k if isinstance(k, int) else len(seeds_seen)
            ax.plot(d, y + 0.18, "o", ms=4, color=SEED_COLOURS[idx % len(SEED_COLOURS)], alpha=0.85,
                    label=f"{pair} {k}" if k not in seeds_seen else None)
            if k not in seeds_seen:
                seeds_seen.append(k)
            lo, hi = min(lo, d), max(hi, d)
        m, a, b = scale * res["mean"], scale * res["ci_low"], scale * res["ci_high"]
        ax.plot([a, b], [y - 0.12, y - 0.12], color="black", lw=1.4)
        ax.plot(m, y - 0.12, "D", ms=5, color="black", mfc="black" if res.get("significant") else "white")
        lo, hi = min(lo, a), max(hi, b)
    ax.axvline(0, color="grey", lw=1, ls="--")
    pad = 0.06 * max(hi - lo, 1e-9)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(-0.7, len(results) - 0.3)
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels([names.get(r["setting"], r["setting"]) for r in reversed(results)])
    ax.set_xlabel(xlabel if xlabel is not None else f"{metric} - {names.get(base, base)}")
    ax.grid(axis="x", alpha=0.3)
    return ax


def seed_lines_plot(rows: Sequence[Dict], metric: str, settings: Sequence[str], ax=None, scale: float = 100.0,
                    names: Optional[Dict[str, str]] = None, key: str = "setting", pair: str = "seed"):
    """The score of every seed, one line per seed joining the ``settings`` (paired runs).

    Seeds that lack a setting are left out, so every line is complete. The y-axis spans
    every point (never cut at zero or elsewhere), so each run is visible. Returns the Axes.
    """
    import matplotlib.pyplot as plt

    from .stats import complete_seeds

    names = names or {}
    if ax is None:
        _, ax = plt.subplots(figsize=(BOOK_WIDTH, 3.0))
    seeds = complete_seeds(rows, settings, key, pair)
    val = {(r[key], r[pair]): scale * float(r[metric]) for r in rows}
    xs = np.arange(len(settings))
    allv = []
    for j, k in enumerate(seeds):
        ys = [val[(s, k)] for s in settings]
        allv += ys
        ax.plot(xs, ys, "o-", ms=4, lw=1, color=SEED_COLOURS[(k if isinstance(k, int) else j) % len(SEED_COLOURS)],
                alpha=0.85, label=f"{pair} {k}")
    ax.set_xticks(xs)
    labels = [names.get(s, s) for s in settings]
    long = max((len(t) for t in labels), default=0) > 5
    ax.set_xticklabels(labels, rotation=45 if long else 0, ha="right" if long else "center")
    if allv:
        lo, hi = min(allv), max(allv)
        pad = 0.08 * max(hi - lo, 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    return ax


def curve_plot(rows: Sequence[Dict], settings: Sequence[str], metric: str = "val_miou", ax=None,
               scale: float = 100.0, names: Optional[Dict[str, str]] = None, key: str = "setting",
               pair: str = "seed"):
    """Validation curves of a sweep (the JSON ``curve`` column of :mod:`sapa.lab.sweep`, epochs
    numbered from 1): one line per run, one colour per setting, epochs where validation was
    skipped left out.

    Returns the Axes; rows without a curve are skipped.
    """
    import json

    import matplotlib.pyplot as plt

    names = names or {}
    if ax is None:
        _, ax = plt.subplots(figsize=(BOOK_WIDTH, 3.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(settings):
        first = True
        for r in rows:
            if r[key] != s or not r.get("curve"):
                continue
            c = r["curve"] if isinstance(r["curve"], dict) else json.loads(r["curve"])
            pts = [(e, scale * v) for e, v in zip(c["epoch"], c[metric]) if v is not None]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1, alpha=0.75,
                    color=colours[i % len(colours)], label=names.get(s, s) if first else None)
            first = False
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    return ax


def show_map(ax, values: ArrayLike, cmap: str = "viridis", vmin: Optional[float] = None,
             vmax: Optional[float] = None, label: Optional[str] = None, colorbar: bool = True,
             log: bool = False):
    """``imshow`` of a scalar map (H, W) with a colour bar beside the panel (its label:
    ``label``), no ticks; ``log``: a logarithmic colour scale from ``vmin`` to ``vmax`` (both
    positive). Returns the image artist."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    arr = _np(values)
    if arr.ndim != 2:
        raise ValueError(f"values must be a 2-d map (H, W), got shape {arr.shape}")
    if log:
        if vmin is None or vmax is None or not 0 < vmin < vmax:
            raise ValueError(f"log=True needs 0 < vmin < vmax, got {vmin!r}, {vmax!r}")
        im = ax.imshow(np.clip(arr, vmin, vmax), cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax),
                       interpolation="nearest")
    else:
        im = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        cb = plt.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        if label:
            cb.set_label(label)
    return im


def mechanism_plot(rows: Sequence[Dict], upsamplers: Sequence[str], metric: str, ax=None,
                   names: Optional[Dict[str, str]] = None, log: bool = False):
    """One metric of the mechanism experiment (:mod:`sapa.lab.mechanism` rows) against the noise
    level sigma: one point per seed (slightly spread in x), a line through the means.

    Returns the Axes.
    """
    import matplotlib.pyplot as plt

    names = names or {}
    if ax is None:
        _, ax = plt.subplots(figsize=(BOOK_WIDTH, 3.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sigmas = sorted({float(r["sigma"]) for r in rows})
    pos = {s: i for i, s in enumerate(sigmas)}
    for i, u in enumerate(upsamplers):
        pts = [(float(r["sigma"]), float(r[metric])) for r in rows if r["upsampler"] == u]
        if not pts:
            continue
        c = colours[i % len(colours)]
        off = (i - (len(upsamplers) - 1) / 2) * 0.06
        ax.plot([pos[s] + off for s, _ in pts], [v for _, v in pts], "o", ms=3, color=c, alpha=0.7)
        means = [(s, float(np.mean([v for t, v in pts if t == s]))) for s in sigmas if any(t == s for t, _ in pts)]
        ax.plot([pos[s] + off for s, _ in means], [m for _, m in means], "-", lw=1.2, color=c,
                label=names.get(u, u))
    ax.set_xticks(range(len(sigmas)))
    ax.set_xticklabels([f"{s:g}" for s in sigmas])
    ax.set_xlabel("noise level σ of the encoder feature")
    ax.set_ylabel(metric)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return ax


#: panel titles of :func:`task_difference_plot` (the task names of :mod:`sapa.lab.weak_guide`)
TASK_TITLES = {"textures": "textures", "statistics": "weak guide"}


def task_difference_plot(entries: Sequence[Dict], tasks: Sequence[str] = ("textures", "statistics"),
                         names: Optional[Dict[str, str]] = None, titles: Optional[Dict[str, str]] = None,
                         scale: float = 100.0, xlabel: Optional[str] = None, width: float = 6.0):
    """The paired difference to the baseline of every upsampler on each task, side by side.

    Args:
        entries: :func:`sapa.lab.weak_guide.compare_tasks` entries (each with ``task``,
            ``upsampler``, ``seeds``, ``values``, ``baseline_values`` and the
            :func:`sapa.lab.stats.paired_differences` fields).
        tasks: one panel per task, left to right; a task without entries gets a panel that
            says so.
        names: display name of each upsampler (default :data:`DISPLAY_NAMES`).
        titles: panel titles by task (default :data:`TASK_TITLES`).
        scale: multiply the differences (100: percentage points).
        xlabel: the shared x label (default ``"Δ mIoU vs Bilinear (points)"``).
        width: figure width in inches (at most :data:`BOOK_WIDTH`: its 10 pt text stays legible
            on a phone).

    Each panel is :func:`paired_difference_plot`: one dot per seed, the mean as a diamond
    (filled when it survives Holm's correction over the task's family) with its 95 % t
    interval; the panels share both axes (upsamplers in the entries' order, one x scale, so a
    gain on one task can be read against the other), the seed legend sits above them and the
    x label below.

    Returns:
        the Figure.
    """
    import matplotlib.pyplot as plt

    entries = list(entries)
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must name one panel per task, each once, got {tasks!r}")
    need = {"task", "upsampler", "setting", "seeds", "values", "baseline_values", "mean", "ci_low", "ci_high",
            "baseline", "metric"}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not need <= e.keys():
            raise ValueError(f"entries[{i}] is not an entry of sapa.lab.weak_guide.compare_tasks")
    if not 0 < width <= BOOK_WIDTH:
        raise ValueError(f"width must lie in (0, {BOOK_WIDTH}] inches, got {width!r}")
    names = DISPLAY_NAMES if names is None else names
    titles = {**TASK_TITLES, **(titles or {})}
    by = {t: [e for e in entries if e["task"] == t] for t in tasks}
    order = next((v for v in by.values() if v), [])
    ups = [e["upsampler"] for e in order]
    for t, es in by.items():
        if es and [e["upsampler"] for e in es] != ups:
            raise ValueError(f"entries of task {t!r} compare other upsamplers than the first panel's: pass one "
                             "compare_tasks output")
    fig, axes = plt.subplots(1, len(tasks), figsize=(width, 0.27 * max(len(ups), 3) + 1.9), sharex=True,
                             sharey=True, layout="constrained", squeeze=False)
    axes = list(axes[0])
    handles: Dict[str, object] = {}
    drawn = []
    for ax, t in zip(axes, tasks):
        ax.set_title(titles.get(t, t))
        es = by[t]
        if not es:
            ax.text(0.5, 0.5, "no paired\nseeds yet", transform=ax.transAxes, ha="center", va="center",
                    color="grey")
            continue
        metric, base = es[0]["metric"], es[0]["baseline"]
        rows = []
        for e in es:
            rows += [{"setting": e["upsampler"], "seed": k, metric: v} for k, v in zip(e["seeds"], e["values"])]
        rows += [{"setting": base, "seed": k, metric: v} for k, v in zip(es[0]["seeds"], es[0]["baseline_values"])]
        paired_difference_plot(es, rows, metric, ax=ax, scale=scale, names=names, xlabel="")
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        drawn.append(ax.get_xlim())  # the axes are shared: the next panel resets them
    if drawn:
        lo, hi = min(a for a, _ in drawn), max(b for _, b in drawn)
        axes[0].set_xlim(lo, hi)
        axes[0].set_ylim(-0.7, len(ups) - 0.3)
        axes[0].set_yticks(range(len(ups)))
        axes[0].set_yticklabels([names.get(u, u) for u in reversed(ups)])
        metric, base = order[0]["metric"], order[0]["baseline"]
        label = xlabel if xlabel is not None else (
            f"Δ {'mIoU' if metric == 'miou' else metric} vs {names.get(base, base)}"
            + (" (points)" if scale == 100.0 else ""))
        fig.supxlabel(label, fontsize=plt.rcParams["axes.labelsize"])
    else:
        axes[0].set_yticks([])
        for ax in axes:
            ax.set_xticks([])
    for ax in axes[1:]:
        ax.tick_params(labelleft=False)
    if handles:
        fig.legend(list(handles.values()), list(handles), frameon=False, ncol=min(len(handles), 5),
                   loc="outside upper center")
    return fig


# --------------------------------------------------------------------------------------
# diagrams drawn by code
# --------------------------------------------------------------------------------------
def _box(ax, x, y, w, h, text, color="#dfe8f5", edge="#1f4e8c", fontsize=None, **kw):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor=edge, linewidth=1.0))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize or MIN_FONT_PT, **kw)


def _arrow(ax, x0, y0, x1, y1, text=None, color="#333333", offset=(0.0, 0.12)):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.1, shrinkA=0, shrinkB=0))
    if text:
        ax.text((x0 + x1) / 2 + offset[0], (y0 + y1) / 2 + offset[1], text, ha="center", va="bottom",
                fontsize=MIN_FONT_PT, color=color)


def draw_sapa_pipeline(variant: str = "G", kernel_size: int = 5, embedding_dim: int = 32):
    """The SAPA operator as a block diagram (the paper's Fig. 3): LayerNorm and embedding of the
    encoder feature Y (B, C_y, H', W') and the decoder feature X (B, C, H, W), the gate (variant
    "G"), the similarity with the K x K decoder window, the softmax, and the assembly of the raw
    X into X' (B, C, H', W'). ``variant``: "I", "B" or "G". Returns the Figure."""
    import matplotlib.pyplot as plt

    if variant not in ("I", "B", "G"):
        raise ValueError(f"variant must be 'I', 'B' or 'G', got {variant!r}")
    K, d = kernel_size, embedding_dim
    fig, ax = plt.subplots(figsize=(BOOK_WIDTH, 4.4))
    ax.set_xlim(0, 7.0)
    ax.set_ylim(0, 4.4)
    ax.axis("off")
    enc, dec, gen, asm = "#e4f1e1", "#dfe8f5", "#fbe9d7", "#efe3f6"
    g_edge, d_edge, k_edge, a_edge = "#2e7d32", "#1f4e8c", "#b35900", "#6a1b9a"
    # encoder row (top) and decoder row (bottom)
    _box(ax, 0.05, 3.45, 1.25, 0.7, "encoder $Y$\n$C_y{\\times}H'{\\times}W'$", enc, g_edge)
    _box(ax, 0.05, 1.35, 1.25, 0.7, "decoder $X$\n$C{\\times}H{\\times}W$", dec, d_edge)
    _box(ax, 1.6, 3.55, 1.05, 0.5, "LayerNorm", enc, g_edge)
    _box(ax, 1.6, 1.45, 1.05, 0.5, "LayerNorm", dec, d_edge)
    _arrow(ax, 1.3, 3.8, 1.6, 3.8)
    _arrow(ax, 1.3, 1.7, 1.6, 1.7)
    if variant == "I":
        _box(ax, 2.95, 3.55, 1.3, 0.5, "query", gen, k_edge)
        _box(ax, 2.95, 1.45, 1.3, 0.5, "key", gen, k_edge)
    else:
        _box(ax, 2.95, 3.55, 1.3, 0.5, f"$P_y$: to $d={d}$", gen, k_edge)
        _box(ax, 2.95, 1.45, 1.3, 0.5, f"key $P_x$: to $d$", gen, k_edge)
    _arrow(ax, 2.65, 3.8, 2.95, 3.8)
    _arrow(ax, 2.65, 1.7, 2.95, 1.7)
    q_end = (4.25, 3.8)
    if variant == "G":
        _box(ax, 2.95, 2.5, 1.3, 0.6, "gate $g$, and\n$P_{xx}\\,$near.$(X)$", gen, k_edge)
        _arrow(ax, 2.3, 1.95, 2.95, 2.6)
        _box(ax, 4.45, 3.0, 1.25, 0.8, "query\n$g\\,q_y{+}(1{-}g)q_x$", gen, k_edge)
        _arrow(ax, 4.25, 3.8, 4.45, 3.6)
        _arrow(ax, 4.25, 2.8, 4.45, 3.2)
        q_end = (5.7, 3.4)
    _box(ax, 5.85, 2.3, 1.1, 1.0, f"similarity\n$q^{{\\top}}k$ over\n{K}$\\times${K} window", gen, k_edge)
    _arrow(ax, q_end[0], q_end[1], 5.85, 3.1)
    _arrow(ax, 4.25, 1.7, 5.85, 2.5)
    _box(ax, 5.85, 1.35, 1.1, 0.6, "softmax\nover $K^2$", gen, k_edge)
    _arrow(ax, 6.4, 2.3, 6.4, 1.95)
    _box(ax, 4.1, 0.1, 1.5, 0.75, "assembly\n$\\sum_p W_{l',p}\\,x_{l+p}$", asm, a_edge)
    _arrow(ax, 6.4, 1.35, 5.6, 0.6, "kernel $W$", color=k_edge, offset=(0.45, 0.0))
    ax.plot([0.67, 0.67], [1.35, 0.47], color=a_edge, lw=1.1)
    _arrow(ax, 0.67, 0.47, 4.1, 0.47, "raw $X$ is the value", color=a_edge, offset=(0, 0.03))
    _box(ax, 5.85, 0.1, 1.1, 0.75, "$X'$\n$C{\\times}H'{\\times}W'$", asm, a_edge)
    _arrow(ax, 5.6, 0.47, 5.85, 0.47)
    ax.text(0.05, 4.38, f"SAPA-{variant}: kernel generation (orange), feature assembly (purple)",
            fontsize=MIN_FONT_PT + 1, va="top")
    return fig


def draw_window_gather(H: int = 4, W: int = 5, kernel_size: int = 3, scale: int = 2, point=(2, 8)):
    """How every output point gets its window (chapter 3's ``unfold`` + index): the K x K window
    around the centre l = (floor(i H / H'), floor(j W / W')) of output point l' = ``point`` on
    the (H, W) map, the shapes of ``F.unfold`` (B, C K^2, H W), its view (B, C, K^2, H, W) and
    the gathered windows (B, C, K^2, H', W'). Returns the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch, Rectangle

    K, R = kernel_size, kernel_size // 2
    Hq, Wq = scale * H, scale * W
    i, j = point
    if not (0 <= i < Hq and 0 <= j < Wq):
        raise ValueError(f"point must lie in the {Hq} x {Wq} output, got {point}")
    ci, cj = i * H // Hq, j * W // Wq
    fig, axes = plt.subplots(1, 2, figsize=(BOOK_WIDTH, 3.6), gridspec_kw=dict(width_ratios=[1, 1.25]))
    lo, hi = axes
    for ax, h, w, title in [(lo, H, W, f"low resolution $X$: {H} x {W}"), (hi, Hq, Wq, f"output: {Hq} x {Wq}")]:
        ax.set_xlim(-0.5 - (R if ax is lo else 0), w - 0.5 + (R if ax is lo else 0))
        ax.set_ylim(h - 0.5 + (R if ax is lo else 0), -0.5 - (R if ax is lo else 0))
        ax.set_aspect("equal")
        for r in range(h):
            for c in range(w):
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="white", edgecolor="#9e9e9e", lw=0.6))
        ax.set_title(title)
        ax.set_xticks(range(w))
        ax.set_yticks(range(h))
        ax.tick_params(length=0)
    # the window on the low-res map (outside positions: zero padding)
    for u in range(-R, R + 1):
        for v in range(-R, R + 1):
            r, c = ci + u, cj + v
            inside = 0 <= r < H and 0 <= c < W
            lo.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="#9ecae1" if inside else "#eeeeee",
                                   edgecolor="#1f4e8c" if inside else "#bdbdbd", lw=1.0, ls="-" if inside else "--"))
            lo.text(c, r, f"{(u + R) * K + v + R}", ha="center", va="center", fontsize=MIN_FONT_PT,
                    color="#1f4e8c" if inside else "#9e9e9e")
    lo.add_patch(Rectangle((cj - 0.5, ci - 0.5), 1, 1, fill=False, edgecolor="#d62728", lw=2.0))
    # the output points that share this centre, and l'
    for r in range(Hq):
        for c in range(Wq):
            if r * H // Hq == ci and c * W // Wq == cj:
                hi.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="#fdd0a2", edgecolor="#9e9e9e", lw=0.6))
    hi.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#d62728", edgecolor="#d62728"))
    hi.text(j, i, "$l'$", ha="center", va="center", color="white", fontsize=MIN_FONT_PT)
    lo.text(cj, ci + 0.32, "$l$", ha="center", va="center", color="#d62728", fontsize=MIN_FONT_PT)
    fig.add_artist(ConnectionPatch(xyA=(j, i), coordsA=hi.transData, xyB=(cj + 0.5, ci), coordsB=lo.transData,
                                   arrowstyle="-|>", color="#d62728", lw=1.2))
    fig.text(0.5, 0.10, f"l' = ({i}, {j})  →  centre l = (⌊{i}·{H}/{Hq}⌋, ⌊{j}·{W}/{Wq}⌋) = ({ci}, {cj});"
             f"  grey: zero padding", ha="center", fontsize=MIN_FONT_PT)
    fig.text(0.5, 0.02, f"unfold: (B, C·{K * K}, {H * W})  →  view (B, C, {K * K}, {H}, {W})  →  "
             f"index rows, cols: (B, C, {K * K}, {Hq}, {Wq})", ha="center", fontsize=MIN_FONT_PT)
    for ax in axes:
        for side in ax.spines.values():
            side.set_visible(False)
    fig.subplots_adjust(bottom=0.2, top=0.9, wspace=0.15)
    return fig


def draw_triton_tiling(Hq: int = 10, Wq: int = 13, C: int = 160, block_p: int = 32, block_c: int = 64, B: int = 2):
    """The launch grid of the fused kernel: output pixels, flattened row-major (o = i W' + j),
    cut into tiles of ``block_p`` consecutive pixels (the last one partial, masked), times
    channel blocks of ``block_c`` (the last one partial), times the batch: grid =
    (ceil(H' W' / BLOCK_P), ceil(C / BLOCK_C), B). Returns the Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    for name, v in [("Hq", Hq), ("Wq", Wq), ("C", C), ("block_p", block_p), ("block_c", block_c), ("B", B)]:
        if int(v) < 1:
            raise ValueError(f"{name} must be positive, got {v}")
    n_pix = Hq * Wq
    n_tiles = -(-n_pix // block_p)
    n_cblocks = -(-C // block_c)
    cmap = plt.get_cmap("tab10")
    fig, (ax, axc) = plt.subplots(1, 2, figsize=(BOOK_WIDTH, 3.4), gridspec_kw=dict(width_ratios=[2.3, 1]))
    for o in range(n_pix):
        i, j = divmod(o, Wq)
        t = o // block_p
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=cmap(t % 10), alpha=0.55, edgecolor="white", lw=0.5))
    for t in range(n_tiles):
        o = t * block_p
        i, j = divmod(o, Wq)
        ax.text(j, i, f"{t}", ha="center", va="center", fontsize=MIN_FONT_PT, fontweight="bold")
    ax.set_xlim(-0.5, Wq - 0.5)
    ax.set_ylim(Hq - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([0, Wq - 1])
    ax.set_yticks([0, Hq - 1])
    ax.set_xlabel("output column $j$")
    ax.set_ylabel("output row $i$")
    last = n_pix - (n_tiles - 1) * block_p
    ax.set_title(f"{n_tiles} pixel tiles of BLOCK_P = {block_p}\n(last one: {last} pixels, rest masked)")
    # channel blocks
    for cb in range(n_cblocks):
        c0, c1 = cb * block_c, min(C, (cb + 1) * block_c)
        axc.add_patch(Rectangle((0, c0), 1, c1 - c0, facecolor="#9ecae1" if cb % 2 == 0 else "#c6dbef",
                                edgecolor="#1f4e8c"))
        axc.text(0.5, (c0 + c1) / 2, f"block {cb}\nchannels {c0}–{c1 - 1}", ha="center", va="center",
                 fontsize=MIN_FONT_PT)
    axc.set_xlim(-0.1, 1.1)
    axc.set_ylim(n_cblocks * block_c, 0)
    axc.axhline(C, color="#d62728", lw=1.2, ls="--")
    axc.text(1.08, C, f"C = {C}", color="#d62728", ha="right", va="top", fontsize=MIN_FONT_PT)
    axc.set_xticks([])
    axc.set_ylabel("value channel")
    axc.set_title(f"BLOCK_C = {block_c}")
    fig.suptitle(f"launch grid ({n_tiles}, {n_cblocks}, B): {n_tiles * n_cblocks * B} programs for B = {B}")
    fig.tight_layout()
    return fig
