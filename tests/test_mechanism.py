"""The mechanism experiment: problem construction, scores, fitting, kernels, resumable CSV."""
import dataclasses
import random

import pytest
import torch

from sapa.lab import mechanism as M

CFG = dataclasses.replace(M.PROFILES["quick"], size=16, n_train=2, n_test=3, max_steps=15, patience=5)


def test_problem_construction():
    seed = random.randrange(100)
    p0 = M.make_problem(3, 0.0, seed, CFG)
    p2 = M.make_problem(3, 2.0, seed, CFG)
    assert p0["T"].shape == (3, CFG.dim, 16, 16) and p0["X"].shape == (3, CFG.dim, 8, 8)
    assert p0["labels"].shape == (3, 16, 16)
    torch.testing.assert_close(p0["E"].norm(dim=1), torch.ones(CFG.num_classes))
    torch.testing.assert_close(p0["T"], p0["E"][p0["labels"]].permute(0, 3, 1, 2))
    # the encoder is not the answer: a random linear map of it (same for every sigma), plus noise
    assert (p0["Y"] - p0["T"]).abs().max() > 0.1
    torch.testing.assert_close(p0["Y"], torch.einsum("ij,njhw->nihw", p0["A"], p0["T"]), atol=1e-5, rtol=1e-5)
    noise = (p2["Y"] - p0["Y"]) / 2.0
    assert 0.5 < float(noise.std() * CFG.dim ** 0.5) < 1.5
    torch.testing.assert_close(p2["X"], p0["X"])  # sigma changes only the encoder
    test = M.make_problem(3, 0.0, seed, CFG, "test")
    assert not torch.equal(test["labels"], p0["labels"])
    torch.testing.assert_close(test["E"], p0["E"])
    with pytest.raises(ValueError, match="sigma"):
        M.make_problem(2, -1.0, 0, CFG)


