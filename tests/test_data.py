import random

import numpy as np
import pytest
import torch
from PIL import Image

from sapa.lab.data import (
    SYNTHETIC_CLASSES,
    ImageMaskFolder,
    OxfordPets,
    SyntheticShapes,
    make_dataset,
)


def test_synthetic_shapes_types_and_determinism():
    seed = random.randrange(1000)
    ds = SyntheticShapes(6, size=(40, 48), seed=seed)
    img, mask = ds[3]
    assert img.shape == (3, 40, 48) and img.dtype == torch.float32
    assert mask.shape == (40, 48) and mask.dtype == torch.int64
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    assert int(mask.max()) < len(SYNTHETIC_CLASSES)
    # sample i depends only on (seed, split, i): not on the dataset length or access order
    other = SyntheticShapes(100, size=(40, 48), seed=seed)
    img2, mask2 = other[3]
    assert torch.equal(img, img2) and torch.equal(mask, mask2)
    assert not torch.equal(ds[3][0], SyntheticShapes(6, size=(40, 48), seed=seed + 1)[3][0])
    assert not torch.equal(ds[3][0], SyntheticShapes(6, size=(40, 48), seed=seed, split="val")[3][0])


def test_synthetic_shapes_classes_present():
    ds = SyntheticShapes(40, size=64, seed=random.randrange(1000))
    seen = torch.zeros(len(SYNTHETIC_CLASSES), dtype=torch.long)
    for i in range(len(ds)):
        seen += torch.bincount(ds[i][1].flatten(), minlength=len(SYNTHETIC_CLASSES))
    assert (seen > 0).all(), seen
    two = SyntheticShapes(10, size=32, num_classes=2)
    assert all(int(two[i][1].max()) <= 1 for i in range(10))
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(4, num_classes=9)
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes(4, split="dev")


def _write_pair(folder, stem, h, w, mh=None, mw=None, n_classes=3, ext=".png"):
    rng = np.random.default_rng()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "images" / f"{stem}{ext}")
    m = rng.integers(0, n_classes, (mh or h, mw or w), dtype=np.uint8)
    Image.fromarray(m).save(folder / "masks" / f"{stem}.png")
    return m


def test_image_mask_folder(tmp_path):
    m0 = _write_pair(tmp_path, "a", 20, 24)
    _write_pair(tmp_path, "b", 20, 24, ext=".jpg")
    ds = ImageMaskFolder(tmp_path)
    assert len(ds) == 2 and ds.num_classes >= 2
    img, mask = ds[0]
    assert img.shape == (3, 20, 24) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(m0.astype(np.int64)))
    img, mask = ImageMaskFolder(tmp_path, size=16)[1]
    assert img.shape == (3, 16, 16) and mask.shape == (16, 16)


def test_image_mask_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageMaskFolder(tmp_path / "nowhere")
    _write_pair(tmp_path, "a", 12, 12)
    (tmp_path / "images" / "lonely.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="lonely"):
        ImageMaskFolder(tmp_path)
    (tmp_path / "images" / "lonely.png").unlink()
    _write_pair(tmp_path, "big", 12, 12, mh=10, mw=12)
    with pytest.raises(ValueError, match="big"):
        ImageMaskFolder(tmp_path)
    (tmp_path / "images" / "big.png").unlink()
    (tmp_path / "masks" / "big.png").unlink()
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "masks" / "broken.png").write_bytes((tmp_path / "masks" / "a.png").read_bytes())
    with pytest.raises(ValueError, match="broken.png"):
        ImageMaskFolder(tmp_path)


