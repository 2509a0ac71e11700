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


# --------------------------------------------------------------------------------------
# the chapter's analysis (sapa.lab.hf): fake stored rows, no stored file needed
# --------------------------------------------------------------------------------------
def _fake_rows(diffs=(0.010, 0.012, 0.008), seed=3):
    """Stored-CSV-shaped rows: bilinear and SAPA-B per seed, SAPA-B ahead by ``diffs``."""
    import random

    rng = random.Random(seed)
    rows = []
    for k, d in enumerate(diffs):
        base = 0.7 + 0.05 * rng.random()
        for name, v in (("bilinear", base), ("sapa-b", base + d)):
            rows.append(dict(upsampler=name, seed=k, epochs=4, train_samples=32, steps=8, miou=v,
                             boundary_iou=v - 0.3, pixel_acc=0.9, seconds=10.0 + k))
    return rows


def _fake_meta(late=0.002, epochs=4):
    curves = {}
    for k in range(3):
        for name in ("bilinear", "sapa-b"):
            curves[f"{name}/{k}"] = [dict(epoch=e + 1, miou=0.7 - late * (epochs - 1 - e),
                                          boundary_iou=0.4 + 0.01 * e) for e in range(epochs)]
    return dict(command="python -m sapa.lab.hf --train", seconds=600.0, date="2026-12-03",
                machine="x86_64, 2 CPUs, 1 threads, Linux", torch="2.x", transformers="5.x", curves=curves)


def test_stored_results_says_why_it_is_absent(tmp_path, monkeypatch):
    from sapa.lab import results as R

    monkeypatch.setenv("SAPA_RESULTS_DIR", str(tmp_path))
    rows, meta, status = L.stored_results("segformer")
    assert rows is None and meta == {}
    assert "not there yet" in status and L.STORED_COMMAND in status

    def fail(name, *a, **k):
        raise R.StoredFileUnavailable(name, "download", "timed out", "https://example.invalid/")

    monkeypatch.setattr(R, "stored_file", fail)
    rows, meta, status = L.stored_results("segformer")
    assert rows is None and "could not be downloaded (timed out)" in status

    def old_style(name, *a, **k):  # a FileNotFoundError without a reason still gives a sentence
        raise FileNotFoundError("no such file")

    monkeypatch.setattr(R, "stored_file", old_style)
    assert "could not be read (no such file)" in L.stored_results("segformer")[2]


def test_stored_results_status_counts_runs_and_seeds(tmp_path, monkeypatch):
    out = tmp_path / "segformer.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=L.CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in _fake_rows():
            w.writerow(dict(r, val_loss=0.1, first_loss=1.0, last_loss=0.2, params=10, setup="x"))
    monkeypatch.setenv("SAPA_RESULTS_DIR", str(tmp_path))
    rows, meta, status = L.stored_results("segformer")
    assert len(rows) == 6 and meta == {}
    assert status.startswith("The stored `segformer.csv` holds 6 runs: Bilinear and SAPA-B with 3 seeds (0, 1 and 2).")
    assert "`segformer.json`" in status


def test_paired_sentences_follow_the_interval():
    rows = _fake_rows()
    d = L.paired(rows)
    assert set(d) == {"miou", "boundary_iou"} and d["miou"]["n"] == 3
    assert d["miou"]["mean"] == pytest.approx(0.010, abs=1e-12)
    assert d["miou"]["ci_low"] > 0
    assert "excludes zero" in L.paired_sentence(d) and "t quantile is 4.30" in L.paired_sentence(d)
    assert L.reading_sentence(d).startswith("Here the mIoU interval excludes zero, so this experiment separates")
    noisy = L.paired(_fake_rows(diffs=(0.02, -0.015, 0.001)))
    assert "includes zero" in L.paired_sentence(noisy)
    assert "does not separate" in L.reading_sentence(noisy)
    header, table = L.paired_table(noisy)
    assert [r[0] for r in table] == ["mIoU", "boundary IoU"]
    # +0.2 points prints as +0.20; a tiny non-zero mean never as 0.00
    assert table[0][2] == "+0.20"
    tiny = L.paired(_fake_rows(diffs=(0.00004, 0.00005, 0.00003)))
    assert L.paired_table(tiny)[1][0][2] == "+0.004"
    assert "+0.004 mIoU points" in L.summary_sentence(tiny)
    # fewer than two common seeds, or no rows: no numbers, a sentence
    assert L.paired(_fake_rows()[:3]) is None and L.paired(None) is None
    for f in (L.paired_sentence, L.reading_sentence, L.summary_sentence):
        text = f(None)
        assert text and "(s)" not in text and "nan" not in text