def test_evaluate_by_hand():
    p = M.make_problem(2, 0.0, 0, CFG, "test")
    s = M.evaluate(p["T"].clone(), p)
    assert s == {"region_error": 0.0, "boundary_acc": 1.0, "interior_acc": 1.0}
    inner = M._interior(p["labels"])
    out = p["T"].clone()
    wrong = (p["labels"] + 1) % CFG.num_classes
    bnd = ~inner
    k = int(bnd.sum()) // 2
    idx = bnd.nonzero()[:k]  # half the boundary pixels get another class's embedding
    for n, i, j in idx.tolist():
        out[n, :, i, j] = p["E"][wrong[n, i, j]]
    s = M.evaluate(out, p)
    assert s["boundary_acc"] == pytest.approx(1 - k / int(bnd.sum()))
    assert s["region_error"] == 0.0 and s["interior_acc"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        M.evaluate(out[:, :3], p)


def test_fit_reduces_the_loss_and_counts_steps(one_thread):
    p = M.make_problem(2, 0.0, 1, CFG)
    up, info = M.fit_upsampler("bilinear", p, CFG)
    assert info["params"] == 0 and info["steps"] == 0 and info["converged"]
    import sapa

    torch.manual_seed(0)
    with torch.no_grad():
        before = float(torch.nn.functional.mse_loss(sapa.build_upsampler("sapa-b", CFG.dim, guide_channels=CFG.dim)(p["X"], p["Y"]), p["T"]))
    up, info = M.fit_upsampler("sapa-b", p, CFG, seed=0)
    assert 0 < info["steps"] <= CFG.max_steps and info["train_loss"] < before


def test_kernel_maps(one_thread):
    import sapa

    p = M.make_problem(2, 0.0, 2, CFG, "test")
    assert M.kernel_maps(sapa.build_upsampler("bilinear", CFG.dim), p) is None
    carafe = sapa.build_upsampler("carafe", CFG.dim)  # at init: near-uniform kernels
    km = M.kernel_maps(carafe, p)
    K = km["kernel_size"]
    assert km["kernels"].shape == (K * K, 16, 16)
    torch.testing.assert_close(km["kernels"].sum(0), torch.ones(16, 16))
    # a uniform kernel's same-class mass is the fraction of same-class low-res neighbours
    # (zero padding counts as another class)
    low = torch.nn.functional.avg_pool2d(torch.nn.functional.one_hot(p["labels"][0], CFG.num_classes)
                                         .permute(2, 0, 1).double()[None], 2)[0].argmax(0)
    i, j = random.randrange(16), random.randrange(16)
    win = torch.nn.functional.pad(low, (2, 2, 2, 2), value=-1)[i // 2: i // 2 + 5, j // 2: j // 2 + 5]
    assert float(km["same_class_mass"][i, j]) == pytest.approx(float((win == p["labels"][0, i, j]).double().mean()), abs=2e-3)
    sb = M.kernel_maps(sapa.build_upsampler("sapa-b", CFG.dim, guide_channels=CFG.dim), p)
    assert sb is not None and 0 <= float(sb["same_class_mass"].min()) and float(sb["same_class_mass"].max()) <= 1 + 1e-5


def test_run_appends_resumes_and_keeps_other_settings(tmp_path, monkeypatch, one_thread):
    out = tmp_path / "m.csv"
    cfg = dataclasses.replace(CFG, upsamplers=("bilinear", "sapa-b"), sigmas=(0.0, 1.0), seeds=(0,), max_steps=5)
    rows = M.run(cfg, out, progress=False)
    assert [(r["upsampler"], r["sigma"]) for r in rows] == [("bilinear", 0.0), ("sapa-b", 0.0), ("bilinear", 1.0), ("sapa-b", 1.0)]
    assert all(0 <= r["boundary_acc"] <= 1 and r["region_error"] >= 0 for r in rows)
    real = M.fit_upsampler

    def no_fit(*a, **k):
        raise AssertionError("refitted a finished row")

    monkeypatch.setattr(M, "fit_upsampler", no_fit)
    assert len(M.run(cfg, out, progress=False)) == 4  # finished rows are skipped
    monkeypatch.setattr(M, "fit_upsampler", real)
    other = dataclasses.replace(cfg, max_steps=6, sigmas=(0.0,))
    new = M.run(other, out, progress=False)
    assert len(new) == 2 and len(M.read_rows(out)) == 6  # a changed setting appends, loses nothing
    summary = M.summarize(rows, "boundary_acc")
    assert set(summary) == {"bilinear", "sapa-b"} and set(summary["bilinear"]) == {0.0, 1.0}
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns"):
        M.run(cfg, tmp_path / "bad.csv", progress=False)


def test_cli_quick(tmp_path, one_thread):
    out = tmp_path / "q.csv"
    assert M.main(["--profile", "quick", "--out", str(out), "--upsamplers", "bilinear", "sapa-i",
                   "--sigmas", "0", "--no-progress", "--workers", "2"]) == 0
    import json

    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["command"].startswith("python -m sapa.lab.mechanism") and meta["seconds"] >= 0 and "CPU" in meta["machine"]
    rows = M.read_rows(out)
    assert sorted(r["upsampler"] for r in rows) == ["bilinear", "sapa-i"]
    assert all(r["fit_cpu_seconds"] >= 0 for r in rows) and "2 worker" in meta["machine"]
    with pytest.raises(SystemExit):
        M.main(["--out", str(out), "--upsamplers", "bicubic"])


def test_kernel_study(one_thread):
    cfg = dataclasses.replace(CFG, max_steps=3)
    out = M.kernel_study(("bilinear", "sapa-b", "carafe"), (0.0, 4.0), cfg)
    assert set(out) == {("sapa-b", 0.0), ("sapa-b", 4.0), ("carafe", 0.0), ("carafe", 4.0)}
    km = out[("sapa-b", 4.0)]
    assert km["same_class_mass"].shape == (CFG.size, CFG.size) and 0 <= km["scores"]["boundary_acc"] <= 1


def test_stored_rows_keeps_the_full_profile_only(tmp_path, monkeypatch):
    """mechanism.stored_rows: rows of the full profile's config only; a missing file says so."""
    import csv as _csv

    from sapa.lab import mechanism, results

    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    rows, status = mechanism.stored_rows()
    assert rows is None and "not there yet" in status and "sapa.lab.mechanism" in status
    full = mechanism._config_id(mechanism.PROFILES["full"])
    quick = mechanism._config_id(mechanism.PROFILES["quick"])
    assert full != quick
    with open(tmp_path / "mechanism.csv", "w", newline="") as f:
        w = _csv.DictWriter(f, fieldnames=mechanism.CSV_COLUMNS)
        w.writeheader()
        base = {k: "0" for k in mechanism.CSV_COLUMNS}
        for cid, seed in ((full, 0), (quick, 0), (full, 1)):
            w.writerow(dict(base, upsampler="sapa-b", sigma="0.5", seed=seed, converged="True", config_id=cid))
    rows, status = mechanism.stored_rows()
    assert [(r["seed"], r["config_id"]) for r in rows] == [(0, full), (1, full)]
    assert "2 of the 225 planned fits" in status and "1 row of other settings" in status


# --------------------------------------------------------------------------------------
# the chapter's analysis of the stored result, on fake rows (no stored file, no fitting)
# --------------------------------------------------------------------------------------
import json as _json

FULL_CONFIG = _json.dumps(M.PROFILES["full"].identity(), sort_keys=True)
FULL_ID = M._config_id(M.PROFILES["full"])


def fake_rows(cells, values=None, jitter=0.0, seed=0, **extra):
    """Rows for (upsampler, sigma, seed) cells; values: {upsampler: (region_error, boundary_acc)}
    (default 0.01, 0.8), each seed's value moved by +-jitter (fixed random draw)."""
    g = random.Random(seed)
    values = values or {}
    out = []
    for u, s, sd in cells:
        reg, acc = values.get(u, (0.01, 0.8))
        out.append(dict(upsampler=u, sigma=float(s), seed=sd, region_error=reg + jitter * g.uniform(-1, 1) * reg,
                        boundary_acc=acc + jitter * g.uniform(-1, 1) * 0.01, interior_acc=1.0, train_loss=0.0,
                        steps=extra.get("steps", 100), converged=extra.get("converged", True),
                        params=0 if u in ("nearest", "bilinear") else 10, fit_seconds=1.0,
                        fit_cpu_seconds=extra.get("cpu", 2.0), config_id=FULL_ID, config=FULL_CONFIG))
    return out


def test_plural_join_and_format_value():
    assert M.plural(1, "seed") == "1 seed" and M.plural(2, "seed") == "2 seeds" and M.plural(0, "seed") == "0 seeds"
    assert M.plural(2, "process", "processes") == "2 processes"
    with pytest.raises(TypeError):
        M.plural(1.0, "seed")
    assert M.join_names([]) == "none" and M.join_names(["A"]) == "A" and M.join_names(["A", "B", "C"]) == "A, B and C"
    assert M.format_value(0.04) == "0.04"  # never "0.0" for a nonzero value
    assert M.format_value(-0.04, signed=True) == "-0.04"
    assert M.format_value(-0.00001) == "> -0.0001" and M.format_value(0.00001) == "< 0.0001"
    assert M.format_value(0.0, signed=True) == "0.0" and M.format_value(-0.0) == "0.0"
    assert M.format_value(1.26, 1, signed=True) == "+1.3" and M.format_value(-12.34, 1) == "-12.3"
    x = random.Random(3).uniform(-5, 5)
    assert float(M.format_value(x, 2)) == pytest.approx(x, abs=0.006)
    for v in (0.04, -0.04, 0.004, -0.0004, 0.049):
        t = M.format_value(v, 1, signed=True)
        assert t not in ("0.0", "+0.0", "-0.0") and "(s)" not in t
    with pytest.raises(ValueError, match="value"):
        M.format_value(float("nan"))
    assert "one complete seed" in M.result_phrase(1) and "over 3 seeds" in M.result_phrase(3)
    assert "once it is there" in M.result_phrase(0, available=False) and "once a seed" in M.result_phrase(0)
    with pytest.raises(ValueError, match="n_seeds"):
        M.result_phrase(-1)
    assert M.format_duration(45) == "45 s" and M.format_duration(1021) == "17 min" and M.format_duration(3 * 3600) == "3.0 h"


def test_complete_seeds_and_selection_never_mix_seed_sets():
    ups, sig = ("bilinear", "sapa-b", "fade"), (0.0, 4.0)
    cells = [(u, s, 0) for u in ups for s in sig if (u, s) != ("fade", 4.0)]  # seed 0: FADE missing at sigma 4
    cells += [(u, 0.0, 1) for u in ups]  # seed 1: only sigma 0
    rows = fake_rows(cells)
    assert M.complete_seeds(rows, ups, sig) == []
    assert M.complete_seeds(rows, ("bilinear", "sapa-b"), sig) == [0]
    assert M.complete_seeds(rows, ups, (0.0,)) == [0, 1]
    assert M.complete_seeds(rows, (), sig) == []
    sel = M.select_complete(rows, ups, sig)
    assert sel["seeds"] == [0] and sel["upsamplers"] == ["bilinear", "sapa-b"] and sel["left_out"] == ["fade"]
    # every shown (upsampler, sigma) has exactly the chosen seeds: no mean over another seed set
    per = {}
    for r in sel["rows"]:
        per.setdefault((r["upsampler"], r["sigma"]), []).append(r["seed"])
    assert set(per) == {(u, s) for u in ("bilinear", "sapa-b") for s in sig} and all(v == [0] for v in per.values())
    assert "FADE" in M.selection_sentence(sel, {"fade": "FADE"}) and "seed 0" in M.selection_sentence(sel)
    # once two seeds are complete for all, all upsamplers over both seeds
    rows2 = fake_rows([(u, s, sd) for u in ups for s in sig for sd in (0, 1)] + [("bilinear", 0.0, 2)])
    sel2 = M.select_complete(rows2, ups, sig)
    assert sel2["seeds"] == [0, 1] and sel2["left_out"] == [] and len(sel2["rows"]) == 12
    empty = M.select_complete([], ups, sig)
    assert empty["seeds"] == [] and empty["rows"] == [] and empty["left_out"] == list(ups)
    assert M.selection_sentence(empty) == "No stored fit can be shown yet."
    with pytest.raises(ValueError, match="distinct"):
        M.select_complete(rows, ("bilinear", "bilinear"), sig)


def test_fit_summary_convergence_and_cost():
    rows = fake_rows([("bilinear", 0.0, 0), ("sapa-b", 0.0, 0), ("carafe", 0.0, 0)], cpu=3.0)
    rows += fake_rows([("carafe", 4.0, 0), ("carafe", 2.0, 0)], converged=False, steps=500, cpu=60.0)
    s = M.fit_summary(rows)
    assert s["fits"] == 5 and s["fitted"] == 4 and s["converged"] == 2 and s["share"] == pytest.approx(0.5)
    assert s["stopped"] == {"carafe": 2} and s["max_steps"] == [500]
    assert s["cpu_seconds"] == pytest.approx(129.0) and s["cpu_by_upsampler"]["carafe"] == pytest.approx(41.0)
    text = M.convergence_sentence(s, {"carafe": "CARAFE"})
    assert "4 stored fits with parameters, 2 (50 %) converged" in text and "limit of 500 Adam steps" in text
    assert "CARAFE 2" in text and "(s)" not in text
    cost = M.cost_sentence(s, {"carafe": "CARAFE"}, planned={"bilinear": 3, "sapa-b": 3, "carafe": 3})
    assert "2 min of CPU time in all" in cost and "CARAFE" in cost and "all 9 planned fits" in cost
    assert "planned" not in M.cost_sentence(s, planned={"fade": 3})  # no stored fit of FADE: no estimate
    done = M.fit_summary(rows[:3])
    assert "none stopped" in M.convergence_sentence(done)
    assert M.fit_summary([])["share"] is None and "No stored fit" in M.convergence_sentence(M.fit_summary([]))


def test_flat_upsamplers():
    sig = (0.0, 1.0, 4.0)
    rows = fake_rows([("bilinear", s, 0) for s in sig], {"bilinear": (0.0064, 0.87)})
    rows += [dict(r, upsampler="sapa-i", region_error=0.005 * (1 + r["sigma"])) for r in fake_rows([("x", s, 0) for s in sig])]
    rows += [dict(r, upsampler="carafe", region_error=0.0112 * (1 + 0.001 * r["sigma"])) for r in fake_rows([("x", s, 0) for s in sig])]
    assert M.flat_upsamplers(rows, ("bilinear", "sapa-i", "carafe", "fade"), sig) == ["bilinear", "carafe"]
    with pytest.raises(ValueError, match="sigmas"):
        M.flat_upsamplers(rows, ("bilinear",), ())


def _three_seed_problem():
    """bilinear baseline; good: smoother and sharper at every sigma; bad: worse at sigma 4 only;
    same: equal to bilinear up to noise."""
    sig, seeds = (0.0, 4.0), (0, 1, 2)
    rows = []
    for sd in seeds:
        for s in sig:
            base = fake_rows([("bilinear", s, sd)], {"bilinear": (0.0064, 0.871)}, jitter=0.02, seed=sd)
            good = fake_rows([("sapa-g", s, sd)], {"sapa-g": (0.001, 0.99)}, jitter=0.02, seed=10 + sd)
            bad_v = (0.064, 0.70) if s == 4.0 else (0.001, 0.99)
            bad = fake_rows([("sapa-b", s, sd)], {"sapa-b": bad_v}, jitter=0.02, seed=20 + sd)
            same = fake_rows([("nearest", s, sd)], {"nearest": (0.0064, 0.871)}, jitter=0.5, seed=30 + sd + int(s))
            rows += base + good + bad + same
    return rows, ("bilinear", "sapa-g", "sapa-b", "nearest"), sig


def test_smooth_and_sharp_and_the_high_noise_verdict():
    rows, ups, sig = _three_seed_problem()
    names = {"bilinear": "Bilinear", "sapa-g": "SAPA-G", "sapa-b": "SAPA-B", "nearest": "Nearest"}
    out = M.smooth_and_sharp(rows, ups, sig)
    assert out["n"] == 3 and out["family"] == ["sapa-g", "sapa-b", "nearest"]
    assert out["both"] == {0.0: ["sapa-g", "sapa-b"], 4.0: ["sapa-g"]} and out["always"] == ["sapa-g"]
    res = out["results"][4.0]
    assert res["boundary_acc"]["sapa-b"]["mean"] == pytest.approx(0.70 - 0.871, abs=0.01)
    text = M.smooth_sharp_text(out, names)
    assert "* σ = 4: SAPA-G" in text and "3 seeds" in text and "At every noise level: SAPA-G." in text
    verdict = M.high_noise_verdict(rows, ups, 4.0, names=names)
    assert "SAPA-B" in verdict and "CI" in verdict and "SAPA-G (" not in verdict and "Nearest (" not in verdict
    assert "region error +5.8 points" in verdict  # (0.064 - 0.0064) in percentage points
    # one seed: no interval, the values and the ratio instead
    one = [r for r in rows if r["seed"] == 0]
    assert M.smooth_and_sharp(one, ups, sig)["always"] is None
    assert "share one complete seed (seed 0)" in M.smooth_sharp_text(M.smooth_and_sharp(one, ups, sig))
    assert "seed 0, the one seed shown" in M.high_noise_verdict(one, ups, 4.0)
    v1 = M.high_noise_verdict(one, ups, 4.0, names=names)
    assert "no interval" in v1 and "SAPA-B" in v1 and "times as large" in v1 and "SAPA-G (" not in v1
    assert "no stored fit" in M.high_noise_verdict([], ups, 4.0)
    assert "no seed is complete" in M.smooth_sharp_text(M.smooth_and_sharp([], ups, sig))
    # nothing worse: says so
    good_only = [r for r in rows if r["upsampler"] in ("bilinear", "sapa-g")]
    assert "no upsampler is worse" in M.high_noise_verdict(good_only, ("bilinear", "sapa-g"), 4.0)
    with pytest.raises(ValueError, match="sigma"):
        M.compare_to_baseline(rows, 2.0, ups)


def test_score_table_formats_means_and_spreads():
    rows = fake_rows([("bilinear", 4.0, sd) for sd in (0, 1)], {"bilinear": (0.0064, 0.871)})
    rows[1]["region_error"] = 0.0068  # sd of 0.0064 and 0.0068, in %: 0.028 -> never printed as 0.00
    header, body, caption = M.score_table(rows, ("bilinear", "fade"), (4.0,), {"bilinear": "Bilinear"})
    assert header == ["upsampler", "region err. σ=4", "bnd. acc. σ=4"]
    # a true zero spread prints as 0.0, a nonzero one never does
    assert body[0] == ["Bilinear", "0.66\u00a0±\u00a00.03", "87.1\u00a0±\u00a00.0"]
    assert body[1] == ["fade", "–", "–"] and "seeds 0 and 1" in caption
    _, one, caption = M.score_table(rows[:1], ("bilinear",), (4.0,))
    assert one == [["bilinear", "0.64", "87.1"]] and caption.startswith("seed 0")


def test_meta_and_status_sentences():
    meta = {"command": "python -m sapa.lab.mechanism --out book/results/mechanism.csv --workers 2", "seconds": 5400.0,
            "date": "2026-12-07 20:00 UTC", "machine": "2 CPU cores (x86_64), torch 2.13, 1 thread(s), "
            "2 worker process(es)", "invocations": [{"seconds": 1.0}, {"seconds": 2.0, "interrupted": True}]}
    text = M.meta_sentence(meta)
    assert "2 invocations" in text and "1.5 h of wall time" in text and "1 thread," in text
    assert "2 worker processes" in text and "(s)" not in text and "(es)" not in text and "interrupted" in text
    with pytest.raises(ValueError, match="meta"):
        M.meta_sentence({"seconds": 1})
    rows = fake_rows([(u, s, 0) for u in M.UPSAMPLERS for s in M.PROFILES["full"].sigmas])
    st = M.status_sentence(rows)
    assert "15 upsamplers" in st and "1 seed is complete" in st and ": 0." in st and "adds the missing fits" in st
    st = M.status_sentence(rows[:-1] + fake_rows([(u, s, 1) for u in M.UPSAMPLERS for s in M.PROFILES["full"].sigmas]))
    assert "1 seed is complete" in st and ": 1." in st
    assert "no seed is complete" in M.status_sentence([])
    every = fake_rows([(u, s, sd) for u in M.UPSAMPLERS for s in M.PROFILES["full"].sigmas for sd in (0, 1, 2)])
    st = M.status_sentence(every)
    assert "3 seeds are complete" in st and "0, 1 and 2." in st and "adds" not in st


def test_stored_meta_missing_present_and_download_failure(tmp_path, monkeypatch):
    from sapa.lab import results

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path / "res"))
    (tmp_path / "res").mkdir()
    meta, sentence = M.stored_meta()
    assert meta is None and "`mechanism.json`, is not there" in sentence and "python -m sapa.lab.mechanism" in sentence
    (tmp_path / "res" / "mechanism.json").write_text("{not json")
    assert M.stored_meta()[0] is None
    (tmp_path / "res" / "mechanism.json").write_text(_json.dumps({"command": "c", "seconds": 12.0}))
    meta, sentence = M.stored_meta()
    assert meta["seconds"] == 12.0 and "`c`" in sentence and "12 s of wall time" in sentence
    # no checkout and the download fails: the reason is named
    monkeypatch.delenv(results.ENV_VAR)
    monkeypatch.setattr(results, "results_dir", lambda start=None: None)

    def fail(*a, **k):
        raise results.StoredFileUnavailable("mechanism.json", "download", "offline", "https://example")

    monkeypatch.setattr(results, "stored_file", fail)
    meta, sentence = M.stored_meta()
    assert meta is None and "could not be downloaded" in sentence and "offline" in sentence