def test_image_mask_folder_truncated_image(tmp_path):
    _write_pair(tmp_path, "a", 32, 32)
    data = (tmp_path / "images" / "a.png").read_bytes()
    (tmp_path / "images" / "a.png").write_bytes(data[: len(data) // 2])  # header intact
    ds = ImageMaskFolder(tmp_path)
    with pytest.raises(ValueError, match="a.png"):
        ds[0]


def _fake_pets(root, names_trainval, names_test, h=18, w=22):
    rng = np.random.default_rng()
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    for name in names_trainval + names_test:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
        tri = rng.integers(1, 4, (h, w), dtype=np.uint8)
        Image.fromarray(tri).save(root / "annotations" / "trimaps" / f"{name}.png")
    (root / "annotations" / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in names_trainval))
    (root / "annotations" / "test.txt").write_text("".join(f"{n} 2 2 1\n" for n in names_test))


def test_oxford_pets_layout(tmp_path):
    _fake_pets(tmp_path / "oxford-iiit-pet", ["Abyssinian_1", "beagle_2"], ["Bengal_3"])
    ds = OxfordPets(tmp_path, split="trainval", size=16)
    assert len(ds) == 2 and ds.num_classes == 3
    img, mask = ds[1]
    assert img.shape == (3, 16, 16) and mask.shape == (16, 16)
    # trimap 1 = pet -> 1, 2 = background -> 0, 3 = border -> 2
    tri = np.asarray(Image.open(tmp_path / "oxford-iiit-pet" / "annotations" / "trimaps" / "beagle_2.png"))
    full = OxfordPets(tmp_path, split="trainval", size=tri.shape)[1][1]
    expected = torch.from_numpy(np.choose(tri.astype(np.int64) - 1, [1, 0, 2]))
    assert torch.equal(full, expected)
    ign = OxfordPets(tmp_path, split="test", size=tri.shape, border="ignore")
    assert ign.num_classes == 2 and ign.ignore_index == 255 and len(ign) == 1
    assert set(torch.unique(ign[0][1]).tolist()) <= {0, 1, 255}
    val = make_dataset("oxford-pets", split="val", root=tmp_path, size=16)
    assert len(val) == 1


def test_oxford_pets_missing_no_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        OxfordPets(tmp_path)


def test_make_dataset_dispatch(tmp_path):
    ds = make_dataset("synthetic", split="val", size=32, num_samples=5)
    assert len(ds) == 5 and ds[0][0].shape == (3, 32, 32)
    for k in range(5):
        _write_pair(tmp_path, f"im{k}", 16, 16)
    tr = make_dataset("folder", split="train", root=tmp_path, size=16)
    va = make_dataset("folder", split="val", root=tmp_path, size=16)
    assert len(tr) + len(va) == 5 and not set(tr.stems) & set(va.stems)
    assert tr.num_classes == va.num_classes
    with pytest.raises(ValueError, match="unknown dataset"):
        make_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        make_dataset("folder", root=tmp_path / "missing_dir")


# ---- TexturedRegions: the boundary-dominated task ------------------------------------------------
from sapa.lab.data import TEXTURE_CLASSES, TexturedRegions  # noqa: E402


def test_textured_regions_types_determinism_and_fresh_epochs():
    seed = random.randrange(1000)
    ds = TexturedRegions(8, size=(64, 72), seed=seed)
    img, mask = ds[5]
    assert img.shape == (3, 64, 72) and img.dtype == torch.float32
    assert mask.shape == (64, 72) and mask.dtype == torch.int64
    assert 0 <= float(img.min()) and float(img.max()) <= 1 and int(mask.max()) < len(TEXTURE_CLASSES)
    again = TexturedRegions(100, size=(64, 72), seed=seed)[5]
    assert torch.equal(img, again[0]) and torch.equal(mask, again[1])
    # the training split draws fresh samples every epoch; the validation set is fixed
    ds.set_epoch(3)
    assert not torch.equal(ds[5][1], mask)
    ds.set_epoch(0)
    assert torch.equal(ds[5][1], mask)
    val = TexturedRegions(4, seed=seed, split="val")
    first = val[2][1].clone()
    val.set_epoch(7)
    assert torch.equal(val[2][1], first)
    assert not torch.equal(first, TexturedRegions(4, seed=seed + 1, split="val")[2][1])
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)
    with pytest.raises(ValueError, match="num_classes"):
        TexturedRegions(4, num_classes=7)


def _hue_sat(rgb):
    """rgb (3, ...) -> hue in [0, 1), saturation."""
    mx, mn = rgb.max(0).values, rgb.min(0).values
    r, g, b = rgb
    d = (mx - mn).clamp_min(1e-6)
    h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
    return h % 1.0, (mx - mn) / mx.clamp_min(1e-6)


