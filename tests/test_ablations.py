"""sapa.lab.ablations: Table 6's groups, within-group paired differences + Holm, the sentences.

Fake table6-shaped rows are built from sapa.lab.sweep.grid("table6") with planted effects; no
stored file is needed.
"""
import math
import random
import statistics

import pytest

from sapa.lab import ablations as A
from sapa.lab import sweep
from sapa.lab.stats import holm

DEFAULTS = {"normalization": "exp", "kernel size": "5", "embedding dim": "32", "similarity": "B",
            "padding": "zeros"}
# planted effects on mIoU (fractions): ReLU clearly worse, SAPA-G clearly better, K = 3 better
# (against the paper's -0.1), everything else noise
EFFECT = {("normalization", "relu"): -0.03, ("similarity", "G"): 0.02, ("kernel size", "3"): 0.015}


def fake_rows(seeds=(0, 1, 2, 3, 4), effect=EFFECT, seed=0):
    """table6-shaped rows: one per (group, setting, seed); the default setting is one run per
    seed, reported under every group with the same numbers (as the sweep writes it)."""
    rng = random.Random(seed)
    base = {k: (0.80 + 0.02 * rng.random(), 0.50 + 0.02 * rng.random()) for k in seeds}
    rows = []
    for c in sweep.grid("table6"):
        for k in seeds:
            m, b = base[k]
            if c["setting"] != DEFAULTS[c["group"]]:
                e = effect.get((c["group"], c["setting"]), 0.0)
                m, b = m + e + rng.gauss(0, 0.002), b + e + rng.gauss(0, 0.002)
            rows.append(dict(group=c["group"], setting=c["setting"], upsampler=c["upsampler"], seed=k,
                             miou=m, boundary_iou=b))
    return rows


def test_groups_and_defaults_follow_the_grid():
    g = A.groups("table6")
    assert list(g) == ["normalization", "kernel size", "embedding dim", "similarity", "padding"]
    assert g["kernel size"] == ["3", "5", "7"] and g["similarity"] == ["I", "B", "P", "G"]
    assert A.default_settings("table6") == DEFAULTS
    assert "padding" not in A.groups("ablations")
    with pytest.raises(ValueError, match="table6"):
        A.groups("main")
    assert A.setting_name("kernel size", "7") == "K = 7"
    assert A.setting_name("similarity", "G") == "SAPA-G"
    assert A.setting_name("normalization", "relu") == "ReLU"


def test_no_rows_gives_one_paragraph_with_the_command():
    res = A.analyse(None)
    assert list(res) == list(DEFAULTS)
    assert all(G["results"] is None and G["seeds"] == [] for G in res.values())
    status = "The stored file `table6.csv` could not be downloaded (timeout). This command writes it: `x`."
    text = A.status_paragraph(res, status)
    assert text.endswith(status) and "Holm" in text and "\n" not in text
    assert A.reading(res) == ""
    assert A.difference_figure(res) is None
    assert "(s)" not in text and "n/a" not in text


def test_runs_without_a_complete_seed_say_so():
    """A partly run sweep (a few settings of seed 0, as the stored file fills up): every group
    still waits, and the paragraph says why nothing is shown."""
    rows = [r for r in fake_rows(seeds=(0,)) if r["setting"] in ("relu", "3", "16")]
    res = A.analyse(rows)
    assert all(not G["rows"] and G["results"] is None for G in res.values())
    assert sum(G["runs"] for G in res.values()) == len(rows)
    text = A.status_paragraph(res, "The stored `table6.csv` holds 3 runs of the stored settings.")
    assert "No group has a complete seed yet" in text and text.endswith("a group has two.")
    assert "No group" not in A.status_paragraph(A.analyse(None), "x.")


def test_within_group_paired_differences_and_holm_family():
    rows = fake_rows()
    res = A.analyse(rows)
    for g, G in res.items():
        assert G["seeds"] == [0, 1, 2, 3, 4] and G["default"] == DEFAULTS[g]
        others = [s for s in A.groups()[g] if s != DEFAULTS[g]]
        for m in A.METRICS:
            got = G["results"][m]
            assert [r["setting"] for r in got] == others
            assert all(r["baseline"] == DEFAULTS[g] and r["n"] == 5 for r in got)
            # Holm runs over this group's comparisons only
            assert [r["p_holm"] for r in got] == pytest.approx(holm([r["p"] for r in got]), rel=1e-12)
            # each mean is the mean per-seed difference within the group
            for r in got:
                d = [next(x[m] for x in rows if x["group"] == g and x["setting"] == r["setting"]
                          and x["seed"] == k)
                     - next(x[m] for x in rows if x["group"] == g and x["setting"] == DEFAULTS[g]
                            and x["seed"] == k) for k in range(5)]
                assert r["mean"] == pytest.approx(statistics.fmean(d), abs=1e-12)
    # a family over all 13 comparisons would adjust more: the group family is smaller
    pad = res["padding"]["results"]["miou"]
    assert len(pad) == 1 and pad[0]["p_holm"] == pytest.approx(pad[0]["p"])
    sig = {(g, r["setting"]) for g, G in res.items() for r in G["results"]["miou"] if r["significant"]}
    assert sig == set(EFFECT)


