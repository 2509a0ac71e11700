"""The sweep trains each configuration once, resumes, and writes the documented CSV."""
import math

from sapa import sweep

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
    assert [(r["upsampler"], r["seed"]) for r in rows] == [("bilinear", 0), ("bilinear", 1), ("sapa-b", 0), ("sapa-b", 1)]
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