def test_textured_regions_classes_are_locally_distinguishable():
    """A 3 x 3 mean colour names the class of an interior pixel (hue family / greyness)."""
    ds = TexturedRegions(30, seed=random.randrange(1000), split="val")
    hues = torch.tensor([h for h in TexturedRegions.HUES[1:]])
    correct = total = 0
    for i in range(len(ds)):
        img, mask = ds[i]
        mean = torch.nn.functional.avg_pool2d(img[None], 3, 1, 1)[0]
        # interior: all 3 x 3 neighbours share the label (and not on the frame)
        m = mask.float()[None, None]
        same = (torch.nn.functional.max_pool2d(m, 3, 1, 1) == torch.nn.functional.max_pool2d(-m, 3, 1, 1).neg())[0, 0]
        same[0, :] = same[-1, :] = same[:, 0] = same[:, -1] = False
        h, s = _hue_sat(mean)
        dist = ((h[None] - hues[:, None, None]) + 0.5) % 1.0 - 0.5
        pred = torch.where(s < 0.3, torch.zeros_like(mask), dist.abs().argmin(0) + 1)
        correct += int((pred == mask)[same].sum())
        total += int(same.sum())
    assert correct / total > 0.95, correct / total


def test_textured_regions_thin_structures_and_cover():
    ds = TexturedRegions(40, seed=random.randrange(1000), split="val")
    seen = torch.zeros(len(TEXTURE_CLASSES))
    thin_px = thin_core = 0
    for i in range(len(ds)):
        mask = ds[i][1]
        seen += torch.bincount(mask.flatten(), minlength=len(TEXTURE_CLASSES))
        t = (mask == len(TEXTURE_CLASSES) - 1).float()[None, None]
        eroded = -torch.nn.functional.max_pool2d(-t, 3, 1, 1)  # 3 x 3 erosion
        thin_px += int(t.sum())
        thin_core += int(eroded.sum())
    assert (seen > 0).all()
    assert seen[0] / seen.sum() < 0.8  # foreground is not a rounding error
    assert thin_px > 0 and thin_core / thin_px < 0.1  # strokes at most ~2 px wide
    ds2 = make_dataset("textures", split="val", size=64, num_samples=3, num_classes=3)
    assert len(ds2) == 3 and int(max(ds2[i][1].max() for i in range(3))) <= 2
    assert len(make_dataset("textures", split="val")) >= 1000


# ---- TextureStatistics: the task whose high-resolution guide is weak ------------------------------
import torch.nn.functional as F  # noqa: E402

from sapa.lab.data import PROCEDURAL_DATASETS, STATISTICS_CLASSES, TextureStatistics  # noqa: E402


def test_texture_statistics_types_determinism_and_fresh_epochs():
    seed = random.randrange(1000)
    ds = TextureStatistics(8, size=(64, 72), seed=seed)
    img, mask = ds[5]
    assert img.shape == (3, 64, 72) and img.dtype == torch.float32
    assert mask.shape == (64, 72) and mask.dtype == torch.int64
    assert 0 <= float(img.min()) and float(img.max()) <= 1 and int(mask.max()) < len(STATISTICS_CLASSES)
    assert ds.num_classes == 6 and ds.class_names == STATISTICS_CLASSES and ds.ignore_index is None
    again = TextureStatistics(100, size=(64, 72), seed=seed)[5]  # not on the length or access order
    assert torch.equal(img, again[0]) and torch.equal(mask, again[1])
    assert torch.equal(ds[-3][0], ds[5][0])
    ds.set_epoch(3)  # the training split draws fresh samples every epoch
    assert not torch.equal(ds[5][1], mask)
    ds.set_epoch(0)
    assert torch.equal(ds[5][0], img)
    val = TextureStatistics(4, seed=seed, split="val")
    first = val[2]
    val.set_epoch(7)  # the validation set is fixed
    assert torch.equal(val[2][0], first[0]) and torch.equal(val[2][1], first[1])
    assert not torch.equal(first[0], TextureStatistics(4, seed=seed + 1, split="val")[2][0])
    assert not torch.equal(first[0], TextureStatistics(4, seed=seed, split="test")[2][0])
    with pytest.raises(IndexError):
        ds[8]


