"""Tests of sapa.lab.comparison (chapter 6 and the preface's verdicts) and of the class colours.

Small hand-made row lists and label maps; no stored file needed.
"""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import sapa
from sapa.lab import comparison as cmp
from sapa.lab.data import SYNTHETIC_CLASSES, TEXTURE_CLASSES
from sapa.lab.plotting import class_legend, colorize, palette
from sapa.lab.stats import paired_t, t_ppf


def _rows(means, seeds=(0, 1, 2), noise=0.002, seed=0, metrics=("miou", "boundary_iou", "fg_boundary_iou")):
    """Fake sweep rows: setting -> mean score, a shared per-seed offset plus small noise."""
    rng = random.Random(seed)
    shared = {k: rng.uniform(-0.003, 0.003) for k in seeds}
    rows = []
    for u, m in means.items():
        for k in seeds:
            r = {"setting": u, "seed": k}
            for met in metrics:
                r[met] = m + shared[k] + rng.uniform(-noise, noise)
            rows.append(r)
    return rows


# ---------------------------------------------------------------- wording
def test_plural_and_signed():
    assert cmp.plural(1, "seed") == "1 seed" and cmp.plural(3, "seed") == "3 seeds"
    assert cmp.plural(0, "pair") == "0 pairs" and cmp.plural(2, "index", "indices") == "2 indices"
    with pytest.raises(TypeError):
        cmp.plural(2.0, "seed")
    assert cmp.signed(0.04) == "+0.04"  # never "+0.0" for a nonzero value
    assert cmp.signed(-0.04) == "-0.04"
    assert cmp.signed(-0.004) == "-0.004"
    assert cmp.signed(1.26) == "+1.3" and cmp.signed(0.0) == "0.0"
    assert cmp.signed(0.04, sign=False) == "0.04"
    assert cmp.signed(1e-5) == "+0.00001" and cmp.signed(-1e-8) == "-1e-08"  # never a nonzero value as 0.0


def test_mean_sd_and_describe():
    assert cmp.mean_sd([0.5, 0.5004]) == "50.0\u00a0±\u00a00.03"
    assert cmp.mean_sd([0.25]) == "25.0"
    with pytest.raises(ValueError):
        cmp.mean_sd([])
    r = dict(paired_t([0.01, 0.02, 0.015]), p_holm=0.2)
    text = cmp.describe(r)
    assert text.startswith("+1.5 points (95 % CI") and "Holm p = 0.200" in text and "n = 3" in text
    assert "Holm" not in cmp.describe(r, adjusted=False)
    small = dict(paired_t([0.0001, 0.0005, 0.0003]), p_holm=0.5)
    assert cmp.describe(small).startswith("+0.03 points (95 % CI -0.02 to +0.08")  # one precision for all three


def test_seed_status_counts_complete_seeds():
    rows = _rows({"a": 0.9, "b": 0.8}, seeds=(0, 1, 2))
    rows = [r for r in rows if not (r["setting"] == "b" and r["seed"] == 2)]
    text = cmp.seed_status(rows, "", ["a", "b"], (0, 1, 2, 3, 4), "CMD")
    assert "2 complete seeds (0, 1)" in text and "3 seeds still to come" in text and "(s)" not in text
    one = cmp.seed_status([r for r in rows if r["seed"] == 0], "", ["a", "b"], (0, 1), "CMD")
    assert "1 complete seed (0)" in one and "no paired interval" in one
    assert "skipped" in cmp.seed_status(None, "Missing.", ["a"], (0,), "CMD")


