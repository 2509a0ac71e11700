"""The sweep trains each configuration once, resumes, and writes the documented CSV."""
import csv
import math
from pathlib import Path

import pytest

from sapa.lab import sweep

TINY = dict(epochs=1, size=32, train_samples=16, val_samples=8, batch_size=8, width=8, max_steps_per_epoch=1)


def test_grids_cover_the_paper():
    seg = [c["upsampler"] for c in sweep.grid("segmentation")]
    for name in ("nearest", "bilinear", "deconv", "pixelshuffle", "carafe", "indexnet-hin", "a2u", "fade",
                 "dysample", "sapa-i", "sapa-b", "sapa-g", "sapa-d"):
        assert name in seg
    abl = sweep.grid("ablations")
    groups = {}
    for c in abl:
        groups.setdefault(c["group"], []).append(c["setting"])
    assert groups == {
        "normalization": ["none", "exp", "relu", "sigmoid", "softplus"],
        "kernel size": ["3", "5", "7"],
        "embedding dim": ["16", "32", "64", "128"],
        "similarity": ["I", "B", "P", "G"],
    }
    # the defaults of SAPA-B are one run, shared by four ablation rows
    names = {sweep._run_name(c["upsampler"], c["options"], 0) for c in abl}
    assert len(names) == len(abl) - 3


def test_sweep_writes_csv_and_resumes(tmp_path):
    out = tmp_path / "seg.csv"
    rows = sweep.run_sweep("segmentation", [0, 1], str(out), str(tmp_path / "runs"), workers=1,
                           train_overrides=TINY, upsamplers=["bilinear", "sapa-b"], progress=False)
    assert [(r["upsampler"], r["seed"]) for r in rows] == [("bilinear", 0), ("sapa-b", 0), ("bilinear", 1), ("sapa-b", 1)]  # seed-major
    back = sweep.read_csv(str(out))
    assert list(back[0]) == sweep.CSV_COLUMNS
    for r in back:
        assert 0.0 <= r["miou"] <= 1.0 and r["params"] > 0 and r["flops"] == 2 * r["macs"]
    sb = [r for r in back if r["upsampler"] == "sapa-b"][0]
    bl = [r for r in back if r["upsampler"] == "bilinear"][0]
    assert sb["upsampler_params"] > 0 and bl["upsampler_params"] == 0
    assert sb["params"] - bl["params"] == sb["upsampler_params"]
    # a second call finds the finished runs and reports the same numbers without training
    ckpts = sorted((tmp_path / "runs").glob("*/last.pt"))
    assert len(ckpts) == 4
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    again = sweep.run_sweep("segmentation", [0, 1], str(out), str(tmp_path / "runs"), workers=1,
                            train_overrides=TINY, upsamplers=["bilinear", "sapa-b"], progress=False)
    assert [r["miou"] for r in again] == [r["miou"] for r in rows]
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps  # nothing was retrained
    summary = sweep.summarize(back)
    assert [s["setting"] for s in summary] == ["bilinear", "sapa-b"]
    assert all(s["n"] == 2 and not math.isnan(s["miou_std"]) for s in summary)


# ---- resumable, append-only CSV; new grids; CLI ------------------------------------------------
import json  # noqa: E402


def test_new_grids():
    main = [c["upsampler"] for c in sweep.grid("main")]
    assert main[:15] == list(sweep.SEGMENTATION_UPSAMPLERS) and main[-1] == "bilinear+conv" and len(main) >= 14
    t6 = sweep.grid("table6")
    assert [c["setting"] for c in t6 if c["group"] == "padding"] == ["zeros", "ignore"]
    names = {sweep._run_name(c["upsampler"], c["options"], 0) for c in t6}
    assert len(names) == len(t6) - 4  # SAPA-B's defaults: one run for five rows
    with pytest.raises(ValueError, match="unknown grid"):
        sweep.grid("everything")


