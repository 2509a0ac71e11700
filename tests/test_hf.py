"""sapa.hf: the 15 upsamplers inside Hugging Face's SegformerForSemanticSegmentation.

Tiny random-init configs only (nothing is downloaded); skipped when transformers is absent.
"""
import csv
import io
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import sapa  # noqa: E402
import sapa.hf as H  # noqa: E402
import sapa.lab.hf as L  # noqa: E402  the book's trained SegFormer experiment
from sapa.upsamplers import _REGISTRY, _options_of  # noqa: E402

NAMES = sapa.available_upsamplers()


def _opts(name):
    # the pure-PyTorch SAPA backend: this file tests the SegFormer wiring, not the kernels
    # (and skips the C++ kernel's first-use build)
    return {"backend": "torch"} if "backend" in _options_of(_REGISTRY[name]) else {}


def _cfg(**kw):
    return H.tiny_config(num_labels=4, hidden_sizes=(16, 32, 64, 128), decoder_hidden_size=32, **kw)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", NAMES)
def test_every_upsampler_forward_backward(name):
    torch.manual_seed(0)
    model = H.segformer_with_upsampler(_cfg(), name, **_opts(name))
    assert model.config.sapa_upsampler == name
    ups = model.decode_head.upsamplers
    assert len(ups) == (0 if name == "bilinear" else 6)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 4, (2, 64, 64))
    out = model(pixel_values=x, labels=labels)
    assert out.logits.shape == (2, 4, 16, 16)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    enc = next(model.segformer.parameters())
    assert enc.grad is not None and torch.isfinite(enc.grad).all()
    for p in ups.parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all()


def test_bilinear_is_the_stock_head():
    torch.manual_seed(1)
    model = transformers.SegformerForSemanticSegmentation(_cfg()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(pixel_values=x).logits
        H.replace_upsampling(model, "bilinear")
        after = model(pixel_values=x).logits
    assert isinstance(model.decode_head, H.UpsamplingDecodeHead)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_conversion_keeps_head_weights_and_keys():
    torch.manual_seed(2)
    model = transformers.SegformerForSemanticSegmentation(_cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    H.replace_upsampling(model, "sapa-b", **_opts("sapa-b"))
    after = model.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v)
    new = set(after) - set(before)
    assert new and all(k.startswith("decode_head.upsamplers.") for k in new)
    # converting again (another upsampler) replaces the upsamplers, keeps the rest
    H.replace_upsampling(model, "carafe")
    assert len(model.decode_head.upsamplers) == 6 and model.config.sapa_upsampler == "carafe"
    again = model.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(again[k], v)


def test_labels_give_the_usual_loss():
    torch.manual_seed(3)
    model = H.segformer_with_upsampler(_cfg(), "sapa-b", **_opts("sapa-b")).eval()
    x, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    labels[0, :4] = 255  # ignored pixels
    with torch.no_grad():
        out = model(pixel_values=x, labels=labels)
        up = F.interpolate(out.logits, size=(64, 64), mode="bilinear", align_corners=False)
        ref = F.cross_entropy(up, labels, ignore_index=255)
    torch.testing.assert_close(out.loss, ref)
    assert model(pixel_values=x).loss is None


def test_guides():
    torch.manual_seed(4)
    x = torch.randn(1, 3, 64, 64)
    model = H.segformer_with_upsampler(_cfg(), "sapa-b", guide="encoder", **_opts("sapa-b"))
    assert model(pixel_values=x).logits.shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="guide"):
        H.segformer_with_upsampler(_cfg(), "fade", guide="encoder")
    with pytest.raises(ValueError, match="guide must be one of"):
        H.segformer_with_upsampler(_cfg(), "sapa-b", guide="skip")


def test_state_dict_round_trip():
    torch.manual_seed(5)
    a = H.segformer_with_upsampler(_cfg(), "sapa-b", **_opts("sapa-b"))
    # move the weights away from their init so the check is not trivial
    with torch.no_grad():
        for p in a.decode_head.upsamplers.parameters():
            p.add_(0.05 * torch.randn_like(p))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(6)
    b = H.segformer_with_upsampler(_cfg(), "sapa-b", **_opts("sapa-b"))
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(b(pixel_values=x).logits, a(pixel_values=x).logits, rtol=0, atol=0)


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(7)
    a = H.segformer_with_upsampler(_cfg(), "carafe", kernel_size=3).eval()
    a.save_pretrained(tmp_path)
    b = H.from_pretrained(tmp_path)
    assert b.config.sapa_upsampler == "carafe" and b.config.sapa_upsampler_options == {"kernel_size": 3}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(b(pixel_values=x).logits, a(pixel_values=x).logits)
    with pytest.raises(FileNotFoundError):
        H.from_pretrained(tmp_path / "nothing")