# ---------------------------------------------------------------- statistics
def test_error_ratios_match_a_hand_computation():
    rows = [{"setting": "bilinear", "seed": k, "miou": v} for k, v in enumerate([0.90, 0.92, 0.94])]
    rows += [{"setting": "u", "seed": k, "miou": v} for k, v in enumerate([0.98, 0.985, 0.99])]
    r = cmp.error_ratios(rows, "miou", ["u"])[0]
    per = [0.02 / 0.10, 0.015 / 0.08, 0.01 / 0.06]
    assert_close(torch.tensor(r["per_seed"], dtype=torch.float64), torch.tensor(per, dtype=torch.float64))
    logs = [math.log(v) for v in per]
    t = paired_t(logs)
    assert math.isclose(r["ratio"], math.exp(sum(logs) / 3), rel_tol=1e-12)
    assert math.isclose(r["ci_low"], math.exp(t["ci_low"]), rel_tol=1e-12)
    assert r["ci_low"] < r["ratio"] < r["ci_high"] and r["significant"]
    with pytest.raises(ValueError):
        cmp.error_ratios(rows + [{"setting": "v", "seed": 0, "miou": 0.9}], "miou", ["v"])
    perfect = [dict(r, miou=1.0) if r["setting"] == "bilinear" else r for r in rows]
    with pytest.raises(ValueError):
        cmp.error_ratios(perfect, "miou", ["u"])


def test_pair_family_applies_holm_over_the_pairs():
    rows = _rows({"a": 0.95, "b": 0.90, "c": 0.9501}, seeds=range(4))
    fam = cmp.pair_family(rows, [("a", "b"), ("a", "c")], "miou")
    assert [(d["a"], d["b"]) for d in fam] == [("a", "b"), ("a", "c")]
    p = sorted(d["p"] for d in fam)
    assert math.isclose(min(d["p_holm"] for d in fam), min(1.0, 2 * p[0]))
    assert fam[0]["significant"] and not fam[1]["significant"]
    with pytest.raises(ValueError):
        cmp.pair_family(rows, [("a", "zzz")], "miou")


def test_delta_table_and_listing():
    rows = _rows({"bilinear": 0.90, "good": 0.95, "same": 0.9001, "bad": 0.85}, seeds=range(4))
    res = cmp.paired_results(rows, ("miou", "boundary_iou"), ["good", "same", "bad"])
    header, table = cmp.delta_table(res, ["miou", "boundary_iou"], {"good": "Good", "same": "Same", "bad": "Bad"})
    assert header == ["vs bilinear", "Δ mIoU", "Δ boundary IoU"]
    assert table[0][0] == "Good" and table[0][1].startswith("+5.0") and table[0][1].endswith("✓")
    assert not table[1][1].endswith("✓")
    assert cmp.listing(res["miou"], "higher", {"good": "Good"}) == "Good"
    assert cmp.listing(res["miou"], "lower", {"bad": "Bad"}) == "Bad"
    assert cmp.listing(res["miou"], "unresolved", {"same": "Same"}) == "Same"
    with pytest.raises(ValueError):
        cmp.listing(res["miou"], "up")


def test_ceiling_and_its_sentence():
    rows = _rows({"bilinear": 0.933, "a": 0.990, "b": 0.988, "c": 0.96}, noise=0.0)
    c = cmp.ceiling(rows, ["bilinear", "a", "b", "c"], within=0.005)
    assert c["group"] == ["a", "b"] and c["best"] == "a"
    names = {"bilinear": "Bilinear", "a": "A", "b": "SAPA-B", "c": "C"}
    text = cmp.ceiling_sentence(c, reference="b", names=names)
    assert "2 upsamplers (A, SAPA-B)" in text and "cannot happen here" in text  # 1.2 > 1.2 points left
    c2 = cmp.ceiling(_rows({"bilinear": 0.5, "b": 0.9}, noise=0.0), ["bilinear", "b"])
    assert "would still fit" in cmp.ceiling_sentence(c2, reference="b", names=names)


def test_control_sentence_rests_on_the_direct_comparison():
    up = dict(paired_t([0.01, 0.015, 0.012]))
    flat = dict(paired_t([0.01, -0.01, 0.002]))
    unres = {"mean": 0.01, "p_holm": 0.3}
    assert cmp.control_sentence(up, unres).startswith("CARAFE is higher than its parameter-matched control")
    assert "unresolved" in cmp.control_sentence(up, unres)
    assert cmp.control_sentence(flat, {"mean": 0.01, "p_holm": 0.01}).startswith(
        "the direct paired difference CARAFE − control is unresolved")
    down = dict(paired_t([-0.01, -0.015, -0.012]))
    assert cmp.control_sentence(down, unres).startswith("CARAFE is lower")