def test_texture_statistics_arguments():
    for kwargs, name in ((dict(num_classes=7), "num_classes"), (dict(num_classes=1), "num_classes"),
                         (dict(split="dev"), "split"), (dict(seed=-1), "seed"), (dict(size=4), "size"),
                         (dict(max_objects=0), "max_objects"), (dict(max_bands=-1), "max_bands"),
                         (dict(max_small=1.5), "max_small"), (dict(noise=-0.1), "noise"),
                         (dict(noise=(0.2, 0.1)), "noise"), (dict(noise="loud"), "noise")):
        with pytest.raises(ValueError, match=name):
            TextureStatistics(4, **kwargs)
    with pytest.raises(ValueError, match="num_samples"):
        TextureStatistics(-1)
    with pytest.raises(ValueError, match="epoch"):
        TextureStatistics(4).set_epoch(-1)
    quiet = TextureStatistics(2, seed=3, split="val", noise=0.0)[0][0]
    loud = TextureStatistics(2, seed=3, split="val", noise=0.3)[0][0]
    assert float((loud - quiet).std()) > 0.2  # the noise is what it says
    three = make_dataset("statistics", split="val", size=32, num_samples=5, num_classes=3)
    assert isinstance(three, TextureStatistics) and len(three) == 5 and three.num_classes == 3
    assert all(int(three[i][1].max()) <= 2 for i in range(5))
    assert len(make_dataset("statistics", split="val")) == 1000
    assert "statistics" in PROCEDURAL_DATASETS


def test_texture_statistics_classes_bands_and_small_blobs():
    ds = TextureStatistics(40, seed=random.randrange(1000), split="val")
    seen = torch.zeros(len(STATISTICS_CLASSES))
    narrow = 0
    for i in range(len(ds)):
        mask = ds[i][1]
        seen += torch.bincount(mask.flatten(), minlength=len(STATISTICS_CLASSES))
        fg = (mask > 0).float()[None, None]
        opened = F.max_pool2d(-F.max_pool2d(-fg, 9, 1, 4), 9, 1, 4)  # 9 x 9 opening
        narrow += int((fg - opened).clamp_min(0).sum())  # foreground narrower than 9 px
    assert (seen > 0).all(), seen
    assert seen[0] / seen.sum() < 0.8  # foreground is not a rounding error
    assert narrow / float(seen[1:].sum()) > 0.1, narrow / float(seen[1:].sum())  # bands and small blobs


def _pixel_statistics(ds, n):
    """Per class, the pixel-weighted means over images of (class mean - background mean) and
    (class std / background std) of every channel, both taken in the same image."""
    C = ds.num_classes
    dmean, ratio, weight = torch.zeros(C, 3), torch.zeros(C, 3), torch.zeros(C)
    for i in range(n):
        img, mask = ds[i]
        bg = img[:, mask == 0]
        if bg.shape[1] < 50:
            continue
        for c in range(1, C):
            px = img[:, mask == c]
            if px.shape[1] < 50:
                continue
            w = px.shape[1]
            dmean[c] += w * (px.mean(1) - bg.mean(1))
            ratio[c] += w * px.std(1) / bg.std(1)
            weight[c] += w
    keep = weight > 0
    return dmean[keep] / weight[keep, None], ratio[keep] / weight[keep, None]


