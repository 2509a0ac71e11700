"""sapa.results: the results folder, exporting and reloading trained models."""
from __future__ import annotations

from pathlib import Path

import torch

from sapa.results import export_model, load_model, model_config, repo_root, results_dir
from sapa.train import train

ROOT = Path(__file__).resolve().parent.parent


def test_results_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SAPA_RESULTS_DIR", raising=False)
    assert repo_root() == ROOT
    assert results_dir() == ROOT / "book" / "results"
    assert results_dir(ROOT / "notebooks") == ROOT / "book" / "results"
    monkeypatch.setenv("SAPA_RESULTS_DIR", str(tmp_path))
    assert results_dir() == tmp_path.resolve()


def test_export_and_load_roundtrip(tmp_path):
    run = tmp_path / "run"
    cfg = dict(upsampler="sapa-b", profile="quick", size=16, train_samples=8, val_samples=4, epochs=1,
               batch_size=4, width=4, stages=3, max_steps_per_epoch=1, out=str(run), progress=False,
               upsampler_options={"kernel_size": 3})
    result = train(cfg)
    trained = result["model"].eval()
    dest = export_model(run, tmp_path / "models" / "sapa-b_s0.pt")
    blob = torch.load(dest, weights_only=False)
    assert set(blob) == {"config", "model"}
    assert all(v.dtype in (torch.float32, torch.int64) for v in blob["model"].values())
    assert model_config(dest)["upsampler_options"] == {"kernel_size": 3}
    model = load_model(dest)
    assert not model.training and model.upsampler_name == "sapa-b" and model.stages == 3
    assert model.upsamplers[0].sapa.kernel_size == 3
    image = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(image), trained(image))
    assert dest.stat().st_size < (run / "last.pt").stat().st_size


def test_export_missing_run(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError):
        export_model(tmp_path / "nothing", tmp_path / "x.pt")
