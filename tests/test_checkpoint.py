"""sapa.lab.checkpoint: loading never runs code; damaged or foreign files give one clear error."""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sapa.lab.train as T
from sapa.lab.checkpoint import (CheckpointError, FORMAT_VERSION, atomic_write, load_state_dict_file,
                             load_torch_file, load_training_checkpoint, rng_state, save_model_file,
                             save_training_checkpoint, set_rng_state)
from sapa.lab.models import Segmenter
from sapa.lab.results import export_model, load_model, model_config

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(profile="quick", size=16, train_samples=16, val_samples=8, batch_size=8, width=4, decoder_width=8,
            stages=3, progress=False, threads=1, epochs=1, max_steps_per_epoch=1)


class Payload:
    """Unpickling this runs code: it creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class Meta:
    """A harmless custom class in a checkpoint's metadata: loads only when allowlisted."""

    def __init__(self, name="official"):
        self.name = name


def _evil_files(folder: Path, marker: Path):
    """The same payload as a torch.save zip file (inside a plausible checkpoint) and as a raw pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    zipped = folder / "evil_zip.pt"
    torch.save({"format": "sapa.train.checkpoint", "model": {"w": torch.zeros(2)}, "x": Payload(marker)}, zipped)
    raw = folder / "evil_raw.pt"
    raw.write_bytes(pickle.dumps({"state_dict": Payload(marker)}, protocol=2))
    return [zipped, raw]


def test_the_payload_is_live(tmp_path):
    """The crafted files really run code when unpickled freely, so the refusals below mean something."""
    control = tmp_path / "control"
    for path in _evil_files(tmp_path / "f", control):
        assert not control.exists()
        if path.read_bytes()[:2] == b"PK":
            torch.load(path, weights_only=False)  # what sapa used to do
        else:
            pickle.loads(path.read_bytes())
        assert control.exists()
        control.unlink()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real one-epoch run folder (last.pt, metrics.json) made with the current sapa."""
    folder = tmp_path_factory.mktemp("run")
    T.train(dict(TINY, upsampler="sapa-b", seed=random.randrange(1000), out=str(folder)))
    return folder