def test_convergence_and_details_from_the_stored_meta():
    rows, meta = _fake_rows(), _fake_meta(late=0.002)
    c = L.convergence(rows, meta)
    assert c["late"] == pytest.approx(0.2) and c["minutes"] == pytest.approx(10.0)
    assert c["seeds"] == [0, 1, 2] and set(c["means"]) == {"bilinear", "sapa-b"}
    text = L.convergence_sentence(rows, meta)
    assert "no run's mIoU moved by more than 0.2 points" in text and "close to where" in text
    assert "10.0 minutes for all 6 runs" in text
    assert "Bilinear" in text and "sapa-b" not in text
    moving = L.convergence_sentence(rows, _fake_meta(late=0.05))
    assert "still moving" in moving
    assert "cannot be shown" in L.convergence_sentence(rows, {})
    assert L.convergence_sentence(None, {}).startswith("Without the stored result")
    details = L.run_details(meta)
    assert "2 CPUs, 1 thread, Linux" in details and "1 threads" not in details
    assert L._machine("x86_64, 16 CPUs, torch threads: 1, Linux") == "x86_64, 16 CPUs, 1 torch thread, Linux"
    assert L.run_details({}) == ""
    with pytest.raises(ValueError, match="empty"):
        L.convergence([], meta)


def test_curves_figure_integer_epochs_and_display_names():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert L.curves_figure({}) is None
    fig = L.curves_figure(_fake_meta(epochs=5))
    try:
        ax0, ax1 = fig.axes[:2]
        ticks = [t for t in ax1.get_xticks() if ax1.get_xlim()[0] <= t <= ax1.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert [t.get_text() for t in ax0.get_legend().get_texts()] == ["Bilinear", "SAPA-B"]
        assert fig.get_figwidth() <= 4.5
    finally:
        plt.close("all")


def test_sapa_g_gap_is_the_omitted_projection():
    t = H.overhead_table(_cfg(), size=64, names=["bilinear", "sapa-b", "sapa-g"], with_model=False)
    g = L.sapa_g_gap(t)
    C, d, steps = 32, 32, 6
    lowres = sum(h * w for _, _, (h, w) in t["steps"])
    assert g["projection_params"] == steps * C * d
    assert g["bias_params"] == steps * (3 * d + 1) and g["norm_params"] == steps * 4 * C
    # the split explains the whole gap to the Table 1 formula, for parameters and MACs
    assert g["params"] - g["formula_params"] == g["projection_params"] + g["bias_params"] + g["norm_params"]
    assert g["macs"] - g["formula_macs"] == g["projection_macs"] + g["mix_macs"] == lowres * (C * d + 3 * d)
    text = L.sapa_g_sentence(g)
    assert "omitted projection" in text and "Unexplained" not in text
    header, rows = L.overhead_rows(t)
    assert [r[0] for r in rows] == ["Bilinear", "SAPA-B", "SAPA-G"]
    with pytest.raises(ValueError, match="sapa-g"):
        L.sapa_g_gap(H.overhead_table(_cfg(), size=64, names=["bilinear"], with_model=False))


def test_head_summary_rows_end_whole():
    model = H.segformer_with_upsampler(_cfg(), "sapa-b", **_opts("sapa-b"))
    header, rows = L.head_summary(model.decode_head)
    assert header == ["module", "type", "maps", "parameters"]
    names = [r[0] for r in rows]
    assert names[:4] == [f"linear_projections.{i}" for i in range(4)]
    up = rows[names.index("upsamplers.0–5")]
    assert up[1].startswith("6 × ") and up[2] == "SAPA-B, 32 channels, K = 5, d = 32"
    per = sum(p.numel() for p in model.decode_head.upsamplers[0].parameters())
    assert up[3] == f"6 × {per:,}"
    assert rows[0][2] == "16 → 32 channels"
    with pytest.raises(TypeError, match="nn.Module"):
        L.head_summary("head")