def test_interval_widths_paired_and_welch():
    rows = _rows({"a": 0.95, "b": 0.90}, seeds=range(5), noise=0.001)
    w = cmp.interval_widths(rows, "a", "b")
    a = [r["miou"] for r in rows if r["setting"] == "a"]
    b = [r["miou"] for r in rows if r["setting"] == "b"]
    t = paired_t([x - y for x, y in zip(a, b)])
    assert math.isclose(w["paired"], 100 * (t["ci_high"] - t["mean"]), rel_tol=1e-9)
    va, vb = np.var(a, ddof=1) / 5, np.var(b, ddof=1) / 5
    df = (va + vb) ** 2 / ((va ** 2 + vb ** 2) / 4)
    assert math.isclose(w["welch"], 100 * t_ppf(0.975, df) * math.sqrt(va + vb), rel_tol=1e-9)
    assert w["correlation"] > 0.5 and w["ratio"] < 1  # the shared seed offset: pairing helps here


def test_late_gains_reads_the_curves():
    rows = [{"setting": "a", "seed": 0, "curve": '{"val_miou": [0.5, null, 0.8, 0.9]}'},
            {"setting": "a", "seed": 1, "curve": '{"val_miou": [0.5, 0.7, 0.6]}'},
            {"setting": "b", "seed": 0, "curve": '{"val_miou": [0.5]}'}]
    g = cmp.late_gains(rows)
    assert math.isclose(g["a"], (10.0 - 10.0) / 2, abs_tol=1e-9) and math.isnan(g["b"])


# ---------------------------------------------------------------- the preface's claims
def test_claims_main_applies_the_rule_to_other_guided_upsamplers():
    means = {"bilinear": 0.93, "deconv": 0.955, "pixelshuffle": 0.95, "bilinear+conv": 0.94,
             "indexnet-hin": 0.98, "indexnet-m2o": 0.988, "a2u": 0.90, "fade": 0.99, "sapa-i": 0.988,
             "sapa-b": 0.989, "sapa-g": 0.989, "carafe": 0.953}
    rows = _rows(means, seeds=range(5), noise=0.004)
    family = list(means)
    claims = cmp.claims_main(rows, family, command="CMD")
    text = "\n".join(claims)
    assert "**but not specific to SAPA**" in text  # the plain ones beat bilinear too
    assert "**but not specific to similarity**" in text and "FADE" in text
    spec = [c for c in claims if c.startswith("* *What is specific to similarity*")]
    assert len(spec) == 2 and "A2U, lower" in spec[0] and "unresolved against none" not in spec[0]
    assert "so this task shows no advantage of similarity over" in spec[0] and "FADE" in spec[0].split("so this")[1]
    assert "(s)" not in text and "beat(s)" not in text
    gate = [c for c in claims if "the gate helps" in c][0]
    assert "**unresolved** with 5 seeds" in gate
    short = cmp.claims_main([r for r in rows if r["seed"] == 0], family, command="CMD")
    assert len(short) == 1 and "1 complete seed" in short[0]
    assert "no file" in cmp.claims_main(None, family, command="CMD")[0]


def test_claim_segformer_and_table6():
    rows = [{"upsampler": u, "seed": k, "miou": m + d, "boundary_iou": 0.5 + d}
            for k, d in enumerate([0.0, 0.01, -0.01]) for u, m in (("bilinear", 0.76), ("sapa-b", 0.7601))]
    text = cmp.claim_segformer(rows)
    assert "chapter 9" in text and "**unresolved** with 3 seeds" in text and "n = 3" in text
    assert "no file" in cmp.claim_segformer(None)
    better = [dict(r, miou=r["miou"] + (0.02 if r["upsampler"] == "sapa-b" else 0)) for r in rows]
    better = [dict(r, boundary_iou=r["boundary_iou"] + (0.02 if r["upsampler"] == "sapa-b" else 0))
              for r in better]
    assert "**supported**" in cmp.claim_segformer(better)
    assert "no file" in cmp.claim_table6(None, "CMD")
    t6 = [{"group": "normalization", "setting": s, "seed": k, "miou": m + 0.001 * k}
          for k in range(3) for s, m in (("exp", 0.9), ("none", 0.8), ("relu", 0.85), ("sigmoid", 0.7),
                                           ("softplus", 0.75))]
    assert "**supported**" in cmp.claim_table6(t6, "CMD")