def test_sweep_appends_and_never_loses_rows(tmp_path, monkeypatch):
    out, runs = tmp_path / "s.csv", str(tmp_path / "runs")
    kw = dict(workers=1, upsamplers=["bilinear"], progress=False)
    first = sweep.run_sweep("main", [0], str(out), runs, train_overrides=TINY, **kw)
    assert len(first) == 1 and first[0]["config_id"] and first[0]["config_id"] in first[0]["run"]
    real = sweep._one_run

    def no_training(job):
        raise AssertionError(f"retrained {job['name']}")

    monkeypatch.setattr(sweep, "_one_run", no_training)
    again = sweep.run_sweep("main", [0], str(out), runs, train_overrides=TINY, **kw)
    assert again == first  # read back, not retrained
    monkeypatch.setattr(sweep, "_one_run", real)
    changed = sweep.run_sweep("main", [0], str(out), runs, train_overrides=dict(TINY, lr=1e-3), **kw)
    rows = sweep.read_csv(str(out))
    assert len(rows) == 2 and rows[0] == first[0]  # the old row is still there, unchanged
    assert changed[0]["config_id"] != first[0]["config_id"] and changed[0]["run"] != first[0]["run"]
    assert json.loads(changed[0]["config"])["lr"] == 1e-3


def test_failed_run_keeps_the_others_and_resumes(tmp_path, monkeypatch):
    out, runs = tmp_path / "s.csv", str(tmp_path / "runs")
    real = sweep._one_run

    def flaky(job):
        if job["train"]["upsampler"] == "nearest":
            raise RuntimeError("boom")
        return real(job)

    monkeypatch.setattr(sweep, "_one_run", flaky)
    with pytest.raises(RuntimeError, match="1 run"):
        sweep.run_sweep("main", [0], str(out), runs, workers=1, train_overrides=TINY,
                        upsamplers=["nearest", "bilinear"], progress=False)
    assert [r["upsampler"] for r in sweep.read_csv(str(out))] == ["bilinear"]
    monkeypatch.setattr(sweep, "_one_run", real)
    rows = sweep.run_sweep("main", [0], str(out), runs, workers=1, train_overrides=TINY,
                           upsamplers=["nearest", "bilinear"], progress=False)
    assert [r["upsampler"] for r in rows] == ["nearest", "bilinear"]  # grid order
    assert len(sweep.read_csv(str(out))) == 2


def test_foreign_csv_is_refused_untouched(tmp_path):
    out = tmp_path / "old.csv"
    out.write_text("group,setting,upsampler,miou\nupsampler,bilinear,bilinear,0.5\n")
    before = out.read_bytes()
    with pytest.raises(ValueError, match="another --out"):
        sweep.run_sweep("main", [0], str(out), str(tmp_path / "runs"), workers=1, train_overrides=TINY,
                        upsamplers=["bilinear"], progress=False)
    assert out.read_bytes() == before


