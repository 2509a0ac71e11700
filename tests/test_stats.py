"""Paired statistics: t distribution against closed forms and tables, Holm by hand, pairing."""
import math
import random

import pytest

from sapa.lab import stats


def test_t_cdf_closed_forms():
    rng = random.Random()
    for _ in range(20):
        t = rng.uniform(-30, 30)
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
        # large df: the normal CDF
        assert stats.t_cdf(t / 10, 1e7) == pytest.approx(0.5 * (1 + math.erf(t / 10 / math.sqrt(2))), abs=1e-6)


def test_t_ppf_tables_and_inverse():
    # two-sided 95 % critical values from the tables
    table = {1: 12.706204736174707, 2: 4.302652729749464, 4: 2.7764451051977987, 9: 2.2621571628540993,
             30: 2.0422724563012373}
    for df, v in table.items():
        assert stats.t_ppf(0.975, df) == pytest.approx(v, rel=1e-9)
        assert stats.t_ppf(0.025, df) == pytest.approx(-v, rel=1e-9)
    q = random.uniform(0.01, 0.99)
    df = random.choice([1, 3, 7, 20])
    assert stats.t_cdf(stats.t_ppf(q, df), df) == pytest.approx(q, abs=1e-10)
    with pytest.raises(ValueError, match="q must"):
        stats.t_ppf(1.0, 3)


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # monotone: 0.9 < the running max 1.0
    assert stats.holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])
    assert stats.holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([1.5])


def test_paired_t_by_hand():
    d = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sd sqrt(2.5), se sqrt(0.5)
    r = stats.paired_t(d)
    assert r["mean"] == 3.0 and r["sd"] == pytest.approx(math.sqrt(2.5))
    assert r["t"] == pytest.approx(3 / math.sqrt(0.5))
    half = 2.7764451051977987 * math.sqrt(0.5)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((3 - half, 3 + half))
    assert r["p"] == pytest.approx(2 * (1 - stats.t_cdf(3 / math.sqrt(0.5), 4)))
    assert 0.01 < r["p"] < 0.02  # t = 4.24 on 4 df
    assert stats.paired_t([0.2, 0.2, 0.2])["p"] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        stats.paired_t([1.0])


def test_paired_differences_pairs_by_seed():
    rng = random.Random()
    seeds = list(range(6))
    seed_effect = {s: rng.uniform(-0.2, 0.2) for s in seeds}  # shared by all upsamplers of a seed
    gain = {"bilinear": 0.0, "good": 0.03, "same": 0.0}
    noise = {(u, s): rng.uniform(-0.002, 0.002) for u in gain for s in seeds}
    rows = [dict(setting=u, seed=s, miou=0.5 + seed_effect[s] + gain[u] + noise[(u, s)]) for u in gain for s in seeds]
    rng.shuffle(rows)
    out = {r["setting"]: r for r in stats.paired_differences(rows, "miou")}
    assert set(out) == {"good", "same"}
    diffs = [gain["good"] + noise[("good", s)] - noise[("bilinear", s)] for s in seeds]
    assert out["good"]["mean"] == pytest.approx(sum(diffs) / 6)
    # the seed effect (spread 0.4) cancels in the pairs: the interval is narrow and excludes 0
    assert out["good"]["ci_high"] - out["good"]["ci_low"] < 0.01
    assert out["good"]["significant"] and out["good"]["ci_low_adj"] > 0
    assert out["good"]["ci_low_adj"] <= out["good"]["ci_low"]  # Bonferroni interval is wider
    assert out["good"]["p_holm"] == pytest.approx(stats.holm([out["good"]["p"], out["same"]["p"]])[0])
    assert abs(out["same"]["mean"]) <= 0.004  # |noise difference| <= 0.004 for every seed


def test_paired_differences_errors():
    rows = [dict(setting="a", seed=0, miou=0.1), dict(setting="a", seed=1, miou=0.2),
            dict(setting="bilinear", seed=0, miou=0.1)]
    with pytest.raises(ValueError, match="shares 1"):
        stats.paired_differences(rows, "miou")
    with pytest.raises(ValueError, match="baseline 'nearest'"):
        stats.paired_differences(rows, "miou", baseline="nearest")
    with pytest.raises(ValueError, match="two rows"):
        stats.paired_differences(rows + [dict(setting="a", seed=0, miou=0.3)], "miou")


def test_complete_seeds_verdict_and_description():
    rows = [dict(setting=s, seed=k, m=v) for s, k, v in
            [("bilinear", 0, .5), ("bilinear", 1, .6), ("bilinear", 2, .7), ("a", 0, .6), ("a", 1, .7), ("a", 2, .81),
             ("b", 0, .5), ("b", 1, .61)]]
    assert stats.complete_seeds(rows, ["bilinear", "a", "b"]) == [0, 1]
    assert stats.complete_seeds(rows, ["bilinear", "a"]) == [0, 1, 2]
    assert stats.complete_seeds(rows, ["bilinear", "zzz"]) == []
    res = {r["setting"]: r for r in stats.paired_differences(rows, "m", settings=["a"])}
    assert res["a"]["mean"] == pytest.approx(0.1033333333)
    # differences +0.10, +0.10, +0.11: t = 31 on 2 degrees of freedom, two-sided p = 0.001
    assert res["a"]["p_holm"] == pytest.approx(0.00104, abs=5e-5) and stats.verdict(res["a"]) == "higher"
    noisy = rows[:3] + [dict(setting="c", seed=k, m=v) for k, v in ((0, .6), (1, .5), (2, .72))]
    (c,) = stats.paired_differences(noisy, "m", settings=["c"])  # +0.10, -0.10, +0.02: p = 0.8
    assert c["p_holm"] > 0.5 and stats.verdict(c) == "unresolved"
    assert stats.verdict(dict(res["a"], p_holm=0.01, mean=-0.1)) == "lower"
    assert stats.verdict(dict(res["a"], p_holm=0.2)) == "unresolved"
    text = stats.describe_difference(res["a"])
    assert text.startswith("+10.3 points (95 % CI ") and text.endswith("n = 3)") and "Holm p" in text


def test_too_close_to_call():
    rows = [dict(setting=s, seed=k, m=v + 0.01 * k) for k in range(4) for s, v in
            [("x", 0.5), ("y", 0.5), ("z", 0.9)]]
    out = stats.too_close_to_call(rows, "m", ["x", "y", "z"])
    assert out["seeds"] == [0, 1, 2, 3] and len(out["pairs"]) == 3
    assert {(r["a"], r["b"]) for r in out["resolved"]} == {("x", "z"), ("y", "z")}
    assert not out["all_unresolved"]
    with pytest.raises(ValueError, match="need >= 2"):
        stats.too_close_to_call(rows[:3], "m", ["x", "y"])
