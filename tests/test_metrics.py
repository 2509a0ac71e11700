import math

import pytest
import torch

from sapa.lab import metrics
from sapa.lab.metrics import (
    SegmentationMeter,
    boundary_band,
    boundary_iou,
    confusion_matrix,
    default_boundary_dilation,
    mean_iou,
    pixel_accuracy,
)

# target = 0 0 1      pred = 0 1 1
#          1 2 2             1 2 0
T = torch.tensor([[0, 0, 1], [1, 2, 2]])
P = torch.tensor([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_by_hand():
    # M[t, p]: (0,0)=1 (0,1)=1 (1,1)=2 (2,2)=1 (2,0)=1
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(confusion_matrix(P, T, 3), expected)
    # batched input (N, H, W) sums the images
    assert torch.equal(confusion_matrix(torch.stack([P, P]), torch.stack([T, T]), 3), 2 * expected)


def test_mean_iou_by_hand():
    # class 0: TP 1, target 2, pred 2 -> 1/(2+2-1) = 1/3
    # class 1: TP 2, target 2, pred 3 -> 2/3
    # class 2: TP 1, target 2, pred 1 -> 1/2      mean = (1/3 + 2/3 + 1/2) / 3 = 0.5
    m, per = mean_iou(P, T, 3, per_class=True)
    assert m == pytest.approx(0.5)
    assert per.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    # a 4th class absent from both maps is NaN and left out of the mean
    m4, per4 = mean_iou(P, T, 4, per_class=True)
    assert m4 == pytest.approx(0.5) and math.isnan(per4[3])


def test_ignore_index_and_pixel_accuracy():
    assert pixel_accuracy(P, T) == pytest.approx(4 / 6)
    t = T.clone()
    t[1, 2] = 255  # the (2 -> 0) error is ignored
    assert pixel_accuracy(P, t, ignore_index=255) == pytest.approx(4 / 5)
    # class 0: TP 1, target 2, pred 1 (the ignored pred 0 is not counted) -> 1/2
    # class 1: 2/3; class 2: TP 1, target 1, pred 1 -> 1     mean = (1/2 + 2/3 + 1) / 3
    assert mean_iou(P, t, 3, ignore_index=255) == pytest.approx((0.5 + 2 / 3 + 1) / 3)


def test_perfect_prediction_random():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    t = torch.randint(0, 5, (2, 16, 16), generator=g)
    assert mean_iou(t, t, 5) == pytest.approx(1.0)
    assert pixel_accuracy(t, t) == 1.0
    assert boundary_iou(t, t, 5) == pytest.approx(1.0)


def _square(r0, r1, c0, c1, n=6):
    m = torch.zeros(n, n, dtype=torch.long)
    m[r0:r1, c0:c1] = 1
    return m


def test_boundary_band_by_hand():
    t = _square(1, 5, 1, 5).bool()  # 4x4 square in a 6x6 image
    band = boundary_band(t, 1)
    # the 4x4 ring (12 px) minus the inner 2x2
    assert int(band.sum()) == 12 and not band[2:4, 2:4].any()
    # a mask touching the frame: no band along the frame unless asked
    p = _square(1, 5, 2, 6).bool()
    assert int(boundary_band(p, 1).sum()) == 10
    assert int(boundary_band(p, 1, frame_is_boundary=True).sum()) == 12
    # whole-image mask: no boundary at all
    assert not boundary_band(torch.ones(6, 6, dtype=torch.bool), 1).any()


def test_boundary_iou_by_hand():
    # target: square rows 1-4, cols 1-4; pred: the same square shifted one column right
    t, p = _square(1, 5, 1, 5), _square(1, 5, 2, 6)
    # class 1: target band 12 px (ring), pred band 10 px (rows 1 and 4 cols 2-5, col 2 rows 2-3;
    #   column 5 lies on the frame, not a boundary); intersection rows 1 and 4 cols 2-4 = 6;
    #   union 12 + 10 - 6 = 16 -> 6/16
    # class 0: target band = the 20 frame pixels; pred band = row 0 and row 5 cols 1-5 (10)
    #   + col 1 rows 1-4 (4) = 14; intersection 10; union 20 + 14 - 10 = 24 -> 10/24
    m, per = boundary_iou(p, t, 2, dilation=1, per_class=True)
    assert per.tolist() == pytest.approx([10 / 24, 6 / 16])
    assert m == pytest.approx((10 / 24 + 6 / 16) / 2)
    # frame counted as boundary (Cheng et al.'s code): class 1 pred band gains (2,5), (3,5):
    #   intersection 6, union 12 + 12 - 6 = 18
    _, per_f = boundary_iou(p, t, 2, dilation=1, per_class=True, frame_is_boundary=True)
    assert per_f[1] == pytest.approx(6 / 18)
    # a class present nowhere is NaN and excluded
    m3, per3 = boundary_iou(p, t, 3, dilation=1, per_class=True)
    assert math.isnan(per3[2]) and m3 == pytest.approx(m)


def test_default_dilation():
    assert default_boundary_dilation(64, 64) == 2
    assert default_boundary_dilation(128, 128) == 4
    assert default_boundary_dilation(8, 8) == 1


def test_meter_matches_functions():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    t = torch.randint(0, 3, (4, 12, 12), generator=g)
    p = torch.where(torch.rand(4, 12, 12, generator=g) < 0.3, torch.randint(0, 3, (4, 12, 12), generator=g), t)
    meter = SegmentationMeter(3)
    meter.update(p[:2], t[:2])
    meter.update(p[2:], t[2:])
    out = meter.compute()
    assert out["miou"] == pytest.approx(mean_iou(p, t, 3))
    assert out["boundary_iou"] == pytest.approx(boundary_iou(p, t, 3))
    assert out["pixel_acc"] == pytest.approx(pixel_accuracy(p, t))


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        mean_iou(P, T[:1], 3)
    with pytest.raises(TypeError, match="integer"):
        mean_iou(P.float(), T, 3)
    with pytest.raises(ValueError, match="outside"):
        mean_iou(P, T, 2)
    with pytest.raises(ValueError, match="dilation"):
        boundary_iou(P, T, 3, dilation=0)


def test_boundary_iou_ignores_the_edges_of_ignored_regions():
    """A perfect prediction scores 1 even when an ignore band cuts through the target."""
    target = torch.zeros(16, 16, dtype=torch.long)
    target[4:12, 4:12] = 1
    pred = target.clone()
    target_ign = target.clone()
    target_ign[:, 7:9] = 255  # an ignored stripe across the square and the background
    assert metrics.boundary_iou(pred, target_ign, 2, dilation=1, ignore_index=255) == 1.0


def test_boundary_band_rejects_non_bool_masks():
    with pytest.raises(TypeError, match="mask must be a .* bool tensor, got torch.int64"):
        metrics.boundary_band(torch.ones(4, 4, dtype=torch.long), 1)


# ---- class-agnostic boundary IoU and the error breakdown ---------------------------------------
def test_foreground_boundary_iou_by_hand():
    # target: class-1 square rows 1-4, cols 1-4 in an 8x8 image; pred: same square, class 2
    t = torch.zeros(8, 8, dtype=torch.long)
    t[1:5, 1:5] = 1
    p = t.clone()
    p[1:5, 1:5] = 2
    assert metrics.foreground_boundary_iou(p, t, 3, dilation=1) == 1.0  # class does not matter
    assert metrics.boundary_iou(p, t, 3, dilation=1) < 0.5  # ... but it does for Cheng's score
    # shift the predicted square one column right: inner ring of the square (12 px) plus the
    # outer ring in the background (20 px) = 32 px band each; by hand the target band is
    # rows 0-5 x cols 0-5 minus the 2x2 centre (36 - 4 = 32), the pred band rows 0-5 x
    # cols 1-6 minus rows 2-3 x cols 3-4 (32); intersection rows 0-5 x cols 1-5 (30) minus
    # the two centres' union (rows 2-3 x cols 2-4 = 6) = 24; union 32 + 32 - 24 = 40
    q = torch.zeros(8, 8, dtype=torch.long)
    q[1:5, 2:6] = 1
    assert metrics.foreground_boundary_iou(q, t, 2, dilation=1) == pytest.approx(24 / 40)
    assert math.isnan(metrics.foreground_boundary_iou(torch.zeros(4, 4, dtype=torch.long),
                                                      torch.zeros(4, 4, dtype=torch.long), 2))
    with pytest.raises(ValueError, match="background"):
        metrics.foreground_boundary_iou(q, t, 2, background=2)


def test_error_breakdown_by_hand():
    # target: left half class 1, right half class 2 (8x8); pred: the edge moved 1 px right,
    # plus one pixel of class 3 in the left half far from any class 3 (a recognition error),
    # plus one pixel of class 2 at column 0 (4 px from class 2: recognition at d = 2)
    t = torch.ones(8, 8, dtype=torch.long)
    t[:, 4:] = 2
    p = t.clone()
    p[:, 4] = 1  # 8 localisation errors
    p[0, 1] = 3
    p[5, 0] = 2
    e = metrics.error_breakdown(p, t, 4, dilation=2)
    assert e == {"pixels": 64, "errors": 10, "localisation": 8, "recognition": 2}
    # with d = 4 the class-2 pixel at column 0 is within reach of the true class-2 region
    e4 = metrics.error_breakdown(p, t, 4, dilation=4)
    assert e4["localisation"] == 9 and e4["recognition"] == 1
    # ignored target pixels are neither counted nor evidence of a class nearby
    t2 = t.clone()
    t2[:, 4:] = 255
    e_ign = metrics.error_breakdown(p, t2, 4, dilation=2, ignore_index=255)
    assert e_ign["pixels"] == 32 and e_ign["errors"] == 2 and e_ign["localisation"] == 0


def test_error_breakdown_random_sums_and_meter():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    t = torch.randint(0, 4, (3, 16, 16), generator=g)
    p = torch.where(torch.rand(3, 16, 16, generator=g) < 0.2, torch.randint(0, 4, (3, 16, 16), generator=g), t)
    e = metrics.error_breakdown(p, t, 4)
    assert e["errors"] == int((p != t).sum()) and e["localisation"] + e["recognition"] == e["errors"]
    # brute force: the predicted class within chessboard distance d
    d = metrics.default_boundary_dilation(16, 16)
    loc = 0
    for n, i, j in (p != t).nonzero().tolist():
        win = t[n, max(0, i - d): i + d + 1, max(0, j - d): j + d + 1]
        loc += bool((win == p[n, i, j]).any())
    assert e["localisation"] == loc
    meter = SegmentationMeter(4)
    meter.update(p[:1], t[:1])
    meter.update(p[1:], t[1:])
    out = meter.compute()
    assert out["error_rate"] == pytest.approx(e["errors"] / e["pixels"])
    assert out["loc_error_rate"] + out["rec_error_rate"] == pytest.approx(out["error_rate"])
    assert out["loc_error_share"] == pytest.approx(loc / e["errors"])
    assert out["fg_boundary_iou"] == pytest.approx(metrics.foreground_boundary_iou(p, t, 4))
