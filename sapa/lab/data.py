"""Segmentation datasets: a procedural default, a folder of image/mask pairs, Oxford-IIIT Pet.

Every dataset returns ``(image, mask)`` with ``image`` a float32 (3, H, W) tensor in [0, 1]
and ``mask`` an int64 (H, W) tensor of class indices (``ignore_index``, 255, where the label
is unknown), and exposes ``num_classes``, ``class_names`` and ``ignore_index``.

* :class:`SyntheticShapes` (the default, nothing to download): procedural images whose
  classes need *context* and whose boundaries need *detail*; see its docstring.
* :class:`TexturedRegions` (``"textures"``): procedural images whose classes can be told
  apart *locally* (a hue family per class, under texture and noise), with irregular
  boundaries and thin curves, and fresh training samples every epoch
  (:meth:`TexturedRegions.set_epoch`): the errors left are where boundaries go, which is
  what an upsampler decides.
* :class:`TextureStatistics` (``"statistics"``): procedural images whose classes share one
  per-pixel distribution of colour and intensity and differ only in texture statistics over
  an area (orientation, anisotropy, frequency of a random-phase pattern), under strong pixel
  noise: the high-resolution guide says little, the deep features decide.
* :class:`ImageMaskFolder`: ``root/images/*.png|jpg`` with index masks ``root/masks/*.png``
  matched by file stem.
* :class:`OxfordPets`: the Oxford-IIIT Pet on-disk layout; downloaded (through torchvision,
  imported lazily) only when ``download=True`` is passed explicitly.

:func:`make_dataset` dispatches by name for the training script.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "SyntheticShapes",
    "TexturedRegions",
    "TextureStatistics",
    "ImageMaskFolder",
    "OxfordPets",
    "make_dataset",
    "DATASETS",
    "SYNTHETIC_CLASSES",
    "TEXTURE_CLASSES",
    "STATISTICS_CLASSES",
    "PROCEDURAL_DATASETS",
    "IGNORE_INDEX",
]

IGNORE_INDEX = 255
DATASETS = ("synthetic", "textures", "statistics", "folder", "oxford-pets")
#: the datasets generated on the fly (no --data-root)
PROCEDURAL_DATASETS = ("synthetic", "textures", "statistics")
SYNTHETIC_CLASSES = ("background", "disk", "rectangle", "triangle", "thin", "striped")
TEXTURE_CLASSES = ("background", "red", "lime", "cyan", "blue", "thin")
STATISTICS_CLASSES = ("background", "horizontal", "vertical", "diagonal", "antidiagonal", "fine")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

SizeArg = Union[int, Tuple[int, int], None]


def _hw(size: SizeArg, name: str = "size") -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, bool):
        raise TypeError(f"{name} must be an int or a (height, width) pair, got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a (height, width) pair, got {size!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"{name} must be at least 8 x 8 pixels, got {(h, w)}")
    return h, w


# --------------------------------------------------------------------------------------
# procedural dataset
# --------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix (align_corners=True)."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m


class SyntheticShapes(Dataset):
    """Procedural segmentation images: shapes, thin structures and textures.

    Classes (the first ``num_classes`` of :data:`SYNTHETIC_CLASSES`):

    0. ``background``: a greyish, low-contrast textured plane;
    1. ``disk``, 2. ``rectangle`` (rotated, any aspect up to 2:1), 3. ``triangle``: filled
       shapes whose fill is drawn from the *same* texture pool as the background (smooth
       noise, checkerboard, dots, flat; with saturated random colours, so telling them
       from the background is local but neither colour nor texture tells their class:
       the class is the *shape*, a property of the whole object that only the coarse,
       large-receptive-field features see;
    4. ``thin``: line segments and rings 1-3 px wide, painted last; their extent is below
       the encoder's coarse strides, so only high-resolution detail recovers them;
    5. ``striped``: ellipses filled with stripes (period 3-5 px, any orientation); the
       class is the texture pattern, a mid-range context cue (a single pixel of a stripe
       looks like any flat colour).

    Every boundary is a hard, pixel-accurate edge (with per-pixel noise), so boundary IoU
    rewards upsamplers that place edges where the high-resolution image puts them.

    Sample ``i`` is a pure function of ``(seed, split, i)`` (NumPy ``default_rng``), generated
    on the fly in about 1 ms at 64 x 64 (one CPU core), so thousands of samples cost seconds and
    DataLoader workers need no shared cache.

    Args:
        num_samples: dataset length.
        size: int or (H, W), default 64.
        num_classes: 2..6, the number of classes used (default 6).
        seed: data seed (independent of the training seed).
        split: "train", "val" or "test": independent streams for one seed.
        max_objects: at most this many filled regions per image (at least 1).
        max_thin: at most this many thin structures per image (class ``thin`` only).
        noise: standard deviation of the additive Gaussian pixel noise.

    Returns (per item): image (3, H, W) float32 in [0, 1], mask (H, W) int64.
    """

    ignore_index = None

    def __init__(
        self,
        num_samples: int,
        size: SizeArg = 64,
        num_classes: int = len(SYNTHETIC_CLASSES),
        seed: int = 0,
        split: str = "train",
        max_objects: int = 4,
        max_thin: int = 3,
        noise: float = 0.03,
    ):
        _check_procedural("SyntheticShapes", num_samples, num_classes, SYNTHETIC_CLASSES, split, seed)
        self.size = _hw(size)
        if max_objects < 1 or max_thin < 0:
            raise ValueError(f"need max_objects >= 1 and max_thin >= 0, got {max_objects}, {max_thin}")
        self.num_samples, self.num_classes = num_samples, num_classes
        self.seed, self.split = seed, split
        self.max_objects, self.max_thin, self.noise = max_objects, max_thin, float(noise)
        self.class_names = SYNTHETIC_CLASSES[:num_classes]
        H, W = self.size
        self.yy, self.xx = np.mgrid[0:H, 0:W].astype(np.float32)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int):
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for a dataset of {self.num_samples} samples")
        img, mask = self.render(i % self.num_samples)
        return torch.from_numpy(img), torch.from_numpy(mask)

    # -- textures ------------------------------------------------------------------------
    def _texture(self, rng: np.random.Generator, kind: str) -> np.ndarray:
        """(H, W) float32 pattern in [0, 1]."""
        H, W = self.size
        s = min(H, W)
        if kind == "flat":
            return np.zeros((H, W), np.float32)
        if kind == "smooth":
            g = rng.random((5, 5), dtype=np.float32)
            return _interp_matrix(H, 5) @ g @ _interp_matrix(W, 5).T
        th = rng.uniform(0, math.pi)
        u = self.xx * math.cos(th) + self.yy * math.sin(th)
        v = -self.xx * math.sin(th) + self.yy * math.cos(th)
        if kind == "checker":
            p = rng.uniform(4, 8) * s / 64
            return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
        if kind == "dots":
            p = rng.uniform(4, 7) * s / 64
            return ((np.cos(2 * math.pi * u / p) * np.cos(2 * math.pi * v / p)) > 0.5).astype(np.float32)
        if kind == "stripes":
            p = rng.uniform(3, 5)
            return (np.sin(2 * math.pi * u / p + rng.uniform(0, 2 * math.pi)) > 0).astype(np.float32)
        raise AssertionError(kind)

    def _paint(self, rng, img, region, texture, mean_other, background=False):
        """Fill ``region`` with two colours mixed by ``texture``; returns the base colour.

        The background is greyish (saturation < 0.16) with a low-contrast texture; objects
        get saturated colours (max - min channel >= 0.4) away from ``mean_other`` and a
        higher-contrast texture, so foreground vs background is a local cue (saturation)
        while the class of a foreground region is not.
        """
        if background:
            c1 = np.clip(rng.uniform(0.15, 0.85) + rng.uniform(-0.08, 0.08, 3), 0, 1).astype(np.float32)
            contrast = 0.15
        else:
            contrast = 0.3
            for _ in range(32):
                c1 = rng.random(3, dtype=np.float32)
                if c1.max() - c1.min() >= 0.4 and np.abs(c1 - mean_other).max() > 0.35:
                    break
        c2 = np.clip(c1 + rng.uniform(-contrast, contrast, 3).astype(np.float32), 0, 1)
        fill = c1[:, None, None] * (1 - texture) + c2[:, None, None] * texture
        img[:, region] = fill[:, region]
        return c1

    # -- shapes --------------------------------------------------------------------------
    def _shape(self, rng, cls: str) -> np.ndarray:
        H, W = self.size
        s = min(H, W)
        cy, cx = rng.uniform(0.15, 0.85) * H, rng.uniform(0.15, 0.85) * W
        dy, dx = self.yy - cy, self.xx - cx
        th = rng.uniform(0, math.pi)
        if cls == "disk":
            r = rng.uniform(0.09, 0.22) * s
            return dx * dx + dy * dy <= r * r
        if cls == "rectangle":
            a = rng.uniform(0.09, 0.2) * s
            b = a * rng.uniform(0.5, 1.0)
            u = dx * math.cos(th) + dy * math.sin(th)
            v = -dx * math.sin(th) + dy * math.cos(th)
            return (np.abs(u) <= a) & (np.abs(v) <= b)
        if cls == "triangle":
            R = rng.uniform(0.14, 0.28) * s
            ang = th + np.array([0, 2, 4]) * math.pi / 3 + rng.uniform(-0.3, 0.3, 3)
            px, py = cx + R * np.cos(ang), cy + R * np.sin(ang)
            inside = np.ones((H, W), bool)
            for k in range(3):  # counter-clockwise vertices: left of every edge
                x0, y0, x1, y1 = px[k], py[k], px[(k + 1) % 3], py[(k + 1) % 3]
                inside &= (x1 - x0) * (self.yy - y0) - (y1 - y0) * (self.xx - x0) >= 0
            return inside
        if cls == "striped":
            a = rng.uniform(0.1, 0.22) * s
            b = a * rng.uniform(0.5, 1.0)
            u = dx * math.cos(th) + dy * math.sin(th)
            v = -dx * math.sin(th) + dy * math.cos(th)
            return (u / a) ** 2 + (v / b) ** 2 <= 1
        if cls == "thin":
            w = rng.uniform(1.0, 3.0)
            if rng.random() < 0.5:  # ring
                r = rng.uniform(0.08, 0.3) * s
                return np.abs(np.sqrt(dx * dx + dy * dy) - r) <= w / 2
            length = rng.uniform(0.3, 0.8) * s  # line segment through (cx, cy)
            ux, uy = math.cos(th), math.sin(th)
            t = np.clip(dx * ux + dy * uy, -length / 2, length / 2)
            ex, ey = dx - t * ux, dy - t * uy
            return ex * ex + ey * ey <= (w / 2) ** 2
        raise AssertionError(cls)

    def render(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` as NumPy arrays: image (3, H, W) float32, mask (H, W) int64."""
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], int(i)])
        H, W = self.size
        names = self.class_names
        region_classes = [c for c in names[1:] if c != "thin"]
        img = np.empty((3, H, W), np.float32)
        mask = np.zeros((H, W), np.int64)
        bg = self._paint(rng, img, np.ones((H, W), bool),
                         self._texture(rng, rng.choice(["smooth", "checker", "dots", "flat"])),
                         np.full(3, -1.0, np.float32), background=True)
        fill_kinds = ["smooth", "checker", "dots", "flat"]
        if region_classes:
            for _ in range(int(rng.integers(1, self.max_objects + 1))):
                cls = region_classes[int(rng.integers(len(region_classes)))]
                region = self._shape(rng, cls)
                kind = "stripes" if cls == "striped" else fill_kinds[int(rng.integers(len(fill_kinds)))]
                self._paint(rng, img, region, self._texture(rng, kind), bg)
                mask[region] = names.index(cls)
        if "thin" in names:
            n_thin = int(rng.integers(1 if len(names) == 2 else 0, self.max_thin + 1))
            for _ in range(n_thin):
                region = self._shape(rng, "thin")
                under = img[:, region].mean(1) if region.any() else bg
                self._paint(rng, img, region, self._texture(rng, "flat"), under)
                mask[region] = names.index("thin")
        if self.noise > 0:
            img += rng.normal(0, self.noise, img.shape).astype(np.float32)
        np.clip(img, 0, 1, out=img)
        return img, mask


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (each in [0, 1], hue cyclic) as an RGB float32 (3,) array."""
    h = (h % 1.0) * 6.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, np.float32)


def _check_procedural(cls_name: str, num_samples, num_classes, class_names: Sequence[str], split, seed) -> None:
    """Arguments shared by the procedural datasets; ValueError naming the argument."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not (2 <= num_classes <= len(class_names)):
        raise ValueError(f"num_classes must be an int in [2, {len(class_names)}] for {cls_name}, got {num_classes!r}")
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(_SPLIT_IDS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _stroke(path: np.ndarray, w: float, r: int, H: int, W: int) -> np.ndarray:
    """(H, W) bool mask of the pixels whose centre lies within w/2 of a point of ``path`` ((P, 2)
    [y, x] points), searched among the (2r+1)^2 pixels around each point's rounded position."""
    off = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij"), -1).reshape(1, -1, 2)
    cand = np.round(path)[:, None, :].astype(np.int64) + off  # (P, (2r+1)^2, 2) pixel centres near the path
    near = ((cand - path[:, None, :]) ** 2).sum(-1) <= (w / 2) ** 2
    cand = cand[near]
    cand = cand[(cand[:, 0] >= 0) & (cand[:, 0] < H) & (cand[:, 1] >= 0) & (cand[:, 1] < W)]
    out = np.zeros((H, W), bool)
    out[cand[:, 0], cand[:, 1]] = True
    return out


class _Procedural(Dataset):
    """Epochs, length and items shared by the procedural datasets: a subclass sets
    ``num_samples`` and ``epoch`` and implements ``render(i) -> (image, mask)`` as numpy arrays."""

    def set_epoch(self, epoch: int) -> None:
        """Draw the training samples of ``epoch`` (no effect on "val"/"test")."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int):
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for a dataset of {self.num_samples} samples")
        img, mask = self.render(i % self.num_samples)
        return torch.from_numpy(img), torch.from_numpy(mask)


class TexturedRegions(_Procedural):
    """Procedural segmentation where every error left is a boundary error.

    Each class is a *hue family* that a few pixels identify, so recognising a region is a
    local decision and the network's remaining mistakes are about where the boundaries
    go (the part an upsampler decides). Classes (the first ``num_classes`` of
    :data:`TEXTURE_CLASSES`):

    0. ``background``: a greyish plane (saturation <= 0.15) with a low-contrast texture;
    1. ``red``, 2. ``lime``, 3. ``cyan``, 4. ``blue``: irregular blobs (star-shaped, their
       radius a random sum of angular harmonics 2..5), hue 0, 0.2, 0.4, 0.6 (+- 0.03),
       saturation 0.55-0.95, filled with a texture (smooth noise, checkerboard, dots,
       stripes) that mixes two values of the same hue; blobs may overlap;
    5. ``thin``: curves 1-2 px wide (quadratic Bezier paths), hue 0.8, painted last.

    Gaussian pixel noise (``noise``, default 0.06) is added everywhere, so one pixel alone
    is ambiguous (dark and grey pixels carry little hue) but a 3 x 3 patch is not.

    Fresh samples every epoch: the ``"train"`` split draws sample ``i`` of epoch ``e``
    from ``(seed, split, e, i)``; :meth:`set_epoch` (called by :func:`sapa.lab.train.train`
    before each epoch) moves to another epoch's samples. ``"val"`` and ``"test"`` ignore
    the epoch: a fixed, seeded set. Generation takes about 1 ms per 64 x 64 image on one
    core.

    Args:
        num_samples: samples per epoch (train) or in the set (val/test).
        size: int or (H, W), default 64.
        num_classes: 2..6 (default 6).
        seed: data seed (independent of the training seed).
        split: "train", "val" or "test".
        max_objects: at most this many blobs per image (at least 1).
        max_thin: at most this many thin curves per image.
        noise: standard deviation of the additive Gaussian pixel noise.

    Returns (per item): image (3, H, W) float32 in [0, 1], mask (H, W) int64.
    """

    ignore_index = None
    HUES = (None, 0.0, 0.2, 0.4, 0.6, 0.8)

    def __init__(
        self,
        num_samples: int,
        size: SizeArg = 64,
        num_classes: int = len(TEXTURE_CLASSES),
        seed: int = 0,
        split: str = "train",
        max_objects: int = 6,
        max_thin: int = 3,
        noise: float = 0.06,
    ):
        _check_procedural("TexturedRegions", num_samples, num_classes, TEXTURE_CLASSES, split, seed)
        self.size = _hw(size)
        if max_objects < 1 or max_thin < 0:
            raise ValueError(f"need max_objects >= 1 and max_thin >= 0, got {max_objects}, {max_thin}")
        if not (isinstance(noise, (int, float)) and noise >= 0):
            raise ValueError(f"noise must be a non-negative number, got {noise!r}")
        self.num_samples, self.num_classes = num_samples, num_classes
        self.seed, self.split, self.epoch = seed, split, 0
        self.max_objects, self.max_thin, self.noise = max_objects, max_thin, float(noise)
        self.class_names = TEXTURE_CLASSES[:num_classes]
        H, W = self.size
        self.yy, self.xx = np.mgrid[0:H, 0:W].astype(np.float32)

    def _texture(self, rng: np.random.Generator) -> np.ndarray:
        """(H, W) float32 pattern in [0, 1]: smooth noise, checkerboard, dots or stripes."""
        H, W = self.size
        kind = int(rng.integers(4))
        if kind == 0:
            g = rng.random((6, 6), dtype=np.float32)
            return _interp_matrix(H, 6) @ g @ _interp_matrix(W, 6).T
        th = rng.uniform(0, math.pi)
        u = self.xx * math.cos(th) + self.yy * math.sin(th)
        v = -self.xx * math.sin(th) + self.yy * math.cos(th)
        p = rng.uniform(3, 7)
        if kind == 1:
            return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
        if kind == 2:
            return ((np.cos(2 * math.pi * u / p) * np.cos(2 * math.pi * v / p)) > 0.5).astype(np.float32)
        return (np.sin(2 * math.pi * u / p + rng.uniform(0, 2 * math.pi)) > 0).astype(np.float32)

    def _paint(self, rng, img, region, cls: int) -> None:
        if cls == 0:
            c1 = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.3, 0.8))
            c2 = np.clip(c1 + rng.uniform(-0.1, 0.1), 0, 1).astype(np.float32)
        else:
            h = self.HUES[cls] + rng.uniform(-0.03, 0.03)
            s, v = rng.uniform(0.55, 0.95), rng.uniform(0.5, 0.95)
            c1 = _hsv_to_rgb(h, s, v)
            c2 = _hsv_to_rgb(h, s, float(np.clip(v + rng.choice([-1, 1]) * rng.uniform(0.2, 0.35), 0.3, 1)))
        if cls == len(TEXTURE_CLASSES) - 1:
            img[:, region] = c1[:, None]
            return
        tex = self._texture(rng)[region]
        img[:, region] = c1[:, None] * (1 - tex) + c2[:, None] * tex

    def _blob(self, rng) -> np.ndarray:
        H, W = self.size
        s = min(H, W)
        cy, cx = rng.uniform(0.1, 0.9) * H, rng.uniform(0.1, 0.9) * W
        r0 = rng.uniform(0.1, 0.26) * s
        dy, dx = self.yy - cy, self.xx - cx
        ang = np.arctan2(dy, dx)
        r = np.full_like(ang, r0)
        for k in range(2, 6):
            r += r0 * rng.uniform(0, 0.3 / k * 2) * np.cos(k * ang + rng.uniform(0, 2 * math.pi))
        return dx * dx + dy * dy <= r * r

    def _curve(self, rng) -> np.ndarray:
        """A quadratic Bezier stroke 1-2 px wide: pixels within w/2 of points 0.25 px apart."""
        H, W = self.size
        pts = np.stack([rng.uniform(-0.1, 1.1, 3) * H, rng.uniform(-0.1, 1.1, 3) * W], 1)  # (3, [y, x])
        length = np.linalg.norm(pts[1] - pts[0]) + np.linalg.norm(pts[2] - pts[1])
        t = np.linspace(0, 1, max(2, int(4 * length)))[:, None]
        path = (1 - t) ** 2 * pts[0] + 2 * t * (1 - t) * pts[1] + t * t * pts[2]  # (P, 2)
        w = rng.uniform(1.0, 2.0)
        return _stroke(path, w, 1, H, W)

    def render(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` (of the current epoch for "train") as image (3, H, W) float32, mask (H, W) int64."""
        epoch = self.epoch if self.split == "train" else 0
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], epoch, int(i), 7])
        H, W = self.size
        C = self.num_classes
        img = np.empty((3, H, W), np.float32)
        mask = np.zeros((H, W), np.int64)
        self._paint(rng, img, np.ones((H, W), bool), 0)
        thin = len(TEXTURE_CLASSES) - 1
        region_classes = [c for c in range(1, C) if c != thin]
        for _ in range(int(rng.integers(1, self.max_objects + 1))):
            cls = region_classes[int(rng.integers(len(region_classes)))]
            region = self._blob(rng)
            self._paint(rng, img, region, cls)
            mask[region] = cls
        if C > thin:
            for _ in range(int(rng.integers(1, self.max_thin + 1)) if self.max_thin else 0):
                region = self._curve(rng)
                self._paint(rng, img, region, thin)
                mask[region] = thin
        if self.noise > 0:
            img += rng.normal(0, self.noise, img.shape).astype(np.float32)
        np.clip(img, 0, 1, out=img)
        return img, mask