def test_claim_mechanism_counts_complete_seeds():
    rows = [{"upsampler": u, "sigma": 0.5, "seed": 0, "region_error": 0.1, "boundary_acc": 0.9}
            for u in ("bilinear", "sapa-b")]
    text = cmp.claim_mechanism(rows, ("bilinear", "sapa-b"), (0.5,), (0, 1), "CMD")
    assert "1 complete seed" in text and "cannot be judged" in text


# ---------------------------------------------------------------- kernels and boundaries
def test_labels_at_and_label_boundary():
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[:, :, 4:] = 1
    low = cmp.labels_at(lab, (4, 4), 2)
    assert low.tolist() == [[[0, 0, 1, 1]] * 4]
    with pytest.raises(ValueError):
        cmp.labels_at(lab, (3, 3), 2)
    with pytest.raises(ValueError):
        cmp.labels_at(lab.float(), (4, 4), 2)
    g = torch.Generator().manual_seed(0)
    rnd = torch.randint(0, 3, (2, 9, 7), generator=g)
    b = cmp.label_boundary(rnd)
    m = rnd.double()[:, None]
    hi = F.max_pool2d(F.pad(m, (1, 1, 1, 1), mode="replicate"), 3, 1)
    lo = -F.max_pool2d(F.pad(-m, (1, 1, 1, 1), mode="replicate"), 3, 1)
    assert torch.equal(b, (hi != lo)[:, 0])
    assert cmp.label_boundary(lab)[0, :, 3:5].all() and not cmp.label_boundary(lab)[0, :, :3].any()


def _step_edge(s, K=5):
    """SAPA-B on a vertical 2-class step edge (8 x 8 -> 16 x 16, edge between low-res columns 3 | 4);
    embeddings the one-hot class, projections s * identity."""
    mod = sapa.SAPA(2, 2, variant="B", kernel_size=K, embedding_dim=2, backend="torch").double()
    with torch.no_grad():
        for lin in (mod.q_y, mod.k_x):
            lin.weight.copy_(s * torch.eye(2, dtype=torch.float64))
            lin.bias.zero_()
    low = (torch.arange(8) >= 4).long().expand(8, 8)[None]
    high = (torch.arange(16) >= 8).long().expand(16, 16)[None]
    x = F.one_hot(low, 2).permute(0, 3, 1, 2).double()
    y = F.one_hot(high, 2).permute(0, 3, 1, 2).double()
    with torch.no_grad():
        return mod.kernels(x, y), low, high


def test_same_class_mass_on_a_hand_made_step_edge():
    """A selective SAPA kernel puts all its mass on the own class and spreads it evenly: its max
    weight is 1 / (same-class count), far below 1, so max weight is no measure of selection."""
    w, low, high = _step_edge(4.0)
    mass = cmp.same_class_mass(w, high, low)
    assert_close(mass, torch.ones_like(mass), atol=1e-6, rtol=0)
    ind = cmp.same_class_indicator(high, low, 5)
    assert_close(w.max(1).values, 1 / ind.sum(1), atol=1e-6, rtol=0)
    assert float(w.max()) < 0.12
    # near-zero embeddings: no selection, a lower mass, and a max weight that barely changes
    w0, _, _ = _step_edge(0.1)
    m0 = cmp.same_class_mass(w0, high, low)
    edge = cmp.label_boundary(high)
    assert float(m0[edge].mean()) < 0.85 and float(w0.max()) < 0.05
    # the indicator by a loop over the window
    g = torch.Generator().manual_seed(1)
    lo = torch.randint(0, 3, (1, 4, 5), generator=g)
    hi = torch.randint(0, 3, (1, 8, 10), generator=g)
    ind = cmp.same_class_indicator(hi, lo, 3)
    for i, j in [(0, 0), (3, 7), (7, 9)]:
        ci, cj = i * 4 // 8, j * 5 // 10
        for dy in range(3):
            for dx in range(3):
                a, b = ci + dy - 1, cj + dx - 1
                want = 0.0 if not (0 <= a < 4 and 0 <= b < 5) else float(lo[0, a, b] == hi[0, i, j])
                assert float(ind[0, dy * 3 + dx, i, j]) == want
    with pytest.raises(ValueError):
        cmp.same_class_mass(w[:, :24], high, low)
    with pytest.raises(ValueError):
        cmp.same_class_indicator(high, low, 4)