def test_cli_commands_estimate_and_json(tmp_path, capsys):
    assert sweep.main(["--print-commands"]) == 0
    printed = capsys.readouterr().out
    assert "--out book/results/main.csv" in printed and "--grid table6" in printed
    assert "python -m sapa.lab.mechanism --out book/results/mechanism.csv" in printed
    assert "--head segformer" in printed and "--dataset textures" in printed
    flags = ["--epochs", "1", "--size", "32", "--train-samples", "16", "--val-samples", "8", "--batch-size", "8",
             "--width", "4", "--decoder-width", "8", "--stages", "3", "--max-steps-per-epoch", "1",
             "--dataset", "textures", "--head", "segformer"]
    assert sweep.main(["--grid", "main", "--upsamplers", "bilinear", "sapa-b", "--estimate", *flags]) == 0
    est = capsys.readouterr().out
    assert "ms/step" in est and "estimated wall time" in est
    out = tmp_path / "r.csv"
    args = ["--grid", "main", "--upsamplers", "bilinear", "--seeds", "0", "--out", str(out), "--workers", "1",
            "--runs", str(tmp_path / "runs"), *flags]
    assert sweep.main(args) == 0 and sweep.main(args) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert len(meta["invocations"]) == 2 and meta["seconds"] == pytest.approx(
        sum(i["seconds"] for i in meta["invocations"]), abs=0.2)
    assert meta["command"].startswith("python -m sapa.lab.sweep --grid main") and "CPU" in meta["machine"]
    row = sweep.read_csv(str(out))[0]
    assert row["head"] == "segformer" and row["dataset"] == "textures"
    assert row["error_rate"] == pytest.approx(row["loc_error_rate"] + row["rec_error_rate"])
    for bad in (["--upsampler-option", "foo=1"], ["--head", "fpn"], ["--device-nope"]):
        with pytest.raises(SystemExit) as e:
            sweep.main(["--grid", "main", "--upsamplers", "bilinear", "--out", str(tmp_path / "x.csv"), *bad])
        assert e.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_config_id_covers_the_defining_settings():
    base = dict(TINY, upsampler="sapa-b", seed=0, upsampler_options={})
    cid, defining = sweep._config_id(base)
    assert sweep._config_id(dict(base, threads=2, progress=True, out="/elsewhere"))[0] == cid
    for change in (dict(epochs=2), dict(lr=1e-3), dict(seed=1), dict(head="segformer"),
                   dict(upsampler_options={"kernel_size": 3}), dict(dataset="textures")):
        assert sweep._config_id(dict(base, **change))[0] != cid, change
    assert defining["upsampler"] == "sapa-b" and "out" not in defining


# ---- issue 18: per-upsampler options, paired data seeds, CSV repair, estimate, data root ----
def test_upsampler_option_applies_per_upsampler():
    names = ["bilinear", "sapa-b", "bilinear+conv"]
    # a bare KEY=VALUE goes to every upsampler that accepts it (match: bilinear+conv only)
    assert sweep.parse_upsampler_options(["match=sapa-b"], names) == {"bilinear+conv": {"match": "sapa-b"}}
    assert sweep.parse_upsampler_options(["kernel_size=3"], names) == {"sapa-b": {"kernel_size": 3}}
    assert sweep.parse_upsampler_options(["sapa-b:embedding_dim=16", "bilinear+conv:match=fade"], names) == {
        "sapa-b": {"embedding_dim": 16}, "bilinear+conv": {"match": "fade"}}
    with pytest.raises(ValueError, match="no upsampler of this grid accepts 'kernel_size'"):
        sweep.parse_upsampler_options(["kernel_size=3"], ["bilinear", "nearest"])
    with pytest.raises(ValueError, match="'carafe' is not in this grid"):
        sweep.parse_upsampler_options(["carafe:kernel_size=3"], names)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sweep.parse_upsampler_options(["kernel_size"], names)
    # the jobs: options only where they apply, data seed = seed, seed-major
    jobs = sweep._jobs("main", [0, 1], "runs", dict(TINY), ["bilinear", "bilinear+conv"],
                       {"bilinear+conv": {"match": "sapa-b"}})
    assert [(j["train"]["upsampler"], j["train"]["seed"], j["train"]["data_seed"]) for j in jobs] == [
        ("bilinear", 0, 0), ("bilinear+conv", 0, 0), ("bilinear", 1, 1), ("bilinear+conv", 1, 1)]
    assert jobs[0]["train"]["upsampler_options"] == {} and jobs[1]["train"]["upsampler_options"] == {"match": "sapa-b"}
    # an explicit data seed is kept for every run
    fixed = sweep._jobs("main", [0, 1], "runs", dict(TINY, data_seed=7), ["bilinear"])
    assert [j["train"]["data_seed"] for j in fixed] == [7, 7]


