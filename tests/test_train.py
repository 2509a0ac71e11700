import json
import os
import random
import socket

import pytest
import torch
import torch.multiprocessing as mp

import sapa.lab.train as T
from sapa.lab.models import Segmenter
from sapa.upsamplers import available_upsamplers

TINY = dict(profile="quick", size=16, train_samples=16, val_samples=8, batch_size=8, width=4, decoder_width=8,
            stages=3, progress=False, threads=1)


def _tiny(tmp_path, **kw):
    cfg = dict(TINY, out=str(tmp_path), seed=random.randrange(1000))
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("name", ["bilinear", "sapa-b", "carafe"])
def test_segmenter_shapes(name):
    m = Segmenter(5, name, width=4, stages=3)
    x = torch.randn(2, 3, 24, 32)
    out = m(x)
    assert out.shape == (2, 5, 24, 32)
    assert len(m.upsamplers) == 2
    out.mean().backward()


def test_segmenter_odd_sizes():
    # size-following upsamplers accept any input size
    assert Segmenter(3, "sapa-b", width=4, stages=3)(torch.randn(1, 3, 21, 19)).shape == (1, 3, 21, 19)
    with pytest.raises(ValueError, match="unknown upsampler 'nope'.*bilinear"):
        Segmenter(3, "nope")


def test_lr_schedule():
    lrs = [T.lr_at(s, 100, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.2)  # warm-up: 5 steps
    assert max(lrs) == pytest.approx(1.0) and lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.05


def test_train_writes_and_resumes(tmp_path):
    cfg = _tiny(tmp_path, epochs=1)
    r1 = T.train(cfg)
    assert (tmp_path / "last.pt").exists()
    m1 = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in m1["epochs"]] == [1]
    for key in ("train_loss", "val_miou", "val_boundary_iou", "val_pixel_acc", "time_per_iter_ms"):
        assert key in m1["final"]
    assert m1["params"] == r1["params"] > 0
    # a crash during a checkpoint write leaves a stray temp file: harmless
    (tmp_path / "last.pt.tmp999").write_bytes(b"garbage")
    r2 = T.train(dict(cfg, epochs=2))
    m2 = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in m2["epochs"]] == [1, 2]
    assert m2["epochs"][0] == m1["epochs"][0]  # the finished epoch is preserved
    assert r2["final"]["epoch"] == 2
    # finished: rerunning trains nothing
    r3 = T.train(dict(cfg, epochs=2))
    assert len(r3["epochs"]) == 2
    with pytest.raises(ValueError, match="width"):
        T.train(dict(cfg, epochs=3, width=8))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    seed = random.randrange(1000)
    cfg = dict(TINY, seed=seed, epochs=2, max_steps_per_epoch=2)
    straight_run = T.train(dict(cfg, out=str(tmp_path / "a")))
    straight, straight_epochs = straight_run["model"].state_dict(), straight_run["epochs"]

    real = T._run_epoch

    def crash_in_epoch_2(*args):
        if args[7] == 2:  # the 1-based epoch number
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(T, "_run_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        T.train(dict(cfg, out=str(tmp_path / "b")))
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert [e["epoch"] for e in saved["epochs"]] == [1]
    monkeypatch.setattr(T, "_run_epoch", real)
    resumed = T.train(dict(cfg, out=str(tmp_path / "b")))
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["epochs"][0] == saved["epochs"][0]
    for k, v in straight.items():  # bitwise: same weights, same BatchNorm statistics
        assert torch.equal(v, resumed["model"].state_dict()[k]), k
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in straight_epochs]


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="available: .*sapa-b"):
        T.train(_tiny(tmp_path, upsampler="nonexistent"))
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        T.train(_tiny(tmp_path, dataset="folder", data_root=str(tmp_path / "no_such_folder")))
    with pytest.raises(ValueError, match="unknown config key"):
        T.train({"upsampler": "bilinear", "epoch": 3})
    assert "sapa-g" in available_upsamplers()


def test_cli_error_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["--upsampler", "bogus", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "bogus" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = T.train(cfg)
    torch.save(result["model"].state_dict(), os.path.join(folder, f"rank{rank}.pt"))


@pytest.mark.slow
def test_ddp_two_processes_stay_in_sync(tmp_path):
    cfg = dict(TINY, seed=7, epochs=1, max_steps_per_epoch=2,
               out=str(tmp_path / "run"), upsampler="sapa-b", device="cpu")
    for attempt in range(3):  # the free port can be taken by another process before rank 0 binds it
        try:
            mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
            break
        except Exception as e:  # noqa: BLE001  mp.spawn re-raises the worker's error as ProcessRaisedException
            if "address already in use" not in str(e).lower() or attempt == 2:
                raise
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"][0]["steps"] == 2
    # the weights moved away from a fresh initialisation with the same seed
    torch.manual_seed(cfg["seed"])
    fresh = Segmenter(6, "sapa-b", width=4, stages=3).state_dict()
    assert any(not torch.equal(fresh[k], w0[k]) for k in w0 if w0[k].dtype.is_floating_point)
