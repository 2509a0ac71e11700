"""Per-pixel linear probes (sapa.lab.probes): they read what a feature says, and the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F

from sapa.lab import probes
from sapa.lab.data import TextureStatistics
from sapa.lab.models import Segmenter


def _blocky_labels(n, size=16, classes=4, cell=4):
    """(n, size, size) labels constant on cell x cell blocks, classes about equally frequent."""
    coarse = torch.randint(0, classes, (n, 1, size // cell, size // cell)).float()
    return F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()


def test_probe_reads_a_one_hot_feature_and_not_noise(one_thread):
    labels, test_labels = _blocky_labels(24), _blocky_labels(24)
    onehot = lambda y: F.one_hot(y, 4).permute(0, 3, 1, 2).float()  # noqa: E731
    probe = probes.fit_probe(onehot(labels), labels, 4, pixels=2000, steps=100)
    s = probes.evaluate_probe(probe, onehot(test_labels), test_labels, 4)
    assert s["pixel_acc"] > 0.99 and s["miou"] > 0.98
    noise = probes.fit_probe(torch.randn(24, 6, 16, 16), labels, 4, pixels=2000, steps=100)
    s = probes.evaluate_probe(noise, torch.randn(24, 6, 16, 16), test_labels, 4)
    assert abs(s["pixel_acc"] - 0.25) < 0.06 and s["miou"] < 0.2, s  # chance: 1/4
    assert s["majority_acc"] < 0.35 and len(s["iou_per_class"]) == 4
    # deterministic: same data, same seed, same probe
    again = probes.fit_probe(torch.ones(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), 2, steps=3)
    assert torch.equal(again.linear.weight, probes.fit_probe(torch.ones(2, 1, 4, 4),
                                                             torch.zeros(2, 4, 4, dtype=torch.long), 2,
                                                             steps=3).linear.weight)


class _MaskDataset(torch.utils.data.Dataset):
    """Images that are the one-hot encoding of their mask (3 classes)."""

    num_classes, ignore_index = 3, None

    def __init__(self, n):
        self.labels = _blocky_labels(n, classes=3)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        y = self.labels[i]
        return F.one_hot(y, 3).permute(2, 0, 1).float(), y


def test_linear_probe_on_a_segmenter(one_thread):
    ds = _MaskDataset(12)
    model = Segmenter(3, "bilinear", width=4, stages=3, decoder_width=8, head="segformer")
    image = probes.linear_probe(model, ds, "image", train_images=6, test_images=6, pixels=1000, steps=60)
    assert image["pixel_acc"] > 0.99 and image["channels"] == 3 and image["resolution"] == [16, 16]
    first = probes.linear_probe(model, ds, 0, train_images=6, test_images=6, pixels=1000, steps=60)
    last = probes.linear_probe(model, ds, -1, train_images=6, test_images=6, pixels=1000, steps=60)
    assert first["channels"] == 4 and first["resolution"] == [16, 16]
    assert last["channels"] == 16 and last["resolution"] == [4, 4]
    assert 0 <= last["pixel_acc"] <= 1 and last["train_pixels"] == 1000 and last["test_images"] == 6
    feats = probes.stage_features(model, ds[0][0][None], -1)
    assert feats.shape == (1, 16, 16, 16) and model.training  # the mode is given back
    # mistakes name the argument
    with pytest.raises(ValueError, match="stage"):
        probes.linear_probe(model, ds, 3, train_images=2, test_images=2)
    with pytest.raises(TypeError, match="stage"):
        probes.linear_probe(model, ds, "last", train_images=2, test_images=2)
    with pytest.raises(ValueError, match="train_images"):
        probes.linear_probe(model, ds, 0, train_images=10, test_images=10)
    with pytest.raises(TypeError, match="model"):
        probes.linear_probe(object(), ds, 0)
    with pytest.raises(ValueError, match="labels"):
        probes.fit_probe(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="features"):
        probes.fit_probe(torch.randn(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="num_classes"):
        probes.fit_probe(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 2), 2)
    with pytest.raises(ValueError, match="steps"):
        probes.fit_probe(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), 2, steps=0)


TINY = ["--epochs", "1", "--size", "16", "--train-samples", "8", "--val-samples", "8", "--max-steps-per-epoch", "1",
        "--train-images", "3", "--test-images", "3", "--pixels", "300", "--steps", "20", "--no-progress"]


def test_cli_writes_json_and_reuses_the_run(tmp_path, capsys, one_thread):
    out = tmp_path / "sub" / "p.json"
    args = ["--dataset", "statistics", "--stage", "0", "--stage", "-1", "--runs", str(tmp_path / "runs"),
            "--out", str(out), *TINY]
    assert probes.main(args) == 0
    printed = capsys.readouterr().out
    assert "statistics" in printed and "probe mIoU" in printed
    record = json.loads(out.read_text())
    assert record["command"] == "python -m sapa.lab.probes " + " ".join(args) and record["seconds"] >= 0
    assert [p["stage"] for p in record["probes"]] == [0, -1] and record["machine"]
    assert record["probes"][0]["channels"] == 8 and record["probes"][1]["resolution"] == [4, 4]
    seg = record["segmenters"]["statistics"]
    assert seg["config"]["head"] == "segformer" and seg["config"]["dataset"] == "statistics"
    assert seg["config"]["width"] == 8 and seg["config"]["upsampler"] == "bilinear"
    ckpts = list((tmp_path / "runs").glob("*/last.pt"))
    assert len(ckpts) == 1 and ckpts[0].parent.name.startswith("bilinear_s0_")
    stamp = ckpts[0].stat().st_mtime_ns
    assert probes.main(args) == 0  # the finished run is reused, not trained again
    assert ckpts[0].stat().st_mtime_ns == stamp
    again = json.loads(out.read_text())
    assert [p["miou"] for p in again["probes"]] == [p["miou"] for p in record["probes"]]


def test_cli_run_folder_is_the_sweeps():
    """A sweep of the same settings names its bilinear run as the probes do (--runs runs/sweep)."""
    from sapa.lab import sweep

    cfg = probes._train_config("statistics", 0, "runs/sweep", {})
    jobs = sweep._jobs("main", [0], "runs/sweep", dict(sweep.STORED_TASK, dataset="statistics"), ["bilinear"])
    assert cfg["out"] == jobs[0]["train"]["out"]


@pytest.mark.parametrize("bad, words", [
    (["--dataset", "folder"], "invalid choice"),
    (["--stage", "last"], "--stage"),
    (["--stage", "5"], "stage must lie"),
    (["--epochs", "0"], "epochs"),
    (["--train-images", "0"], "train_images"),
    (["--threads", "0"], "--threads"),
])
def test_cli_mistakes_end_in_one_line(bad, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        probes.main(["--runs", str(tmp_path / "runs"), "--dataset", "statistics", *TINY, *bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and words in err
    assert [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("usage:")
            and not ln.startswith(" ")] == [err.strip().splitlines()[-1]]
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_cli_out_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        probes.main(["--out", str(tmp_path), *TINY])
    assert "is a folder" in capsys.readouterr().err


def test_statistics_task_pixels_are_weak_for_a_probe(one_thread):
    """On the new task a linear probe of the raw pixels stays near the majority answer."""
    ds = TextureStatistics(24, size=32, seed=1, split="val")

    class Identity(torch.nn.Module):
        def encode(self, x):
            return [x]

    r = probes.linear_probe(Identity(), ds, "image", train_images=12, test_images=12, pixels=4000, steps=100)
    assert r["pixel_acc"] < r["majority_acc"] + 0.02 and r["miou"] < 0.2, r


def test_stored_command_is_the_one_that_wrote_the_stored_probes():
    import json
    from pathlib import Path

    from sapa.lab import probes

    stored = Path(__file__).resolve().parent.parent / "book" / "results" / "probes.json"
    assert json.loads(stored.read_text())["command"] == probes.STORED_COMMAND
    # and the command parses (every flag is one of the CLI's)
    args = probes.build_parser().parse_args(probes.STORED_COMMAND.split()[3:])
    assert args.out == "book/results/probes.json"