def _structure_features(img, window):
    """(4, H, W) texture statistics over a window x window box: the structure tensor's
    anisotropy (cos 2 theta, sin 2 theta, times the coherence) from Sobel gradients, and two
    log energy ratios of a Laplacian pyramid's bands (spatial frequency)."""
    def blur(t, k):
        k = torch.tensor(k, dtype=torch.float32)
        k, r = k / k.sum(), len(k) // 2
        t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))

    g = img.mean(0)[None, None]
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None] / 8
    gp = F.pad(g, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(gp, sobel), F.conv2d(gp, sobel.transpose(-1, -2))

    def box(t):
        return F.avg_pool2d(t, window, 1, window // 2, count_include_pad=False)

    jxx, jyy, jxy = box(gx * gx), box(gy * gy), box(gx * gy)
    tr = (jxx + jyy).clamp_min(1e-8)
    b1 = blur(g, [1, 2, 1])
    b2 = blur(b1, [1, 4, 6, 4, 1])
    b3 = blur(b2, [1, 4, 6, 4, 1])
    e_hi, e_fine, e_mid = box((g - b1) ** 2), box((b1 - b2) ** 2), box((b2 - b3) ** 2)
    return torch.cat([(jxx - jyy) / tr, 2 * jxy / tr, torch.log(e_fine / e_mid), torch.log(e_hi / e_fine)], 1)[0]


def _nearest_centroid_accuracy(train, test, features, num_classes, window=9):
    """Per-class accuracy of a nearest-centroid classifier (standardised features) fitted on
    ``train``'s pixels and scored on ``test``'s, both at pixels whose window x window
    neighbourhood has one label (so every statistic sees one class)."""
    def collect(ds):
        xs, ys = [], []
        for i in range(len(ds)):
            img, mask = ds[i]
            m = F.pad(mask.float()[None, None], (window // 2,) * 4, value=-1)
            pure = (F.max_pool2d(m, window, 1) == -F.max_pool2d(-m, window, 1))[0, 0]
            xs.append(features(img)[:, pure].T)
            ys.append(mask[pure])
        return torch.cat(xs), torch.cat(ys)

    (x, y), (xt, yt) = collect(train), collect(test)
    mu, sd = x.mean(0), x.std(0) + 1e-8
    x, xt = (x - mu) / sd, (xt - mu) / sd
    centroids = torch.stack([x[y == c].mean(0) for c in range(num_classes)])
    pred = torch.cdist(xt, centroids).argmin(1)
    return torch.stack([(pred[yt == c] == c).float().mean() for c in range(num_classes)])


def test_texture_statistics_pixels_say_nothing_areas_say_the_class(one_thread):
    """The property the task exists for, measured: a pixel's colour and intensity have one
    distribution whatever its class (and a classifier of a pixel's colour is at chance),
    while texture statistics over a 9 x 9 window separate the classes."""
    seed = random.randrange(1000)
    val = TextureStatistics(100, seed=seed, split="val")
    dmean, ratio = _pixel_statistics(val, len(val))
    print(f"class - background mean, per class and channel: max |d| {float(dmean.abs().max()):.4f}; "
          f"std ratio in [{float(ratio.min()):.3f}, {float(ratio.max()):.3f}]")
    assert float(dmean.abs().max()) < 0.01  # the pixels' std is about 0.2
    assert float((ratio - 1).abs().max()) < 0.04
    # the same measurement has the power to fail: on TexturedRegions (hue families) it does
    tex_mean, tex_ratio = _pixel_statistics(TexturedRegions(40, seed=seed, split="val"), 40)
    assert float(tex_mean.abs().max()) > 0.1

    train, test = TextureStatistics(30, seed=seed, split="train"), TextureStatistics(30, seed=seed, split="test")
    C = train.num_classes
    pixel = _nearest_centroid_accuracy(train, test, lambda im: im, C)
    patch = _nearest_centroid_accuracy(train, test, lambda im: F.avg_pool2d(im[None], 3, 1, 1)[0], C)
    area = _nearest_centroid_accuracy(train, test, lambda im: _structure_features(im, 9), C)
    small = _nearest_centroid_accuracy(train, test, lambda im: _structure_features(im, 3), C)
    print("balanced accuracy (chance 1/6): pixel colour", round(float(pixel.mean()), 3), "3x3 mean colour",
          round(float(patch.mean()), 3), "texture statistics over 3x3", round(float(small.mean()), 3),
          "over 9x9", round(float(area.mean()), 3), [round(float(a), 2) for a in area])
    assert float(pixel.mean()) < 0.25 and float(patch.mean()) < 0.25
    assert float(area.mean()) > 0.8 and float(area.min()) > 0.5
    assert float(area.mean()) > float(small.mean()) + 0.1
    # and on TexturedRegions the pixel colour alone is far above chance (the test can fail)
    tex_pixel = _nearest_centroid_accuracy(TexturedRegions(20, seed=seed, split="train"),
                                           TexturedRegions(20, seed=seed, split="test"), lambda im: im, 6, window=3)
    assert float(tex_pixel.mean()) > 0.4, tex_pixel