def test_kernel_statistics_tell_selection_from_concentration():
    labels = (torch.arange(16) >= 8).long().expand(16, 16)[None].repeat(2, 1, 1)
    w, _, _ = _step_edge(4.0)
    w = w.repeat(2, 1, 1, 1)
    st = cmp.kernel_statistics(w, labels, 2, (8, 8))
    assert st["mass_boundary"].shape == (2,)
    assert_close(st["mass_boundary"], torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (st["uniform_boundary"] < 0.7).all() and (st["max_boundary"] < 0.1).all()
    assert (st["contrast_boundary"] > 100).all()
    onepoint = torch.zeros_like(w)
    onepoint[:, 12] = 1.0  # the centre point only: concentrated, and mostly of the own class
    s1 = cmp.kernel_statistics(onepoint, labels, 2, (8, 8))
    assert_close(s1["max_boundary"], torch.ones(2, dtype=torch.float64))
    assert_close(s1["points_boundary"], torch.ones(2, dtype=torch.float64))
    uniform = torch.full_like(w, 1 / 25)
    su = cmp.kernel_statistics(uniform, labels, 2, (8, 8))
    assert_close(su["mass_boundary"], su["uniform_boundary"])
    assert_close(su["points_boundary"], torch.full((2,), 25.0, dtype=torch.float64))
    with pytest.raises(ValueError):
        cmp.kernel_statistics(w, labels[:1], 2)
    text = cmp.mass_sentence({"a": st, "b": su}, {"a": "A", "b": "B"})
    assert text.startswith("highest: A, above B")
    noisy = dict(su, mass_boundary=su["mass_boundary"] + torch.tensor([0.01, -0.01], dtype=torch.float64))
    assert "tied" in cmp.mass_sentence({"b": su, "c": noisy}, {"b": "B", "c": "C"})


# ---------------------------------------------------------------- colours
def test_each_colour_named_class_is_drawn_in_its_colour():
    from matplotlib.colors import to_rgb

    n = len(TEXTURE_CLASSES)
    mask = np.arange(n)[None]
    for pal in (colorize(mask, n)[0], colorize(mask, n, names=TEXTURE_CLASSES)[0]):
        for i, name in enumerate(TEXTURE_CLASSES):
            if name in ("red", "lime", "cyan", "blue"):
                assert np.allclose(pal[i], to_rgb(name)), (name, pal[i])
    assert len({tuple(c) for c in palette(n, TEXTURE_CLASSES)}) == n  # all distinct
    # any order: the names decide, and a non-colour class never takes a named colour
    names = ["background", "blue", "thing", "red"]
    pal = palette(4, names)
    assert np.allclose(pal[1], to_rgb("blue")) and np.allclose(pal[3], to_rgb("red"))
    assert not any(np.allclose(pal[2], to_rgb(c)) for c in ("blue", "red"))
    assert len({tuple(c) for c in palette(6, SYNTHETIC_CLASSES)}) == 6
    with pytest.raises(ValueError):
        palette(3, ["a", "b"])


def test_class_legend_uses_the_named_colours():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    fig, ax = plt.subplots()
    leg = class_legend(fig, TEXTURE_CLASSES)
    patches = {t.get_text(): h.get_facecolor()[:3] for t, h in zip(leg.get_texts(), leg.legend_handles)}
    assert np.allclose(patches["lime"], to_rgb("lime")) and np.allclose(patches["blue"], to_rgb("blue"))
    plt.close(fig)


# ---------------------------------------------------------------- kernel ablation
def _segmenter(name):
    from sapa.lab.models import Segmenter

    torch.manual_seed(0)
    model = Segmenter(6, name, width=4, stages=3, head="segformer").double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for up in model.upsamplers:
            if hasattr(up, "sapa"):
                up.sapa.backend = "torch"  # no C++ build in the tests of this module
            for p in up.parameters():  # trained-looking weights, not the tiny init: kernels far from flat
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


@pytest.mark.parametrize("name", ["sapa-b", "sapa-g", "carafe", "fade"])
def test_apply_kernels_with_the_own_kernels_is_the_module_output(name):
    model = _segmenter(name)
    seen = []
    hooks = [up.register_forward_hook(lambda m, a, o: seen.append((m, a[0], a[1], o))) for up in model.upsamplers]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model(torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64))
        for h in hooks:
            h.remove()
        assert len(seen) == len(model.upsamplers)
        for up, x, y, out in seen:
            w = cmp._module_kernels(up, x, y)
            assert float((w - 1 / w.shape[1]).abs().max()) > 0.02  # not flat: a real check
            assert_close(cmp.apply_kernels(up, x, y, w), out)
            other = cmp.apply_kernels(up, x, y, torch.full_like(w, 1 / w.shape[1]))
            assert not torch.allclose(other, out)  # the replacement changes something