def test_cli_help_example_runs_with_a_mixed_grid(tmp_path, capsys):
    """The --upsampler-option help example (match=sapa-b) with bilinear in the grid."""
    flags = ["--epochs", "1", "--size", "32", "--train-samples", "16", "--val-samples", "8", "--batch-size", "8",
             "--width", "4", "--decoder-width", "8", "--stages", "3", "--max-steps-per-epoch", "1"]
    out = tmp_path / "m.csv"
    assert sweep.main(["--grid", "main", "--upsamplers", "bilinear", "bilinear+conv", "--seeds", "0", "--workers",
                       "1", "--out", str(out), "--runs", str(tmp_path / "runs"), "--upsampler-option",
                       "match=sapa-b", *flags]) == 0
    rows = {r["upsampler"]: r for r in sweep.read_csv(str(out))}
    assert json.loads(rows["bilinear+conv"]["options"]) == {"match": "sapa-b"}
    assert json.loads(rows["bilinear"]["options"]) == {}
    curve = json.loads(rows["bilinear"]["curve"])
    assert curve["epoch"] == [1] and len(curve["val_miou"]) == 1 and curve["val_miou"][0] == pytest.approx(
        rows["bilinear"]["miou"], abs=1e-5)
    # help: every option has a help text, choices where there is a fixed set
    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    text = capsys.readouterr().out
    assert "{cosine,plateau}" in text and "{synthetic,textures,statistics,folder,oxford-pets}" in text
    for flag, *_ in sweep._flags():
        assert f"--{flag}" in text


def test_estimate_names_the_schedule_and_counts_shared_settings_once(capsys):
    flags = ["--epochs", "2", "--size", "32", "--train-samples", "16", "--val-samples", "8", "--batch-size", "8",
             "--width", "4", "--decoder-width", "8", "--stages", "3", "--dataset", "textures", "--head",
             "segformer"]
    assert sweep.main(["--grid", "table6", "--estimate", "--seeds", "0", *flags]) == 0
    out = capsys.readouterr().out
    assert "under the cosine schedule (every run trains all 2 epochs)" in out
    # SAPA-B's defaults serve five rows of Table 6 (normalisation, K, d, similarity, padding)
    assert out.count("sapa-b         {}") == 1 and "(x5 rows)" in out
    assert "validations" in out and "ms/val batch" in out
    assert sweep.main(["--grid", "main", "--upsamplers", "bilinear", "--estimate", "--schedule", "plateau",
                       *flags]) == 0
    assert "an upper bound" in capsys.readouterr().out


def test_csv_without_final_newline_is_repaired_not_glued(tmp_path, capsys):
    out, runs = tmp_path / "s.csv", str(tmp_path / "runs")
    kw = dict(workers=1, train_overrides=TINY, progress=False)
    first = sweep.run_sweep("main", [0], str(out), runs, upsamplers=["bilinear"], **kw)
    complete = out.read_bytes()
    out.write_bytes(complete + b"upsampler,nearest,nearest,{},0,0.5")  # an interrupted append
    rows = sweep.run_sweep("main", [0], str(out), runs, upsamplers=["bilinear", "nearest"], **kw)
    assert [r["upsampler"] for r in rows] == ["bilinear", "nearest"]
    back = sweep.read_csv(str(out))
    assert len(back) == 2 and back[0] == first[0] and back[1]["upsampler"] == "nearest"
    assert all(r["config_id"] for r in back)
    assert "unfinished last line" in capsys.readouterr().err