def test_a_few_steps_lower_the_loss_on_textures():
    from sapa.lab.data import TexturedRegions

    torch.manual_seed(8)
    model = H.segformer_with_upsampler(_cfg(), "sapa-b", **_opts("sapa-b"))
    ds = TexturedRegions(64, size=64, num_classes=4, seed=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(24):
        idx = [(step * 8 + i) % len(ds) for i in range(8)]
        img = torch.stack([ds[i][0] for i in idx])
        mask = torch.stack([ds[i][1] for i in idx])
        loss = model(pixel_values=img, labels=mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first, losses


def test_bad_input():
    with pytest.raises(ValueError, match="unknown upsampler 'nope'"):
        H.segformer_with_upsampler(_cfg(), "nope")
    with pytest.raises(TypeError, match="string name"):
        H.segformer_with_upsampler(_cfg(), 3)
    with pytest.raises(TypeError, match="SegformerForSemanticSegmentation"):
        H.replace_upsampling(torch.nn.Linear(2, 2), "sapa-b")
    with pytest.raises(TypeError, match="SegformerForSemanticSegmentation"):
        H.replace_upsampling(transformers.SegformerModel(_cfg()), "sapa-b")
    with pytest.raises(TypeError, match="SegformerConfig"):
        H.segformer_with_upsampler({"hidden_sizes": [8]}, "sapa-b")
    with pytest.raises(TypeError, match="unknown option"):
        H.segformer_with_upsampler(_cfg(), "sapa-b", nonsense=1)
    model = transformers.SegformerForSemanticSegmentation(_cfg())
    head = model.decode_head
    with pytest.raises(ValueError):
        H.replace_upsampling(model, "nope")
    assert model.decode_head is head  # untouched after a refusal
    # integer-scale upsamplers need sides that are multiples of 32
    m = H.segformer_with_upsampler(_cfg(), "deconv")
    with pytest.raises(ValueError, match="multiples of 32"):
        m(pixel_values=torch.randn(1, 3, 72, 72))


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install sapa\[hf\]"):
        H.tiny_config()


def test_overhead_table_small():
    t = H.overhead_table(_cfg(), size=64, names=["bilinear", "sapa-b", "carafe", "fade"])
    rows = {r["name"]: r for r in t["rows"]}
    assert rows["bilinear"]["d_params"] == 0 and rows["bilinear"]["d_macs"] == 0
    C, d = 32, 32
    # six SAPA-B modules: 2Cd weights + 2d biases + two LayerNorms (4C)
    assert rows["sapa-b"]["params"] == 6 * (2 * C * d + 2 * d + 4 * C)
    # SAPA-B's counted MACs equal the Table 1 formula (LayerNorms left out, as the paper)
    assert rows["sapa-b"]["macs"] == rows["sapa-b"]["table1_macs"]
    assert rows["fade"]["table1_macs"] is None and rows["fade"]["paper_d_gflops"] is None
    assert rows["sapa-b"]["paper_d_gflops"] == 1.02
    assert [s[:2] for s in t["steps"]] == [(3, 2), (3, 1), (3, 0), (2, 1), (2, 0), (1, 0)]
    assert t["model_params"] > 0 and t["model_macs"] > 0
    text = H.format_overhead_table(t)
    assert "sapa-b" in text and "13.74" in text
    with pytest.raises(ValueError, match="multiple of 32"):
        H.overhead_table(_cfg(), size=70)


def test_cli_table_and_user_mistakes(capsys):
    assert H.main(["--table", "--config", "tiny", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "sapa-d" in out and "dysample" in out
    assert H.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert L.main([]) == 2
    assert L.main(["--train", "--upsamplers", "nope", "--out", "/tmp/unused.csv"]) == 2
    assert "unknown upsampler" in capsys.readouterr().err


def test_sweep_is_append_only_and_resumable(tmp_path, monkeypatch):
    setup = dict(L.EXPERIMENT, train_samples=8, val_samples=8, batch_size=8, epochs=1)
    out = tmp_path / "segformer.csv"
    rows = L.run_sweep(out, ["bilinear", "nearest"], [0], setup, command="test", log=lambda *a: None)
    assert [(r["upsampler"], r["seed"]) for r in rows] == [("bilinear", 0), ("nearest", 0)]
    text = out.read_text()
    meta = H.json.loads(out.with_suffix(".json").read_text())
    assert meta["command"] == "test" and set(meta["curves"]) == {"bilinear/0", "nearest/0"}
    # a rerun trains nothing and changes nothing
    calls = []
    monkeypatch.setattr(L, "train_segformer", lambda *a, **k: calls.append(a))
    L.run_sweep(out, ["bilinear", "nearest"], [0], setup, log=lambda *a: None)
    assert calls == [] and out.read_text() == text
    # another setup is refused, the file kept
    with pytest.raises(ValueError, match="another setup"):
        L.run_sweep(out, ["bilinear"], [0], dict(setup, epochs=2), log=lambda *a: None)
    assert out.read_text() == text
    # the CLI says so in one line
    assert L.main(["--train", "--epochs", "2", "--out", str(out)]) == 2
    # load_results finds it through $SAPA_RESULTS_DIR
    monkeypatch.setenv("SAPA_RESULTS_DIR", str(tmp_path))
    got, meta2 = L.load_results("segformer")
    assert len(got) == 2 and isinstance(got[0]["miou"], float) and meta2["command"] == "test"
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == L.CSV_FIELDS
