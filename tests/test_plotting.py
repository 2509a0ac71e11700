"""sapa.lab.plotting: image helpers (shapes, ranges), kernel collection, figures (Agg backend)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from sapa.lab.models import Segmenter
from sapa.lab.plotting import (boundary_crop, collect_kernels, colorize, error_bar_plot, feature_to_rgb, kernel_map,
                           palette, show_predictions)


@pytest.mark.parametrize("method", ["pca", "channels"])
@pytest.mark.parametrize("channels", [1, 2, 3, 8])
def test_feature_to_rgb_shape_and_range(method, channels):
    feat = torch.randn(channels, 12, 10)
    rgb = feature_to_rgb(feat, method)
    assert rgb.shape == (12, 10, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[..., 0].max() > 0.9  # each used component spans [0, 1]
    if channels < 3:
        assert np.all(rgb[..., channels:] == 0)


def test_feature_to_rgb_channels_are_the_first_three():
    feat = np.zeros((5, 4, 4))
    feat[1, :2] = 1.0  # only channel 1 (green) varies
    rgb = feature_to_rgb(feat, "channels")
    assert np.all(rgb[..., 0] == 0) and np.all(rgb[..., 2] == 0)
    assert np.all(rgb[:2, :, 1] == 1) and np.all(rgb[2:, :, 1] == 0)


def test_feature_to_rgb_pca_constant_regions_are_uniform():
    feat = np.zeros((6, 8, 8))
    feat[:, :, 4:] = np.arange(6)[:, None, None]  # two regions
    rgb = feature_to_rgb(feat)
    assert np.allclose(rgb[:, :4], rgb[0, 0]) and np.allclose(rgb[:, 4:], rgb[0, 4])
    assert not np.allclose(rgb[0, 0], rgb[0, 4])


@pytest.mark.parametrize("mode", ["pca", "max", "entropy", "channels"])
def test_kernel_map_shapes_and_range(mode):
    k = torch.softmax(torch.randn(2, 25, 6, 7), dim=1)
    for arr in (k, k[1]):
        img = kernel_map(arr, mode)
        assert img.shape == (6, 7, 3)
        assert img.min() >= 0 and img.max() <= 1


def test_kernel_map_entropy_extremes_and_single_channel():
    uniform = np.full((9, 2, 2), 1 / 9)
    onehot = np.zeros((9, 2, 2))
    onehot[4] = 1
    k = np.concatenate([uniform, onehot], axis=2)  # left: uniform, right: one point
    # entropy 1 on the left and 0 on the right: the colormap ends differ
    img = kernel_map(k, "entropy", cmap="gray")
    assert np.allclose(img[:, :2], 1, atol=1e-6) and np.allclose(img[:, 2:], 0, atol=1e-6)
    assert kernel_map(torch.rand(1, 1, 5, 5)).shape == (5, 5, 3)  # IndexNet-HIN index map
    with pytest.raises(ValueError):
        kernel_map(np.zeros((4, 4)))


def test_palette_and_colorize():
    for n in (1, 6, 10, 25):
        p = palette(n)
        assert p.shape == (n, 3) and p.min() >= 0 and p.max() <= 1
        assert len({tuple(np.round(c, 3)) for c in p}) == n
    m = np.array([[0, 1], [5, 255]])
    rgb = colorize(m, 6)
    assert rgb.shape == (2, 2, 3)
    assert np.allclose(rgb[1, 1], 1)  # ignored label: white
    assert np.allclose(rgb[0, 1], palette(6)[1])


def test_boundary_crop_finds_the_edge():
    m = np.zeros((32, 32), int)
    m[20:, 20:] = 1
    top, left, h, w = boundary_crop(m, 8)
    assert (h, w) == (8, 8)
    box = m[top:top + 8, left:left + 8]
    assert 0 < box.mean() < 1  # contains both labels


def test_show_predictions_grid(tmp_path):
    imgs = torch.rand(2, 3, 16, 16)
    masks = torch.randint(0, 3, (2, 16, 16))
    preds = {"a": masks.clone(), "b": torch.zeros_like(masks)}
    for crop in (None, "auto", (2, 3, 8, 8), [(0, 0, 8, 8), (8, 8, 8, 8)]):
        fig = show_predictions(imgs, masks, preds, crop=crop, num_classes=3)
        assert len(fig.axes) == 2 * 4
        assert fig.axes[2].get_title() == "a"
        fig.savefig(tmp_path / "p.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
    with pytest.raises(ValueError):
        show_predictions(imgs, masks, {"a": masks[:1]})


def test_error_bar_plot():
    import matplotlib.pyplot as plt

    rows = [dict(setting="a", n=3, miou_mean=0.5, miou_std=0.01), dict(setting="b", n=3, miou_mean=0.6, miou_std=0.02)]
    ax = error_bar_plot(rows, "miou", scale=100, highlight=["b"], reference=50)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([50, 60])
    lo, hi = ax.get_ylim()
    assert lo <= 49 and hi >= 62
    plt.close(ax.figure)


@pytest.mark.parametrize("name, channels", [("sapa-b", 25), ("carafe", 25), ("indexnet-hin", 1), ("a2u", 9),
                                            ("fade", 25), ("sapa-d", 9), ("bilinear", None)])
def test_collect_kernels(name, channels):
    torch.manual_seed(0)
    model = Segmenter(3, name, width=4, stages=3).eval()
    image = torch.rand(2, 3, 16, 16)
    got = collect_kernels(model, image)
    assert got["name"] == name
    D = model.decoder_width
    assert got["x"].shape == (2, D, 8, 8)
    assert got["y"].shape == (2, D, 16, 16)
    assert got["out"].shape == (2, D, 16, 16)
    assert got["logits"].shape == (2, 3, 16, 16)
    torch.testing.assert_close(got["logits"], model(image))
    if channels is None:
        assert got["kernels"] is None
        return
    k = got["kernels"]
    assert k.shape == (2, channels, 16, 16)
    if name != "indexnet-hin":  # normalised weights
        torch.testing.assert_close(k.sum(1), torch.ones(2, 16, 16))
    assert kernel_map(k).shape == (16, 16, 3)
    assert feature_to_rgb(got["out"][0]).shape == (16, 16, 3)


# --------------------------------------------------------------------------------------
# the book's style, glue, tables and diagrams
# --------------------------------------------------------------------------------------
def _texts(fig):
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip() and t.get_visible()]


def test_book_style_text_is_at_least_min_font():
    import matplotlib.pyplot as plt

    from sapa.lab.plotting import BOOK_STYLE, MIN_FONT_PT, use_book_style

    use_book_style()
    assert all(matplotlib.rcParams[k] == v for k, v in BOOK_STYLE.items() if k != "figure.figsize")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a")
    ax.set_title("t")
    ax.legend()
    sizes = [t.get_fontsize() for t in _texts(fig)]
    assert sizes and min(sizes) >= MIN_FONT_PT >= 9
    plt.close(fig)
    with pytest.raises(ValueError, match="fmt"):
        use_book_style("jpeg")


@pytest.mark.parametrize("draw", ["draw_sapa_pipeline", "draw_window_gather", "draw_triton_tiling"])
def test_diagrams_fit_the_column_with_legible_text(draw):
    import matplotlib.pyplot as plt

    import sapa.lab.plotting as sp

    sp.use_book_style()
    fig = getattr(sp, draw)()
    assert fig.get_figwidth() <= sp.BOOK_WIDTH
    texts = _texts(fig)
    assert len(texts) >= 8
    assert min(t.get_fontsize() for t in texts) >= sp.MIN_FONT_PT
    # no text runs off the figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    for t in texts:
        bb = t.get_window_extent(renderer)
        assert bb.x0 >= -2 and bb.x1 <= W + 2 and bb.y0 >= -2 and bb.y1 <= H + 2, (draw, t.get_text(), bb)
    plt.close(fig)


def test_window_gather_marks_the_right_centre():
    import matplotlib.pyplot as plt

    from sapa.lab.plotting import draw_window_gather

    fig = draw_window_gather(H=4, W=5, kernel_size=3, scale=2, point=(2, 8))
    words = " ".join(t.get_text() for t in _texts(fig))
    assert "= (1, 4)" in words and "(B, C, 9, 8, 10)" in words and "(B, C·9, 20)" in words
    plt.close(fig)
    with pytest.raises(ValueError, match="point"):
        draw_window_gather(point=(8, 0))


def test_triton_tiling_counts_programs():
    import matplotlib.pyplot as plt

    from sapa.lab.plotting import draw_triton_tiling

    fig = draw_triton_tiling(Hq=10, Wq=13, C=160, block_p=32, block_c=64, B=2)
    assert "(5, 3, B): 30 programs" in fig._suptitle.get_text()   # ceil(130/32) = 5, ceil(160/64) = 3
    plt.close(fig)
    with pytest.raises(ValueError, match="block_p"):
        draw_triton_tiling(block_p=0)


def test_markdown_table():
    from sapa.lab.plotting import markdown_table

    text = markdown_table(["name", "value"], [["a|b", 1.5], ["c", 2]])
    assert text.splitlines() == ["| name | value |", "|:--|--:|", "| a\\|b | 1.5 |", "| c | 2 |"]
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [[1, 2]], align="lx")


def test_glue_outside_jupyter_does_nothing_and_checks_the_name():
    from sapa.lab.plotting import glue

    assert glue("x", "text") is None
    with pytest.raises(TypeError, match="name"):
        glue("", 1)


def test_show_predictions_draws_a_class_legend():
    import matplotlib.pyplot as plt

    imgs = torch.rand(2, 3, 8, 8)
    masks = torch.randint(0, 3, (2, 8, 8))
    fig = show_predictions(imgs, masks, {"a": masks}, num_classes=3, class_names=["bg", "disk", "ring"])
    labels = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert labels == ["bg", "disk", "ring"]
    plt.close(fig)
    with pytest.raises(ValueError, match="class_names"):
        show_predictions(imgs, masks, {"a": masks}, num_classes=3, class_names=["bg"])


def _paired_rows():
    import json
    rows = []
    for seed in range(3):
        for s, v in [("bilinear", 0.80), ("a", 0.82), ("b", 0.70)]:
            curve = dict(epoch=[1, 2, 3], val_miou=[None, v - 0.1, v], val_boundary_iou=[None, v - 0.2, v - 0.1])
            rows.append(dict(setting=s, seed=seed, miou=v + 0.01 * seed, curve=json.dumps(curve)))
    return rows


def test_paired_difference_plot_shows_every_seed_and_zero():
    import matplotlib.pyplot as plt
    from sapa.lab.plotting import paired_difference_plot
    from sapa.lab.stats import paired_differences

    rows = _paired_rows()
    res = paired_differences(rows, "miou")
    ax = paired_difference_plot(res, rows, "miou", names={"a": "A"})
    lo, hi = ax.get_xlim()
    assert lo < -10 < 0 < 2 < hi  # b is 10 points below, a 2 above: both inside the axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "A"]
    dots = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert len(dots) == 6  # 2 settings x 3 seeds
    plt.close("all")


def test_seed_lines_curve_plot_and_show_map():
    import matplotlib.pyplot as plt
    from sapa.lab.plotting import curve_plot, seed_lines_plot, show_map

    rows = _paired_rows() + [dict(setting="a", seed=9, miou=0.0, curve="")]  # seed 9 lacks bilinear: left out
    ax = seed_lines_plot(rows, "miou", ["bilinear", "a", "b"])
    assert len(ax.lines) == 3 and ax.get_ylim()[0] < 70 and ax.get_ylim()[1] > 82
    ax = curve_plot(rows, ["bilinear", "a"])
    assert len(ax.lines) == 6 and list(ax.lines[0].get_xdata()) == [2, 3]  # the skipped epoch 1 left out
    fig, ax = plt.subplots()
    im = show_map(ax, torch.rand(5, 6), label="mass", vmin=0, vmax=1)
    assert len(fig.axes) == 2 and im.get_clim() == (0, 1)  # the panel and its colour bar
    with pytest.raises(ValueError, match="2-d"):
        show_map(ax, torch.rand(2, 5, 6))
    plt.close("all")


def test_mechanism_plot_one_point_per_seed():
    import matplotlib.pyplot as plt
    from sapa.lab.plotting import mechanism_plot

    rows = [dict(upsampler=u, sigma=s, seed=k, region_error=0.1 * s + k * 0.01)
            for u in ("bilinear", "sapa-b") for s in (0.0, 1.0) for k in range(3)]
    ax = mechanism_plot(rows, ["bilinear", "sapa-b"], "region_error")
    pts = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert len(pts) == 2 and all(len(ln.get_xdata()) == 6 for ln in pts)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    plt.close("all")