def _fresh_run(tmp_path: Path, run: Path, content: bytes = None) -> Path:
    """A copy of ``run`` whose last.pt is replaced by ``content``."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "last.pt").write_bytes((run / "last.pt").read_bytes() if content is None else content)
    return out


def _official_fade(path):
    """The official-checkpoint loader of the baselines (sapa.upsamplers.load_official_state_dict)."""
    from sapa import build_upsampler
    from sapa.upsamplers import load_official_state_dict

    return load_official_state_dict("fade", build_upsampler("fade", 8), path)


def _refuse(*args, **kwargs):
    raise AssertionError("training started despite a bad checkpoint")


def _no_training(monkeypatch):
    """Fail the test if data is built or an epoch starts."""
    monkeypatch.setattr(T, "_run_epoch", _refuse)
    monkeypatch.setattr(T, "make_dataset", _refuse)


def _resume_cfg(run: Path, out: Path, **kw):
    cfg = dict(json.loads((run / "metrics.json").read_text())["config"])
    cfg.update(out=str(out), epochs=2, **kw)
    return cfg


# --------------------------------------------------------------------------------------
# code never runs
# --------------------------------------------------------------------------------------
def test_every_load_path_refuses_a_pickle_that_runs_code(tmp_path, run, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    _no_training(monkeypatch)
    for evil in _evil_files(tmp_path / "evil", marker):
        pth = evil.with_suffix(".pth")  # an "official" checkpoint
        pth.write_bytes(evil.read_bytes())
        for load, path in [(load_torch_file, evil), (load_state_dict_file, evil), (load_state_dict_file, pth),
                           (load_training_checkpoint, evil), (_official_fade, pth)]:
            with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*refused.*exec") as e:
                load(path)
            assert "\n" not in str(e.value), load.__name__
        # resume in train(), export_model and the CLI read <out>/last.pt
        out = tmp_path / f"out_{evil.stem}"
        out.mkdir()
        (out / "last.pt").write_bytes(evil.read_bytes())
        with pytest.raises(CheckpointError, match="refused"):
            T.train(_resume_cfg(run, out))
        with pytest.raises(CheckpointError, match="refused"):
            export_model(out, tmp_path / "m.safetensors")
        with pytest.raises(SystemExit) as e:
            T.main(["--upsampler", "sapa-b", "--out", str(out), "--size", "16", "--no-progress"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refused" in err and str(out / "last.pt") in err
        # a stored model named .safetensors (its JSON is fine) is parsed as safetensors, never unpickled
        fake = tmp_path / "fake.safetensors"
        fake.write_bytes(evil.read_bytes())
        save_model_file(tmp_path / "real.safetensors", {"w": torch.ones(1)}, {"upsampler": "bilinear"})
        (tmp_path / "fake.json").write_text((tmp_path / "real.json").read_text())
        with pytest.raises(CheckpointError, match=re.escape(str(fake)) + ".*not a safetensors file"):
            load_model(fake)
        with pytest.raises(CheckpointError, match="a pickle, which is not read here"):
            load_model(evil)
    assert not marker.exists()


def test_cli_refuses_code_in_a_new_process(tmp_path, run):
    """The real command line: exit status 2, one line on stderr, no traceback, no code run."""
    marker = tmp_path / "pwned"
    evil = _evil_files(tmp_path / "evil", marker)[0]
    out = _fresh_run(tmp_path, run, evil.read_bytes())
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "sapa.lab.train", "--upsampler", "sapa-b", "--out", str(out),
                           "--size", "16", "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out / "last.pt") in lines[0] and "refused" in lines[0]
    assert not marker.exists()


# --------------------------------------------------------------------------------------
# damaged and foreign training checkpoints: one line naming the file, before training
# --------------------------------------------------------------------------------------
def _state_with(run: Path, drop=(), **changes) -> bytes:
    """The bytes of run/last.pt with some entries changed or dropped."""
    state = torch.load(run / "last.pt", weights_only=True)
    state.update(changes)
    for key in drop:
        del state[key]
    path = run.parent / f"tmp_{random.randrange(10**9)}.pt"
    torch.save(state, path)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize("case, expected", [
    ("truncated", "truncated or damaged"),
    ("empty", "empty"),
    ("text", "not a PyTorch checkpoint"),
    ("state_dict", "not a sapa training checkpoint"),
    ("other_model", "do not fit the model"),
    ("other_version", r"format version 2, written by sapa 9\.9\.9; this sapa .* reads format version 1"),
    ("missing_part", "damaged: 'optimizer' is missing"),
    ("bad_rng", "damaged RNG state"),
])
def test_damaged_or_foreign_checkpoint(tmp_path, run, monkeypatch, capsys, case, expected):
    good = (run / "last.pt").read_bytes()
    if case == "truncated":
        content = good[: len(good) * 2 // 3]
    elif case == "empty":
        content = b""
    elif case == "text":
        content = b"epoch 1, loss 0.3\n" * 20
    elif case == "state_dict":  # a plain state dict of a Segmenter (another program's file)
        buf = tmp_path / "sd.pt"
        torch.save(Segmenter(6, "sapa-b", width=4, stages=3).state_dict(), buf)
        content = buf.read_bytes()
    elif case == "other_model":  # header and config fine, weights of a CARAFE model
        content = _state_with(run, model=Segmenter(6, "carafe", width=4, stages=3, decoder_width=8).state_dict())
    elif case == "other_version":
        content = _state_with(run, format_version=FORMAT_VERSION + 1, sapa_version="9.9.9")
    elif case == "missing_part":
        content = _state_with(run, drop=["optimizer"])
    elif case == "bad_rng":
        content = _state_with(run, rng={"torch": [1, 2, 3]})
    out = _fresh_run(tmp_path, run, content)
    ckpt = out / "last.pt"
    cfg = _resume_cfg(run, out)
    if case == "other_model":  # the weights only meet the model once it is built: data comes first
        monkeypatch.setattr(T, "_run_epoch", _refuse)
    else:
        _no_training(monkeypatch)
    with pytest.raises(CheckpointError, match=re.escape(str(ckpt)) + ".*" + expected) as e:
        T.train(cfg)
    assert "\n" not in str(e.value)
    assert ckpt.read_bytes() == content  # nothing overwritten
    # the command line ends the same mistake with one line and status 2
    argv = ["--upsampler", cfg["upsampler"], "--out", str(out), "--seed", str(cfg["seed"]), "--size", "16",
            "--train-samples", "16", "--val-samples", "8", "--batch-size", "8", "--width", "4",
            "--decoder-width", "8", "--stages", "3", "--epochs", "2", "--max-steps-per-epoch", "1",
            "--threads", "1", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        T.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(re.escape(str(ckpt)) + ".*" + expected, err[0]), err


def test_checkpoint_of_other_settings_is_refused_before_training(tmp_path, run, monkeypatch):
    out = _fresh_run(tmp_path, run)
    _no_training(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(str(out)) + ".*upsampler: checkpoint 'sapa-b' vs now 'carafe'"):
        T.train(_resume_cfg(run, out, upsampler="carafe"))


def test_crash_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = dict(TINY, upsampler="bilinear", seed=random.randrange(1000), out=str(tmp_path), epochs=1)
    T.train(cfg)
    good = (tmp_path / "last.pt").read_bytes()
    real_save = torch.save
    calls = []

    def save_half_then_fail(obj, f, *args, **kwargs):
        """Write half of the real bytes, then fail like a full disk."""
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        calls.append(len(buf.getvalue()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        T.train(dict(cfg, epochs=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert calls, "the failing save was never reached"
    assert (tmp_path / "last.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.json"]  # no half file left
    assert load_training_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert [e["epoch"] for e in T.train(dict(cfg, epochs=2))["epochs"]] == [1, 2]


def test_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_checkpoint_holds_only_tensors_and_plain_values(run):
    state = load_training_checkpoint(run / "last.pt")

    def walk(v, where):
        if isinstance(v, torch.Tensor) or v is None or isinstance(v, (bool, int, float, str)):
            return
        assert isinstance(v, (list, tuple, dict)), f"{where}: {type(v).__name__}"
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, x in items:
            walk(x, f"{where}[{k!r}]")

    walk(state, "checkpoint")
    assert state["format"] == "sapa.train.checkpoint" and state["format_version"] == FORMAT_VERSION
    assert state["config"]["upsampler"] == "sapa-b" and state["epoch"] == 1


def test_rng_state_round_trip(tmp_path):
    random.seed(random.randrange(10**6))
    state = rng_state("cpu")
    save_training_checkpoint(tmp_path / "c.pt", dict(model={}, optimizer={}, epoch=0, history=[], config={},
                                                     rng=state))

    def draw():
        return random.random(), float(np.random.rand()), np.random.randn(), torch.rand(3)

    first = draw()
    set_rng_state(load_training_checkpoint(tmp_path / "c.pt")["rng"], "cpu")
    again = draw()
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])


def test_config_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match=r"upsampler_options\['k'\] must be a plain value.*set"):
        T.resolve_config(dict(TINY, upsampler="sapa-b", upsampler_options={"k": {1, 2}}))


# --------------------------------------------------------------------------------------
# state dicts for other code (official checkpoints)
# --------------------------------------------------------------------------------------
def test_load_state_dict_file_formats(tmp_path):
    from safetensors.torch import save_file

    sd = {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4), "n": torch.tensor(7)}
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"meta": {"mmseg_version": "0.x", "CLASSES": ("a", "b"), "iter": 160000}, "state_dict": sd,
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "mmcv.pth")
    torch.save({"model": sd, "epoch": 3}, tmp_path / "wrapped.pt")
    torch.save({"module": sd}, tmp_path / "module.bin")
    save_file(sd, tmp_path / "w.safetensors")
    for name in ("plain.pth", "mmcv.pth", "wrapped.pt", "module.bin", "w.safetensors"):
        got = load_state_dict_file(tmp_path / name)
        assert got.keys() == sd.keys(), name
        for k in sd:
            assert torch.equal(got[k], sd[k]) and got[k].dtype == sd[k].dtype, (name, k)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nosd.pth")
    with pytest.raises(CheckpointError, match=r"nosd\.pth.*keys \['epoch', 'lr'\] but no state dict"):
        load_state_dict_file(tmp_path / "nosd.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_state_dict_file(tmp_path / "missing.pth")


def test_load_state_dict_file_allowlist_is_explicit(tmp_path):
    sd = {"w": torch.randn(3)}
    torch.save({"state_dict": sd, "meta": Meta()}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"m\.pth.*refused.*Meta"):
        load_state_dict_file(tmp_path / "m.pth")
    got = load_state_dict_file(tmp_path / "m.pth", allow=[Meta])
    assert torch.equal(got["w"], sd["w"])
    with pytest.raises(CheckpointError):  # the allowlist was for that one load only
        load_state_dict_file(tmp_path / "m.pth")


# --------------------------------------------------------------------------------------
# stored models: damaged and foreign files
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stored(run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return export_model(run, folder / "m.safetensors")


def _copy_model(stored: Path, folder: Path, name="x") -> Path:
    dest = folder / f"{name}.safetensors"
    dest.write_bytes(stored.read_bytes())
    dest.with_suffix(".json").write_text(stored.with_suffix(".json").read_text())
    return dest


@pytest.mark.parametrize("case, bad_file, expected", [
    ("truncated", "safetensors", "not a safetensors file, or truncated or damaged"),
    ("text", "safetensors", "not a safetensors file"),
    ("foreign_safetensors", "safetensors", "not a stored sapa model"),
    ("other_model", "safetensors", "do not fit the sapa-b Segmenter"),
    ("other_version", "json", r"format version 2, written by sapa 9\.9\.9"),
    ("bad_json", "json", "not valid JSON"),
    ("no_json", "json", "no such file"),
    ("pickle", "pt", r"expected a stored sapa model, a \.safetensors file.*a pickle, which is not read here"),
])
def test_damaged_or_foreign_model_file(tmp_path, stored, case, bad_file, expected):
    from safetensors.torch import save_file

    path = _copy_model(stored, tmp_path)
    cfg_path = path.with_suffix(".json")
    if case == "truncated":
        path.write_bytes(stored.read_bytes()[:1000])
    elif case == "text":
        path.write_text("not weights\n")
    elif case == "foreign_safetensors":
        save_file({"w": torch.randn(2)}, path, metadata={"format": "pt"})
    elif case == "other_model":
        save_model_file(tmp_path / "c.safetensors",
                        Segmenter(6, "carafe", width=4, stages=3, decoder_width=8).state_dict(), {})
        path.write_bytes((tmp_path / "c.safetensors").read_bytes())
    elif case == "other_version":
        blob = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps(dict(blob, format_version=2, sapa_version="9.9.9")))
    elif case == "bad_json":
        cfg_path.write_text(cfg_path.read_text()[:50])
    elif case == "no_json":
        cfg_path.unlink()
    elif case == "pickle":
        torch.save({"config": {}, "model": {}}, tmp_path / "x.pt")
        path = tmp_path / "x.pt"
    named = {"safetensors": path, "json": cfg_path, "pt": path}[bad_file]
    error = FileNotFoundError if case == "no_json" else CheckpointError
    with pytest.raises(error, match=re.escape(str(named)) + ".*" + expected) as e:
        load_model(path)
    assert "\n" not in str(e.value)


def test_stored_model_keeps_config_and_dtypes(stored):
    from safetensors import safe_open

    cfg = model_config(stored)
    assert cfg["upsampler"] == "sapa-b" and cfg["epochs_trained"] == 1
    assert model_config(stored.with_suffix(".json")) == cfg
    with safe_open(str(stored), "pt") as f:
        assert f.metadata()["format"] == "sapa.results.model"
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes <= {torch.float32, torch.int64}
    with pytest.raises(ValueError, match=r"dest must name a \.safetensors file.*m\.pt"):
        export_model(stored.parent, stored.parent / "m.pt")
