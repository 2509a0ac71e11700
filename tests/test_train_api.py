"""train(): your own datasets, paired data order, the plateau (convergence) schedule, and
user mistakes ending in one line."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

import sapa.lab.train as T
from sapa.lab.data import TexturedRegions

TINY = dict(profile="quick", size=16, train_samples=16, val_samples=8, batch_size=8, width=4, decoder_width=8,
            stages=3, progress=False, threads=1, epochs=2)


class Recording(torch.utils.data.Dataset):
    """Random images and masks that log the order they are read in and the epochs set."""

    num_classes = 3

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        self.masks = torch.randint(0, 3, (n, 16, 16), generator=g)
        self.reads, self.epochs = [], []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.images[i], self.masks[i]

    def set_epoch(self, e):
        self.epochs.append(e)


def _run(upsampler, seed, **kw):
    tr, va = Recording(16, 1), Recording(8, 2)
    res = T.train(dict(TINY, upsampler=upsampler, seed=seed, **kw), train_dataset=tr, val_dataset=va)
    return res, tr


def test_user_datasets_and_paired_data_order():
    seed = random.randrange(1000)
    res_a, tr_a = _run("bilinear", seed)
    res_b, tr_b = _run("sapa-b", seed)
    assert res_a["config"]["dataset"] == "custom" and res_a["final"]["epoch"] == 2
    assert tr_a.epochs == [0, 1]  # set_epoch before every epoch
    first = tr_a.reads[1:]  # reads[0]: the check of the first item before training
    assert first == tr_b.reads[1:]  # same seed: the same batches in the same order, whatever the model
    _, tr_c = _run("bilinear", seed + 1)
    assert tr_c.reads[1:] != first
    assert 0 <= res_b["final"]["val_miou"] <= 1 and res_b["converged"] is None


def test_user_dataset_mistakes_are_named():
    tr, va = Recording(16, 1), Recording(8, 2)
    with pytest.raises(ValueError, match="both"):
        T.train(dict(TINY), train_dataset=tr)
    va.masks[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"val_dataset\[0\] mask has labels .* num_classes=3"):
        T.train(dict(TINY), train_dataset=tr, val_dataset=va)

    class Bad(Recording):
        def __getitem__(self, i):
            return self.images[i]

    with pytest.raises(TypeError, match="train_dataset.*pair"):
        T.train(dict(TINY), train_dataset=Bad(4, 0), val_dataset=va)


def test_textures_fresh_samples_per_epoch_are_shared_across_upsamplers():
    ds = TexturedRegions(4, size=16, seed=3)
    ds.set_epoch(1)
    a = ds[2][1].clone()
    ds.set_epoch(0)
    assert not torch.equal(a, ds[2][1])
    cfg = dict(TINY, dataset="textures", seed=5, max_steps_per_epoch=1)
    r1 = T.train(dict(cfg, upsampler="bilinear"))
    assert r1["config"]["dataset"] == "textures" and "val_loc_error_rate" in r1["final"]
    assert r1["final"]["val_error_rate"] == pytest.approx(r1["final"]["val_loc_error_rate"]
                                                           + r1["final"]["val_rec_error_rate"])


def test_plateau_state_by_hand():
    cfg = T.resolve_config(dict(TINY, schedule="plateau", patience=2, plateau_tol=0.1, decay_factor=0.5, max_decays=1))
    # 1.0 best; 0.95 is not 10 % better (1), 0.93 neither (2) -> decay 1, lr x 0.5;
    # 0.5 is a new best; 0.49 (1), 0.48 (2) -> second plateau with max_decays=1 reached: converged
    losses = [1.0, 0.95, 0.93, 0.5, 0.49, 0.48]
    assert T.plateau_state(losses[:2], cfg) == (1.0, 0, False)
    assert T.plateau_state(losses[:3], cfg) == (0.5, 1, False)
    assert T.plateau_state(losses[:5], cfg) == (0.5, 1, False)
    assert T.plateau_state(losses, cfg) == (0.5, 1, True)


def test_plateau_schedule_stops_at_convergence(tmp_path):
    # plateau_tol 0.99: no epoch can improve by 99 %, so epoch 2 is a plateau (patience 1) and,
    # with no decay allowed, the run has converged after 2 of at most 6 epochs
    cfg = dict(TINY, upsampler="bilinear", epochs=6, schedule="plateau", patience=1, plateau_tol=0.99,
               max_decays=0, out=str(tmp_path / "run"), max_steps_per_epoch=1)
    res = T.train(cfg)
    assert [e["epoch"] for e in res["epochs"]] == [1, 2] and res["converged"] is True
    again = T.train(cfg)  # resuming a converged run trains nothing
    assert [e["epoch"] for e in again["epochs"]] == [1, 2] and again["converged"] is True


def _folder(root, labels):
    rng = np.random.default_rng()
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, top in enumerate(labels):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"im{k}.png")
        m = rng.integers(0, 2, (16, 16), dtype=np.uint8)
        m[3, 4] = top
        Image.fromarray(m).save(root / "masks" / f"im{k}.png")


def test_folder_labels_checked_before_training(tmp_path, monkeypatch):
    _folder(tmp_path, [1, 1, 1, 6, 1])

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(T, "_run_epoch", no_training)
    with pytest.raises(ValueError, match=r"mask .*im3\.png .*labels \[6\].*--num-classes 3"):
        T.train(dict(TINY, dataset="folder", data_root=str(tmp_path), num_classes=3))


def test_cli_mistakes_end_in_one_line(tmp_path, capsys):
    cases = [["--upsampler-option", "foo=1"], ["--upsampler-option", "foo"], ["--head", "segformer", "--skip-fusion", "concat"]]
    if not torch.cuda.is_available():
        cases.append(["--device", "cuda"])
    for extra in cases:
        with pytest.raises(SystemExit) as e:
            T.main(["--upsampler", "bilinear", "--out", str(tmp_path / "x"), *extra])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 or err[-1].startswith("python -m sapa.lab.train: error"), err
        assert "Traceback" not in "\n".join(err)
        assert any(w in err[-1] for w in ("foo", "KEY=VALUE", "segformer", "CUDA")), err
    assert not (tmp_path / "x").exists()  # nothing written