def test_kernel_mass_table_box_reference():
    cfg = dataclasses.replace(CFG, size=16)
    p = M.make_problem(2, 0.5, 4, cfg, "test")
    box = M.kernel_maps(M._Box(5), p, 0)
    sharp = dict(box, same_class_mass=torch.ones_like(box["same_class_mass"]))
    study = {("box", 0.5): dict(box, scores={"boundary_acc": 0.5}), ("box", 4.0): dict(box, scores={"boundary_acc": 0.4}),
             ("ideal", 0.5): dict(sharp, scores={"boundary_acc": 1.0}), ("ideal", 4.0): dict(box, scores={"boundary_acc": 0.5})}
    t = M.kernel_mass_table(study, ("box", "ideal"), (0.5, 4.0), p, names={"ideal": "Ideal"})
    edge = ~M._interior(p["labels"][:1])[0]
    assert t["box"] == pytest.approx(float(box["same_class_mass"][edge].mean()))
    assert t["mass"][("box", 0.5)] == pytest.approx(t["box"]) and t["mass"][("ideal", 0.5)] == pytest.approx(1.0)
    assert t["box"] < 0.95 and t["best"] == ["ideal"]
    assert t["change"]["box"].startswith("stays at") and t["change"]["ideal"] == f"falls from 1.00 to {t['box']:.2f}"
    assert t["header"][1] == "mass σ=0.5" and t["body"][1][0] == "Ideal" and t["body"][-1][0] == "5 x 5 box (reference)"
    with pytest.raises(ValueError, match="missing"):
        M.kernel_mass_table(study, ("box", "fade"), (0.5,), p)


def test_figures_are_stacked_and_labelled():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, ups, sig = _three_seed_problem()
    fig = M.plot_stored(rows, {"fixed": ["nearest"], "SAPA": ["sapa-b", "sapa-g"]}, names={"bilinear": "Bilinear"})
    axes = [a for a in fig.axes if a.get_ylabel()]
    assert len(axes) == 4 and fig.axes[0].get_yscale() == "log"
    legend = fig.axes[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["Bilinear", "nearest"]
    plt.close(fig)
    p = M.make_problem(1, 0.5, 0, CFG, "test")
    km = M.kernel_maps(M._Box(5), p, 0)
    study = {(u, s): km for u in ("a", "b") for s in (0.5, 4.0)}
    fig = M.plot_kernel_study(study, ("a", "b"), (0.5, 4.0), "same_class_mass")
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "same-class mass" and len(fig.axes) == 5
    plt.close(fig)
    with pytest.raises(ValueError, match="quantity"):
        M.plot_kernel_study(study, ("a",), (0.5,), "mean")
