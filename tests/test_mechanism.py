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