def test_bad_data_root_fails_once_before_any_run(tmp_path, capsys, monkeypatch):
    def no_training(job):
        raise AssertionError("a run started")

    monkeypatch.setattr(sweep, "_one_run", no_training)
    with pytest.raises(SystemExit) as e:
        sweep.main(["--grid", "main", "--upsamplers", "bilinear", "nearest", "--dataset", "folder",
                    "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.csv"), "--workers", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "nowhere" in err and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists()


def test_interrupted_sweep_records_its_invocation(tmp_path, monkeypatch, capsys):
    """Ctrl-C (or SIGTERM, turned into the same) keeps the finished rows and writes the
    invocation, marked interrupted, into the JSON; exit status 130."""
    calls = []
    real = sweep._one_run

    def stop_after_one(job):
        if calls:
            raise KeyboardInterrupt
        calls.append(job["name"])
        return real(job)

    monkeypatch.setattr(sweep, "_one_run", stop_after_one)
    flags = ["--epochs", "1", "--size", "32", "--train-samples", "16", "--val-samples", "8", "--batch-size", "8",
             "--width", "4", "--decoder-width", "8", "--stages", "3", "--max-steps-per-epoch", "1"]
    out = tmp_path / "i.csv"
    code = sweep.main(["--grid", "main", "--upsamplers", "bilinear", "nearest", "--seeds", "0", "--workers", "1",
                       "--out", str(out), "--runs", str(tmp_path / "runs"), *flags])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert [r["upsampler"] for r in sweep.read_csv(str(out))] == ["bilinear"]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["invocations"][-1]["interrupted"] is True and meta["invocations"][-1]["rows"] == 1


# ---- the stored results: which rows belong to them ------------------------------------------
RESULTS = Path(__file__).resolve().parent.parent / "book" / "results"


@pytest.mark.parametrize("name", ["main", "table6", "statistics"])
def test_stored_rows_config_ids_recompute(name):
    """Every row of a stored CSV is one of the stored commands' runs: its config_id recomputes
    from the grid, the seeds and STORED_TASK (so a move of the code keeps the ids valid)."""
    fname = sweep.STORED_FILES[name][0]
    if not (RESULTS / fname).is_file():
        pytest.skip(f"{fname} is not stored yet")
    rows = sweep.read_csv(RESULTS / fname)
    ids = {}
    for command in sweep.STORED_FILES[name][1]:
        ids.update(sweep.stored_config_ids(command))
    assert rows and all(r["config_id"] in ids for r in rows)
    for r in rows:
        assert any(m["setting"] == r["setting"] and m["seed"] == r["seed"] for m in ids[r["config_id"]])
    kept, other = sweep.select_stored(rows, name)
    assert len(kept) == len(rows) and other == 0


def test_select_stored_leaves_out_other_configs_and_refuses_duplicates():
    """A rerun with a changed setting appends rows of another config: they are left out, never
    mixed in; two rows of one stored (setting, seed) are refused with the runs named."""
    ids = sweep.stored_config_ids("main")
    (cid, [where]), (cid2, [where2]) = list(ids.items())[:2]
    good = dict(group="upsampler", setting=where["setting"], seed=where["seed"], config_id=cid, run="a")
    good2 = dict(group="upsampler", setting=where2["setting"], seed=where2["seed"], config_id=cid2, run="b")
    changed = dict(good, config_id="0000beef", run="c")  # same setting and seed, another config
    kept, other = sweep.select_stored([good, changed, good2], "main")
    assert kept == [good, good2] and other == 1
    with pytest.raises(ValueError, match="two rows"):
        sweep.select_stored([good, dict(good, run="d")], "main")
    with pytest.raises(ValueError, match="unknown stored result"):
        sweep.select_stored([], "nope")
    assert all(m["seed"] in sweep.SAPA_D_SEEDS for ms in sweep.stored_config_ids("main+sapa-d").values() for m in ms)


def test_stored_rows_status(tmp_path, monkeypatch):
    """stored_rows: the kept rows and a sentence; a missing file gives None and the command."""
    from sapa.lab import results

    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    rows, status = sweep.stored_rows("table6")
    assert rows is None and "not there yet" in status and "--grid table6" in status
    ids = sweep.stored_config_ids("table6")
    cid, where = next(iter(ids.items()))
    with open(tmp_path / "table6.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sweep.CSV_COLUMNS)
        w.writeheader()
        base = {k: "" for k in sweep.CSV_COLUMNS}
        w.writerow(dict(base, group=where[0]["group"], setting=where[0]["setting"], seed=where[0]["seed"],
                        config_id=cid, miou=0.9, run="r1"))
        w.writerow(dict(base, group=where[0]["group"], setting=where[0]["setting"], seed=where[0]["seed"],
                        config_id="feedf00d", miou=0.8, run="r2"))
    rows, status = sweep.stored_rows("table6")
    assert [r["run"] for r in rows] == ["r1"]
    assert status == ("The stored `table6.csv` holds 1 run of the stored settings (1 row of other settings, "
                      "e.g. a rerun with a changed option, is left out).")


# ---- the weak-guide task's stored comparison ------------------------------------------------------
def test_statistics_command_round_trips(monkeypatch, capsys):
    """The printed "statistics:" command parses (through the CLI itself), names the dataset
    once, and its runs are exactly the config_ids stored_rows("statistics") keeps."""
    import shlex

    assert sweep.main(["--print-commands"]) == 0
    lines = {ln.split(": ", 1)[0]: ln.split(": ", 1)[1] for ln in capsys.readouterr().out.splitlines()}
    command = lines["statistics"]
    assert command == sweep.stored_command("statistics")
    argv = shlex.split(command)[3:]
    assert argv.count("--dataset") == 1 and argv[argv.index("--dataset") + 1] == "statistics"
    assert argv[argv.index("--out") + 1] == "book/results/statistics.csv"
    assert argv[argv.index("--upsamplers") + 1: argv.index("--out")] == list(sweep.WEAK_GUIDE_UPSAMPLERS)
    for flag in ("--head", "--size", "--stages", "--width", "--decoder-width", "--batch-size", "--lr",
                 "--train-samples", "--val-samples", "--epochs", "--schedule", "--eval-every"):
        assert argv.count(flag) == 1, flag
    # main/table6 keep their task: textures
    assert "--dataset textures" in sweep.stored_command("main") and "statistics" not in sweep.stored_command("main")

    class Parsed(Exception):
        pass

    captured = {}

    def capture(grid_name, seeds, out_csv, runs_dir, workers, overrides, upsamplers, per_upsampler=None):
        captured.update(grid=grid_name, seeds=seeds, runs=runs_dir, overrides=overrides, upsamplers=upsamplers,
                        per_upsampler=per_upsampler)
        raise Parsed

    monkeypatch.setattr(sweep, "run_sweep", capture)
    with pytest.raises(Parsed):
        sweep.main(argv)  # every setting is checked (resolve_config) before run_sweep is reached
    assert captured["seeds"] == [0, 1, 2, 3, 4] and captured["overrides"]["dataset"] == "statistics"
    jobs = sweep._jobs(captured["grid"], captured["seeds"], captured["runs"], captured["overrides"],
                       captured["upsamplers"], captured["per_upsampler"])
    expected = sweep.stored_config_ids("statistics")
    assert len(jobs) == 5 * len(sweep.WEAK_GUIDE_UPSAMPLERS) == len(expected)
    assert {j["config_id"] for j in jobs} == set(expected)
    for j in jobs:
        assert expected[j["config_id"]] == [dict(group=j["group"], setting=j["setting"], seed=j["train"]["seed"])]
        assert j["train"]["dataset"] == "statistics" and j["train"]["head"] == "segformer"
    # no run is shared with the textures comparison (another dataset, another config_id)
    assert not set(expected) & set(sweep.stored_config_ids("main"))


def test_statistics_stored_rows(tmp_path, monkeypatch):
    from sapa.lab import results

    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    rows, status = sweep.stored_rows("statistics")
    assert rows is None and "--out book/results/statistics.csv" in status and "--dataset statistics" in status
    cid, [where] = next(iter(sweep.stored_config_ids("statistics").items()))
    main_cid = next(iter(sweep.stored_config_ids("main")))
    with open(tmp_path / "statistics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sweep.CSV_COLUMNS)
        w.writeheader()
        base = {k: "" for k in sweep.CSV_COLUMNS}
        w.writerow(dict(base, group=where["group"], setting=where["setting"], seed=where["seed"], config_id=cid,
                        miou=0.5, run="r1"))
        w.writerow(dict(base, group=where["group"], setting=where["setting"], seed=where["seed"],
                        config_id=main_cid, miou=0.9, run="r2"))  # a textures run: not this result's
    rows, status = sweep.stored_rows("statistics")
    assert [r["run"] for r in rows] == ["r1"] and "1 row of other settings" in status