class TextureStatistics(_Procedural):
    """Procedural segmentation whose classes only texture statistics over an area tell apart.

    The counterpart of :class:`TexturedRegions`, where a 3 x 3 patch names the class: here
    every class has the *same per-pixel distribution* of colour and intensity, so the colour
    of a pixel, or the mean colour of a 3 x 3 patch, says nothing about its class, and the
    pattern inside a 3 x 3 patch little (its gradient hints at the direction of a striped
    class); the statistics of the pattern over about 9 x 9 pixels (orientation, anisotropy,
    spatial frequency) name it. So the high-resolution encoder feature, SAPA's guide, is
    locally weak, and the class is decided by the deeper, coarser features. Measured in
    ``tests/test_data.py`` (nearest-centroid classifiers, pixels whose 9 x 9 neighbourhood has
    one label; chance 1/6): pixel colour and 3 x 3 mean colour 0.15 balanced accuracy, four
    texture statistics over 9 x 9 windows 0.94; per class and channel, the difference between
    the mean of a class's pixels and the background's in the same image, averaged over images
    (pixel-weighted), is < 0.003 (pixel std about 0.2), and the ratio of their stds within 3 %
    of 1. In single images the regions differ more (chapter 10, exercise 1: the largest
    difference over 16 images is a few hundredths in a mean, against tenths for
    :class:`TexturedRegions`).

    Every class is a random-phase field: white noise filtered in the Fourier domain by the
    class's envelope (Gaussian in log-frequency, 0.3 octave wide, around the image's period
    P drawn from 5-7 px; oriented classes also Gaussian in angle, 12 degrees wide, jittered
    by up to 6 degrees per image), standardised to mean 0 and variance 1 over the image. A
    field is Gaussian at every pixel whatever its envelope, so the classes share their
    marginal. Classes (the first ``num_classes`` of :data:`STATISTICS_CLASSES`; stripe
    direction on screen, y pointing down):

    0. ``background``: isotropic band-pass noise of period P (blotches, no orientation);
    1. ``horizontal``, 2. ``vertical``, 3. ``diagonal`` (running top-left to bottom-right,
       "\\"), 4. ``antidiagonal`` ("/"): stripes of period P in that direction, wavy and of
       random phase;
    5. ``fine``: isotropic band-pass noise of period 0.55 P (2.75-3.85 px).

    Regions (each of a class drawn from 1..num_classes-1): 1 to ``max_objects`` irregular
    blobs (radius 10-26 % of the side), up to ``max_bands`` bands 4-8 px wide (quadratic
    Bezier paths) and up to ``max_small`` small blobs of radius 2.5-4.5 px, painted in that
    order over the background; regions of one class in an image share its field.

    Colour: one per image, shared by every class: ``pixel = base + field * tint``, with base
    an HSV colour (any hue, saturation 0-0.5, value 0.35-0.65) and tint a positive RGB
    direction whose root-mean-square over the channels (the pattern's std) is drawn from
    0.10-0.16 per image, so the hue and intensity of a pixel do not depend on its class.
    Independent Gaussian noise of a per-image std drawn from ``noise`` (default 0.1-0.2,
    as strong as the pattern or stronger, so a single pixel is masked) is added to every
    pixel and channel, and the image clipped to [0, 1].

    Fresh samples every epoch as in :class:`TexturedRegions`: the ``"train"`` split draws
    sample ``i`` of epoch ``e`` from ``(seed, split, e, i)`` (:meth:`set_epoch`), ``"val"``
    and ``"test"`` are fixed. Generation takes about as long as :class:`TexturedRegions`'s
    (1-3 ms per 64 x 64 image on one core, depending on the machine's load).

    Args:
        num_samples: samples per epoch (train) or in the set (val/test).
        size: int or (H, W), default 64.
        num_classes: 2..6 (default 6).
        seed: data seed (independent of the training seed).
        split: "train", "val" or "test".
        max_objects: at most this many large blobs per image (at least 1).
        max_bands: at most this many bands 4-8 px wide per image.
        max_small: at most this many small blobs per image.
        noise: (low, high) range of the per-image pixel-noise std, or one number.

    Returns (per item): image (3, H, W) float32 in [0, 1], mask (H, W) int64.
    """

    ignore_index = None
    #: angle of the stripes' wave vector (radians, x right, y down) of the oriented classes
    ANGLES = (None, math.pi / 2, 0.0, 3 * math.pi / 4, math.pi / 4, None)
    FINE_RATIO = 0.55

    def __init__(
        self,
        num_samples: int,
        size: SizeArg = 64,
        num_classes: int = len(STATISTICS_CLASSES),
        seed: int = 0,
        split: str = "train",
        max_objects: int = 5,
        max_bands: int = 2,
        max_small: int = 3,
        noise: Union[float, Tuple[float, float]] = (0.1, 0.2),
    ):
        _check_procedural("TextureStatistics", num_samples, num_classes, STATISTICS_CLASSES, split, seed)
        self.size = _hw(size)
        for name, value, low in (("max_objects", max_objects, 1), ("max_bands", max_bands, 0),
                                 ("max_small", max_small, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(noise, (int, float)) and not isinstance(noise, bool):
            noise = (noise, noise)
        try:
            lo, hi = (float(v) for v in noise)
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in noise)
        except (TypeError, ValueError):
            ok = False
        if not ok or not (0 <= lo <= hi):
            raise ValueError(f"noise must be a non-negative number or a (low, high) range with "
                             f"0 <= low <= high, got {noise!r}")
        self.num_samples, self.num_classes = num_samples, num_classes
        self.seed, self.split, self.epoch = seed, split, 0
        self.max_objects, self.max_bands, self.max_small = max_objects, max_bands, max_small
        self.noise = (lo, hi)
        self.class_names = STATISTICS_CLASSES[:num_classes]
        H, W = self.size
        self.yy, self.xx = np.mgrid[0:H, 0:W].astype(np.float32)
        fy = np.fft.fftfreq(H)[:, None]
        fx = np.fft.rfftfreq(W)[None, :]
        with np.errstate(divide="ignore"):
            self._log2_freq = np.log2(np.sqrt(fx * fx + fy * fy))  # -inf at DC
        self._angle = np.arctan2(fy, fx)  # (H, W // 2 + 1), radians

    def _field(self, rng: np.random.Generator, cls: int, period: float) -> np.ndarray:
        """(H, W) float32 random-phase field of class ``cls``: mean 0, variance 1."""
        H, W = self.size
        f0 = 1.0 / (period * (self.FINE_RATIO if cls == len(STATISTICS_CLASSES) - 1 else 1.0))
        env = np.exp(-0.5 * ((self._log2_freq - math.log2(f0)) / 0.3) ** 2)  # 0 at DC
        angle = self.ANGLES[cls]
        if angle is not None:
            d = (self._angle - angle - rng.uniform(-1, 1) * math.radians(6) + math.pi / 2) % math.pi - math.pi / 2
            env = env * np.exp(-0.5 * (d / math.radians(12)) ** 2)
        spec = (rng.standard_normal(env.shape) + 1j * rng.standard_normal(env.shape)) * env
        field = np.fft.irfft2(spec, s=(H, W))
        field -= field.mean()
        return (field / max(field.std(), 1e-12)).astype(np.float32)

    def _blob(self, rng, r0: float) -> np.ndarray:
        """(H, W) bool star-shaped blob: radius r0 (1 + sum_k a_k cos(k angle + phi_k)), k = 2..5."""
        H, W = self.size
        cy, cx = rng.uniform(0.1, 0.9) * H, rng.uniform(0.1, 0.9) * W
        ks = np.arange(2, 6)
        amp = rng.uniform(0, 0.6 / ks)
        phase = rng.uniform(0, 2 * math.pi, len(ks))
        reach = r0 * (1 + amp.sum()) + 1  # only the blob's bounding box is computed
        y0, y1 = max(0, int(cy - reach)), min(H, int(cy + reach) + 2)
        x0, x1 = max(0, int(cx - reach)), min(W, int(cx + reach) + 2)
        dy, dx = self.yy[y0:y1, x0:x1] - cy, self.xx[y0:y1, x0:x1] - cx
        ang = np.arctan2(dy, dx)
        r = r0 * (1 + (amp[:, None, None] * np.cos(ks[:, None, None] * ang + phase[:, None, None])).sum(0))
        out = np.zeros((H, W), bool)
        out[y0:y1, x0:x1] = dx * dx + dy * dy <= r * r
        return out

    def _band(self, rng) -> np.ndarray:
        """A quadratic Bezier band 4-8 px wide: pixels within w/2 of path points 1 px apart."""
        H, W = self.size
        pts = np.stack([rng.uniform(-0.1, 1.1, 3) * H, rng.uniform(-0.1, 1.1, 3) * W], 1)  # (3, [y, x])
        w = rng.uniform(4.0, 8.0)
        length = np.linalg.norm(pts[1] - pts[0]) + np.linalg.norm(pts[2] - pts[1])
        t = np.linspace(0, 1, max(2, int(length)))[:, None]
        path = (1 - t) ** 2 * pts[0] + 2 * t * (1 - t) * pts[1] + t * t * pts[2]  # (P, 2)
        path = path[(path[:, 0] > -w) & (path[:, 0] < H + w) & (path[:, 1] > -w) & (path[:, 1] < W + w)]
        return _stroke(path, w, int(math.ceil(w / 2 + 0.75)), H, W)

    def render(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` (of the current epoch for "train") as image (3, H, W) float32, mask (H, W) int64."""
        epoch = self.epoch if self.split == "train" else 0
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], epoch, int(i), 11])
        H, W = self.size
        s = min(H, W)
        period = rng.uniform(5.0, 7.0)
        mask = np.zeros((H, W), np.int64)
        regions = [self._blob(rng, rng.uniform(0.1, 0.26) * s)
                   for _ in range(int(rng.integers(1, self.max_objects + 1)))]
        regions += [self._band(rng) for _ in range(int(rng.integers(0, self.max_bands + 1)))]
        regions += [self._blob(rng, rng.uniform(2.5, 4.5))
                    for _ in range(int(rng.integers(0, self.max_small + 1)))]
        for region in regions:
            mask[region] = int(rng.integers(1, self.num_classes))
        pattern = np.empty((H, W), np.float32)
        for cls in np.unique(mask).tolist():  # one field per class present, in class order
            where = mask == cls
            pattern[where] = self._field(rng, cls, period)[where]
        base = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.35, 0.65))
        tint = rng.uniform(0.5, 1.0, 3)
        tint = (tint * rng.uniform(0.10, 0.16) * math.sqrt(3) / np.linalg.norm(tint)).astype(np.float32)
        img = base[:, None, None] + pattern[None] * tint[:, None, None]
        sigma = rng.uniform(*self.noise) if self.noise[1] > self.noise[0] else self.noise[0]
        if sigma > 0:
            img += rng.normal(0, sigma, img.shape).astype(np.float32)
        np.clip(img, 0, 1, out=img)
        return img.astype(np.float32), mask


# --------------------------------------------------------------------------------------
# image files
# --------------------------------------------------------------------------------------
def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("reading image files needs Pillow: pip install pillow") from e
    return Image


def _open_image(path: Path):
    """Open and fully decode an image, raising ValueError that names the file if it is corrupt."""
    Image = _pil()
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), SyntaxError ...
        raise ValueError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e
    return im


def _image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the header only; ValueError naming the file if unreadable."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise ValueError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e


def _to_tensors(image, mask_array: np.ndarray, size: Optional[Tuple[int, int]]):
    Image = _pil()
    image = image.convert("RGB")
    if size is not None and (image.size[1], image.size[0]) != size:
        image = image.resize((size[1], size[0]), Image.BILINEAR)
        m = Image.fromarray(mask_array.astype(np.uint8) if mask_array.max() < 256 else mask_array.astype(np.int32))
        mask_array = np.asarray(m.resize((size[1], size[0]), Image.NEAREST))
    img = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return img.contiguous(), torch.from_numpy(np.asarray(mask_array, dtype=np.int64).copy())


def _mask_array(path: Path) -> np.ndarray:
    im = _open_image(path)
    if im.mode not in ("L", "P", "I", "I;16", "1"):
        raise ValueError(
            f"mask {path} has mode {im.mode!r}; masks must be single-channel index images "
            f"(mode L or P, pixel value = class index, {IGNORE_INDEX} = ignore)"
        )
    return np.asarray(im).astype(np.int64)


class ImageMaskFolder(Dataset):
    """Image/mask pairs from ``root/image_dir`` and ``root/mask_dir``, matched by file stem.

    Images: PNG/JPG/BMP/TIFF/WebP, converted to RGB. Masks: single-channel index images
    (mode L or P) whose pixel values are class indices, 255 = ignore; a mask may have any
    image extension but PNG is the safe choice (JPEG compression corrupts labels).

    The pairing and the image sizes (from the file headers) are checked when the dataset is
    created: a missing mask raises FileNotFoundError naming the image, a size mismatch or an
    unreadable file a ValueError naming the file(s). A file corrupt past its header raises the
    ValueError when the item is loaded.

    Args:
        root: dataset folder.
        image_dir, mask_dir: sub-folder names.
        size: None (keep file sizes; a DataLoader then needs equal sizes) or int / (H, W) to
            resize (bilinear image, nearest mask).
        num_classes: number of classes; None infers ``max label + 1`` by reading every mask
            once (on first access of ``num_classes``).
        stems: optional subset of file stems (used for train/val splits).

    Returns (per item): image (3, H, W) float32 in [0, 1], mask (H, W) int64.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        root,
        image_dir: str = "images",
        mask_dir: str = "masks",
        size: SizeArg = None,
        num_classes: Optional[int] = None,
        stems: Optional[Sequence[str]] = None,
    ):
        self.root = Path(root)
        self.size = _hw(size)
        img_root, mask_root = self.root / image_dir, self.root / mask_dir
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {self.root} does not exist (--data-root)")
        for d, what in ((img_root, "image_dir"), (mask_root, "mask_dir")):
            if not d.is_dir():
                raise FileNotFoundError(f"{what} folder {d} does not exist")
        images = {p.stem: p for p in sorted(img_root.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
        masks = {}
        for p in sorted(mask_root.iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS and (p.stem not in masks or p.suffix.lower() == ".png"):
                masks[p.stem] = p
        if stems is not None:
            missing = [s for s in stems if s not in images]
            if missing:
                raise FileNotFoundError(f"no image for stem(s) {missing[:5]} in {img_root}")
            images = {s: images[s] for s in stems}
        if not images:
            raise FileNotFoundError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found in {img_root}")
        self.pairs: List[Tuple[Path, Path]] = []
        for stem, ip in images.items():
            if stem not in masks:
                raise FileNotFoundError(f"image {ip} has no mask: expected {mask_root / (stem + '.png')}")
            mp = masks[stem]
            isz, msz = _image_size(ip), _image_size(mp)
            if isz != msz:
                raise ValueError(
                    f"image {ip} is {isz[0]}x{isz[1]} (WxH) but its mask {mp} is {msz[0]}x{msz[1]}"
                )
            self.pairs.append((ip, mp))
        self._num_classes = num_classes
        self.class_names = None

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            top = 0
            for _, mp in self.pairs:
                m = _mask_array(mp)
                m = m[m != IGNORE_INDEX]
                if m.size:
                    top = max(top, int(m.max()))
            self._num_classes = max(top + 1, 2)
        return self._num_classes

    @property
    def stems(self) -> List[str]:
        return [ip.stem for ip, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        ip, mp = self.pairs[i]
        image = _open_image(ip)
        mask = _mask_array(mp)
        if (mask.shape[1], mask.shape[0]) != image.size:
            raise ValueError(f"image {ip} is {image.size} (WxH) but its mask {mp} is {mask.shape[::-1]}")
        if self._num_classes is not None:
            bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= self._num_classes))
            if bad.any():
                raise ValueError(
                    f"mask {mp} has labels {sorted(set(mask[bad].tolist()))[:5]} outside "
                    f"[0, {self._num_classes}) (and not {IGNORE_INDEX} = ignore)"
                )
        return _to_tensors(image, mask, self.size)


class OxfordPets(Dataset):
    """The Oxford-IIIT Pet segmentation data (37 breeds, pixel trimaps), read from disk.

    Layout (the official archives, also what torchvision writes under
    ``root/oxford-iiit-pet``; both ``root`` and ``root/oxford-iiit-pet`` are accepted)::

        images/<name>.jpg
        annotations/trimaps/<name>.png      1 = pet, 2 = background, 3 = border/unclear
        annotations/trainval.txt, annotations/test.txt   lines "<name> <class> <species> <breed>"

    Trimap to classes, by ``border``:

    * ``"class"`` (default): background 0, pet 1, border 2 (3 classes; the border is a band
      a few pixels wide along the contour, a thin-structure class);
    * ``"ignore"``: background 0, pet 1, border = 255 ignored (2 classes);
    * ``"pet"``: the border counts as pet (2 classes).

    Nothing is downloaded unless ``download=True``: then
    ``torchvision.datasets.OxfordIIITPet(root, download=True)`` fetches the archives
    (about 800 MB) — torchvision is imported only there.

    Args:
        root: folder holding the layout above.
        split: "trainval" or "test".
        size: int or (H, W) every sample is resized to (images vary in size), default 128.
        download: fetch the data if missing (needs torchvision and internet).
        border: "class", "ignore" or "pet".

    Returns (per item): image (3, H, W) float32 in [0, 1], mask (H, W) int64.
    """

    BORDER_MODES = ("class", "ignore", "pet")

    def __init__(self, root, split: str = "trainval", size: SizeArg = 128,
                 download: bool = False, border: str = "class"):
        if split not in ("trainval", "test"):
            raise ValueError(f"split must be 'trainval' or 'test', got {split!r}")
        if border not in self.BORDER_MODES:
            raise ValueError(f"border must be one of {self.BORDER_MODES}, got {border!r}")
        self.size = _hw(size)
        self.split, self.border = split, border
        root = Path(root)
        base = self._find(root)
        if base is None:
            if not download:
                raise FileNotFoundError(
                    f"Oxford-IIIT Pet not found under {root} (expected {root}/images and "
                    f"{root}/annotations/trimaps, or {root}/oxford-iiit-pet/...); pass "
                    f"download=True (--download) to fetch it with torchvision"
                )
            self._download(root, split)
            base = self._find(root)
            if base is None:
                raise FileNotFoundError(f"download finished but no Oxford-IIIT Pet layout under {root}")
        self.base = base
        list_file = base / "annotations" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"split list {list_file} does not exist")
        names = []
        for line in list_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                names.append(line.split()[0])
        if not names:
            raise ValueError(f"split list {list_file} names no images")
        self.names = names
        self.num_classes = 3 if border == "class" else 2
        self.class_names = ("background", "pet", "border")[: self.num_classes]
        self.ignore_index = IGNORE_INDEX if border == "ignore" else None
        lut = np.full(256, IGNORE_INDEX, np.int64)
        lut[1], lut[2] = 1, 0
        lut[3] = {"class": 2, "ignore": IGNORE_INDEX, "pet": 1}[border]
        self._lut = lut

    @staticmethod
    def _find(root: Path) -> Optional[Path]:
        for base in (root, root / "oxford-iiit-pet"):
            if (base / "images").is_dir() and (base / "annotations" / "trimaps").is_dir():
                return base
        return None

    @staticmethod
    def _download(root: Path, split: str) -> None:
        try:
            from torchvision.datasets import OxfordIIITPet
        except Exception as e:  # ImportError, or a torchvision built for another torch
            raise ImportError(
                "download=True fetches Oxford-IIIT Pet with torchvision.datasets.OxfordIIITPet, "
                f"but torchvision cannot be imported ({type(e).__name__}: {e}); install a "
                "torchvision matching your torch, or download the archives from "
                "https://www.robots.ox.ac.uk/~vgg/data/pets/ and extract them under "
                f"{root}"
            ) from e
        OxfordIIITPet(str(root), split=split, target_types="segmentation", download=True)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        name = self.names[i]
        ip = self.base / "images" / f"{name}.jpg"
        mp = self.base / "annotations" / "trimaps" / f"{name}.png"
        for p in (ip, mp):
            if not p.is_file():
                raise FileNotFoundError(f"Oxford-IIIT Pet file {p} (listed in {self.split}.txt) is missing")
        image = _open_image(ip)
        trimap = _mask_array(mp)
        if (trimap.shape[1], trimap.shape[0]) != image.size:
            raise ValueError(f"image {ip} is {image.size} (WxH) but its trimap {mp} is {trimap.shape[::-1]}")
        if trimap.min() < 1 or trimap.max() > 3:
            raise ValueError(f"trimap {mp} has values outside {{1, 2, 3}}: {np.unique(trimap)[:8].tolist()}")
        # resize the raw trimap (nearest), then map to classes
        img, tri = _to_tensors(image, trimap, self.size)
        return img, torch.from_numpy(self._lut)[tri]


# --------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------
def _subset(ds: Dataset, n: Optional[int], seed: int) -> Dataset:
    """A deterministic random subset of ``n`` items (all when n is None or >= len)."""
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values.tolist()
    sub = torch.utils.data.Subset(ds, idx)
    for attr in ("num_classes", "class_names", "ignore_index"):
        setattr(sub, attr, getattr(ds, attr))
    return sub


def make_dataset(
    name: str,
    split: str = "train",
    root=None,
    size: SizeArg = 64,
    num_samples: Optional[int] = None,
    seed: int = 0,
    download: bool = False,
    num_classes: Optional[int] = None,
    val_fraction: float = 0.2,
    **options,
) -> Dataset:
    """Build a dataset by name for a split ("train" or "val").

    * ``"synthetic"``: :class:`SyntheticShapes` with ``num_samples`` samples (default 512
      train / 128 val) of ``split``'s stream of data seed ``seed``; ``num_classes`` default 6.
    * ``"textures"``: :class:`TexturedRegions`, ``num_samples`` per epoch (default 2048
      train, fresh every epoch) / in the fixed validation set (default 1000).
    * ``"statistics"``: :class:`TextureStatistics`, the same sample counts as "textures".
    * ``"folder"``: :class:`ImageMaskFolder`. If ``root/train`` and ``root/val`` exist they
      are the splits; otherwise the pairs of ``root`` are split deterministically (seeded by
      ``seed``) with ``val_fraction`` of them for validation.
    * ``"oxford-pets"``: :class:`OxfordPets`, train = "trainval", val = "test".

    ``num_samples`` caps folder and Pet datasets (a seeded random subset). Extra ``options``
    go to the dataset class. The returned dataset has ``num_classes``, ``class_names`` and
    ``ignore_index`` attributes; items are (image (3, H, W) float32, mask (H, W) int64).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if name == "synthetic":
        n = num_samples if num_samples is not None else (512 if split == "train" else 128)
        return SyntheticShapes(n, size=size, num_classes=num_classes or len(SYNTHETIC_CLASSES),
                               seed=seed, split=split, **options)
    if name == "textures":
        n = num_samples if num_samples is not None else (2048 if split == "train" else 1000)
        return TexturedRegions(n, size=size, num_classes=num_classes or len(TEXTURE_CLASSES),
                               seed=seed, split=split, **options)
    if name == "statistics":
        n = num_samples if num_samples is not None else (2048 if split == "train" else 1000)
        return TextureStatistics(n, size=size, num_classes=num_classes or len(STATISTICS_CLASSES),
                                 seed=seed, split=split, **options)
    if root is None:
        raise ValueError(f"dataset {name!r} needs a root folder (--data-root)")
    root = Path(root)
    if name == "folder":
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist (--data-root)")
        if (root / "train").is_dir() and (root / "val").is_dir():
            ds = ImageMaskFolder(root / split, size=size, num_classes=num_classes, **options)
        else:
            full = ImageMaskFolder(root, size=size, num_classes=num_classes, **options)
            stems = full.stems
            if len(stems) < 2:
                raise ValueError(f"folder {root} has {len(stems)} image(s); need at least 2 to split train/val")
            g = torch.Generator().manual_seed(int(seed))
            perm = torch.randperm(len(stems), generator=g).tolist()
            n_val = min(len(stems) - 1, max(1, int(round(val_fraction * len(stems)))))
            chosen = perm[:n_val] if split == "val" else perm[n_val:]
            ds = ImageMaskFolder(root, size=size, num_classes=num_classes or full.num_classes,
                                 stems=[stems[k] for k in sorted(chosen)], **options)
        return _subset(ds, num_samples, seed)
    ds = OxfordPets(root, split="trainval" if split == "train" else "test",
                    size=size if size is not None else 128, download=download, **options)
    return _subset(ds, num_samples, seed)