def test_uniform_kernel_ablation_runs_and_refuses_kernel_free_steps():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 6, (3, 16, 16), generator=g)
    res = cmp.uniform_kernel_ablation(_segmenter("sapa-b"), images, masks, 6, steps=[0])
    assert res["trained"].shape == (3,) and res["uniform"].shape == (3,) and res["diff"]["n"] == 3
    with pytest.raises(TypeError):
        cmp.uniform_kernel_ablation(_segmenter("bilinear"), images, masks, 6)
    with pytest.raises(ValueError):
        cmp.uniform_kernel_ablation(_segmenter("sapa-b"), images, masks, 6, steps=[7])
    with pytest.raises(TypeError):
        cmp.apply_kernels(torch.nn.Identity(), images, images, images)


def test_describe_difference_never_prints_a_nonzero_mean_as_zero():
    from sapa.lab.stats import describe_difference

    r = dict(paired_t([0.0003, 0.0005, 0.0004]), p_holm=0.04, alpha=0.05)
    text = describe_difference(r)
    assert text.startswith("+0.04 points") and "+0.0 " not in text
    assert describe_difference(dict(paired_t([0.01, 0.02, 0.03]), p_holm=0.04)).startswith("+2.0 points")


def test_feature_pc1_spread_interval_cell_and_stored_model(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(5, generator=g, dtype=torch.float64)
    coef = torch.randn(6, 7, generator=g, dtype=torch.float64)
    feat = direction[:, None, None] * coef[None] + 1e-6 * torch.randn(5, 6, 7, generator=g, dtype=torch.float64)
    p = cmp.feature_pc1(feat).double()
    want = (coef - coef.mean()) / (coef - coef.mean()).abs().max()
    assert_close(p.abs(), want.abs(), atol=1e-4, rtol=0)  # a rank-one feature: PC1 is its coefficient map
    assert float(p.abs().max()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cmp.feature_pc1(torch.zeros(2, 3))
    assert cmp.spread(torch.tensor([0.7, 0.8, float("nan")])) == "0.75\u00a0±\u00a00.07"
    with pytest.raises(ValueError):
        cmp.spread(torch.tensor([float("nan")]))
    t = paired_t([-0.01, -0.015, -0.012])
    assert cmp.interval_cell(t).startswith("-1.2\u00a0[")
    assert cmp.interval_cell(paired_t([0.0003, 0.0005, 0.0004])).startswith("+0.04\u00a0[")
    monkeypatch.setenv("SAPA_RESULTS_DIR", str(tmp_path))  # an empty results folder: nothing fetched
    assert cmp.stored_model("sapa-b") is None


def test_late_lr_share():
    row = {"curve": '{"epoch": [1, 2, 3, 4], "lr": [1.0, 0.5, 0.2, 0.1]}'}
    assert cmp.late_lr_share(row, last_epochs=2) == pytest.approx(0.2)
    assert cmp.late_lr_share(row, last_epochs=4) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cmp.late_lr_share({"curve": '{"epoch": [1], "lr": []}'})


def test_claims_show_the_loaders_status_when_a_file_is_missing():
    st = "The stored result `x.csv` could not be downloaded (no network)."
    assert cmp.claims_main(None, ["bilinear", "sapa-b"], command="CMD", status=st)[0].endswith(st)
    assert cmp.claim_mechanism(None, ("bilinear",), (0.5,), (0,), "CMD", status=st).endswith(st)
    assert cmp.claim_table6(None, "CMD", status=st).endswith(st)


def test_show_map_log_scale():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sapa.lab.plotting import show_map

    fig, ax = plt.subplots()
    im = show_map(ax, np.array([[0.04, 0.2], [1.0, 0.01]]), vmin=0.04, vmax=1, log=True, colorbar=False)
    assert im.norm.vmin == pytest.approx(0.04) and float(im.get_array().min()) == pytest.approx(0.04)  # clipped
    assert im.norm(0.2) == pytest.approx(0.5)  # 0.2 = sqrt(0.04 * 1): the middle of a log scale
    with pytest.raises(ValueError):
        show_map(ax, np.ones((2, 2)), vmin=0, vmax=1, log=True)
    plt.close(fig)


def test_control_kernel_and_ablation_texts_give_every_key():
    means = {"bilinear": 0.93, "carafe": 0.953, "bilinear+conv": 0.94}
    rows = _rows(means, seeds=range(4), noise=0.002)
    for r in rows:
        r["params"] = 1000 + (500 if r["setting"] != "bilinear" else 0)
        r["upsampler_params"] = 500 if r["setting"] != "bilinear" else 0
    res = cmp.paired_results(rows, ("miou", "boundary_iou", "fg_boundary_iou"), ["carafe", "bilinear+conv"])
    t = cmp.control_texts(rows, res)
    assert set(t) == set(cmp.CONTROL_KEYS) and "n/a" not in t.values()
    assert t["carafe_ratio"] == "0.5" and t["carafe_vs_ctrl_miou"].startswith("+1.3 points")
    assert t["ctrl_phrase"].startswith("CARAFE is higher than its parameter-matched control")
    empty = cmp.control_texts([], {})
    assert set(empty) == set(cmp.CONTROL_KEYS) and set(empty.values()) == {"n/a"}

    st = {"max_boundary": torch.tensor([0.1, 0.2], dtype=torch.float64)}
    for k in ("max_interior", "points_boundary", "mass_boundary", "uniform_boundary", "contrast_boundary"):
        st[k] = torch.tensor([0.5, 0.7], dtype=torch.float64)
    other = dict(st, mass_boundary=torch.tensor([0.2, 0.3], dtype=torch.float64))
    table, texts = cmp.kernel_texts({"sapa-b": st, "carafe": other}, {"sapa-b": "SAPA-B", "carafe": "CARAFE"})
    assert set(texts) == set(cmp.KERNEL_KEYS) and table[1][0][0] == "SAPA-B"
    assert texts["km_sapab_mass"] == "0.60\u00a0±\u00a00.14" and texts["km_n"] == "2"
    assert texts["km_fade_mass"].startswith("n/a")  # no FADE statistics: said, not left out
    assert cmp.kernel_texts({})[0] is None

    diff = paired_t([-0.3, -0.35, -0.32])
    abl = {"sapa-b": {"all": {"trained": torch.tensor([0.9, 0.95]), "diff": diff},
                      "last": {"trained": torch.tensor([0.9, 0.95]), "diff": diff}}}
    table, texts = cmp.ablation_texts(abl, {"sapa-b": "SAPA-B"})
    assert table[1][0][:2] == ["SAPA-B", "92.5"] and texts["abl_sapab_all"].startswith("-32.3")
    assert set(texts) == set(cmp.ABLATION_KEYS) and texts["abl_fade_all"].startswith("n/a")
