"""python -m sapa.lab.steps: training steps of the book's model per upsampler (no timing assertions)."""
import json
import subprocess
import sys

import pytest

from sapa.lab import steps


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sapa.lab.steps", *args], capture_output=True, text=True)


def test_model_steps_tiny_task():
    res = steps.model_steps(["bilinear", "sapa-b", "sapa-d"], repeats=2,
                            task=dict(size=16, batch_size=2, width=2, decoder_width=4))
    assert [r["upsampler"] for r in res] == ["bilinear", "sapa-b", "sapa-d"]
    for r in res:
        assert r["runs"] == 2 and 0 < r["min_seconds"] <= r["seconds"] <= r["max_seconds"]
        assert r["vs_sapa_b"] == pytest.approx(r["seconds"] / res[1]["seconds"])
        assert r["task"]["head"] == "segformer" and r["task"]["size"] == 16 and r["task"]["stages"] == 3
    assert res[0]["vs_bilinear"] == 1.0
    table = steps.format_steps(res)
    assert table.count("\n") == 3 and "x sapa-b" in table
    with pytest.raises(ValueError, match="unknown upsampler"):
        steps.model_steps(["nope"], repeats=1)
    with pytest.raises(ValueError, match="not timed"):
        steps.model_steps(["bilinear"], repeats=1, task={"epochs": 3})


@pytest.mark.slow  # a fresh process building models (~7 s): `make test-fast` skips it
def test_cli_steps_json():
    proc = _cli("--upsamplers", "bilinear", "carafe", "--repeats", "1", "--step-size", "16",
                "--step-batch", "1", "--step-width", "2", "--step-decoder-width", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert [r["upsampler"] for r in res] == ["bilinear", "carafe"] and res[1]["vs_sapa_b"] is None
    bad = _cli("--upsamplers", "nope", "--repeats", "1")
    assert bad.returncode != 0 and "unknown upsampler" in bad.stderr