def test_incomplete_seeds_are_left_out_per_group():
    rows = [r for r in fake_rows()
            if not (r["group"] == "kernel size" and r["setting"] == "7" and r["seed"] == 4)
            and not (r["group"] == "padding" and r["seed"] > 0)]
    res = A.analyse(rows)
    assert res["kernel size"]["seeds"] == [0, 1, 2, 3]
    assert {r["seed"] for r in res["kernel size"]["rows"]} == {0, 1, 2, 3}
    assert res["normalization"]["seeds"] == [0, 1, 2, 3, 4]
    assert res["padding"]["seeds"] == [0] and res["padding"]["results"] is None
    text = A.status_paragraph(res, "The stored `table6.csv` has 60 rows.")
    assert "kernel size K: 4" in text and "padding: 1" in text
    assert "padding has no comparison yet" in text
    assert A.verdict_sentence(res["padding"]) == "No comparison yet (1 complete seed; a paired interval needs two)."
    assert "**Padding.**" not in A.reading(res)


def test_sentences_are_computed_from_the_intervals():
    res = A.analyse(fake_rows())
    norm = A.verdict_sentence(res["normalization"])
    assert norm.startswith("On mIoU, worse than the default: ReLU, \u22123.")
    assert "not resolved from the default: none, sigmoid and softplus (their intervals" in norm
    assert norm.endswith(" points from zero).")
    sim = A.verdict_sentence(res["similarity"])
    assert "better than the default: SAPA-G, +1.9 points (95 % CI +1." in sim
    text = A.reading(res)
    paragraphs = text.split("\n\n")
    assert [p.split("**")[1] for p in paragraphs] == [
        "Normalisation h", "Kernel size K", "Embedding dimension d", "Similarity function", "Padding"]
    assert paragraphs[3].startswith("**Similarity function** (default SAPA-B, 5 paired seeds). On mIoU,")
    assert paragraphs[0].endswith("The resolved difference on mIoU has the sign of the paper's.")
    # K = 3 better here, worse (-0.1) in the paper
    assert paragraphs[1].endswith("The resolved difference on mIoU, K = 3, has the opposite sign of the "
                                  "paper's (paper \u22120.1 points).")
    assert "neither confirms nor contradicts" in paragraphs[2]
    # two resolved, one against the paper's sign, one where the paper shows none
    two = A.analyse(fake_rows(effect={**EFFECT, ("similarity", "P"): -0.02, ("similarity", "I"): 0.02}))
    assert A.reading(two).split("\n\n")[3].endswith(
        "Of the 3 resolved differences on mIoU, 1 has the paper's sign; SAPA-I (paper \u22120.1) has the "
        "opposite sign; the paper shows no difference for SAPA-P (paper differences in points, one run each).")
    assert "The paper has no rows for this group." in paragraphs[4]
    for bad in ("(s)", "-0.0", "\u22120.0 ", "+0.0 ", "sapa-", "miou"):
        assert bad not in text


def test_group_table_uses_display_names_and_marks_holm():
    res = A.analyse(fake_rows())
    header, rows, caption = A.group_table(res["similarity"])
    assert header == ["setting", "mIoU", "Δ mIoU [95 % CI]", "Δ boundary IoU [95 % CI]", "paper mIoU"]
    assert [r[0] for r in rows] == ["SAPA-B (default)", "SAPA-I", "SAPA-P", "SAPA-G"]
    assert rows[0][2:4] == ["–", "–"] and rows[0][4] == "43.2" and rows[3][4] == "44.4"
    assert rows[3][2].endswith("✓") and not rows[1][2].endswith("✓")
    assert caption.startswith("Similarity function: 5 paired seeds")
    h2, r2, _ = A.group_table(res["padding"])
    assert r2[1][-1] == "–"
    with pytest.raises(ValueError, match="no results"):
        A.group_table(A.analyse(None)["padding"])


def test_fmt_signed_never_prints_a_nonzero_value_as_zero():
    assert A.fmt_signed(1.234) == "+1.2"
    assert A.fmt_signed(-1.25) == "\u22121.2"
    assert A.fmt_signed(0.04) == "+0.04"
    assert A.fmt_signed(-0.04) == "\u22120.04"
    assert A.fmt_signed(0.0004) == "+0.0004"
    assert A.fmt_signed(0.0) == "0.0"
    assert A.fmt_signed(math.nan) == "n/a"
    r = dict(mean=-0.0004, ci_low=-0.001, ci_high=0.0002, p_holm=0.0004, alpha=0.05)
    assert A.describe(r) == "\u22120.04 points (95 % CI \u22120.10 to +0.02, Holm p < 0.001)"  # the mean's decimals
    with pytest.raises(ValueError, match="mean"):
        A.describe({"p": 0.1})


def test_bad_input():
    with pytest.raises(TypeError, match="rows"):
        A.analyse("table6.csv")
    with pytest.raises(ValueError, match="boundary_iou"):
        A.analyse([dict(group="padding", setting="zeros", seed=0, miou=0.5)])
    rows = fake_rows(seeds=(0, 1))
    rows.append(dict(rows[0]))  # a seed twice in one setting
    with pytest.raises(ValueError, match="two rows"):
        A.analyse(rows)
    with pytest.raises(ValueError, match="analyse"):
        A.status_paragraph({}, "x")


def test_difference_figure_one_panel_per_ready_group():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in fake_rows(seeds=(0, 1, 2)) if not (r["group"] == "padding" and r["seed"] > 0)]
    fig = A.difference_figure(A.analyse(rows))
    try:
        axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
        assert len(axes) == 4 and fig.get_figwidth() <= 4.5
        assert axes[0].get_title(loc="left") == "normalisation h (default exp)"
        assert [t.get_text() for t in axes[3].get_yticklabels()] == ["SAPA-G", "SAPA-P", "SAPA-I"]
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["seed 0", "seed 1", "seed 2"]
        with pytest.raises(ValueError, match="metric"):
            A.difference_figure(A.analyse(rows), metric="pixel_acc")
    finally:
        plt.close("all")
