"""The segmenter's two decoder arms and the parameter-matched control."""
import pytest
import torch
import torch.nn.functional as F

import sapa
from sapa.lab.models import BilinearConv, Segmenter, available_segmenter_upsamplers, count_parameters


@pytest.mark.parametrize("stages", [3, 4])
def test_segformer_arm_structure(one_thread, stages):
    m = Segmenter(5, "sapa-b", width=4, decoder_width=8, stages=stages, head="segformer")
    # level k has a chain of k steps: S (S - 1) / 2 upsamplers, as the SegFormer head's six for S = 4
    assert len(m.upsamplers) == stages * (stages - 1) // 2
    assert [len(c) for c in m.chains] == list(range(1, stages))
    assert sorted(i for c in m.chains for i in c) == list(range(len(m.upsamplers)))
    x = torch.rand(2, 3, 32, 24)
    assert m(x).shape == (2, 5, 32, 24)
    assert m.skip_fusion == "none" and "segformer" in repr(m)


def test_segformer_guides_enter_only_the_upsamplers(one_thread):
    """With an unguided upsampler the guide projections get no gradient at all (no concat)."""
    x = torch.rand(2, 3, 32, 32)
    seg = Segmenter(4, "bilinear", width=4, decoder_width=8, head="segformer")
    seg(x).square().mean().backward()
    assert all(p.grad is None for p in seg.laterals.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seg.proj.parameters())
    unet = Segmenter(4, "bilinear", width=4, decoder_width=8, head="unet")
    unet(x).square().mean().backward()
    assert all(p.grad is not None for p in unet.laterals.parameters())  # the U-Net arm concatenates
    guided = Segmenter(4, "sapa-b", width=4, decoder_width=8, head="segformer")
    guided(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in guided.laterals.parameters())


def test_segformer_bilinear_has_no_full_resolution_detail(one_thread):
    """Bilinear in the SegFormer arm: the logits are smooth at full resolution (x2 of level 1)."""
    torch.manual_seed(torch.seed() % 2**31)
    m = Segmenter(3, "bilinear", width=4, decoder_width=8, head="segformer", stages=3).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        feats = m.encode(x)
        u = [m.proj[0](feats[1]), m.proj[1](feats[2])]
        up = [F.interpolate(u[0], size=(16, 16), mode="bilinear", align_corners=False),
              F.interpolate(F.interpolate(u[1], size=(8, 8), mode="bilinear", align_corners=False),
                            size=(16, 16), mode="bilinear", align_corners=False)]
        expected = m.head(m.fuse(torch.cat(up, 1)))
        torch.testing.assert_close(m(x), expected)


def test_head_arguments_are_checked():
    with pytest.raises(ValueError, match="head"):
        Segmenter(3, head="fpn")
    with pytest.raises(ValueError, match="never fuses the guide"):
        Segmenter(3, head="segformer", skip_fusion="concat")
    assert Segmenter(3, width=4).skip_fusion == "concat"
    with pytest.raises(ValueError, match="unknown upsampler"):
        Segmenter(3, "bicubic")


def test_bilinear_conv_matches_carafe_params_and_starts_as_bilinear(one_thread):
    C = 16
    ctrl = BilinearConv(C, C)
    carafe = sapa.build_upsampler("carafe", C, guide_channels=C)
    assert abs(count_parameters(ctrl) - count_parameters(carafe)) <= 5 * C + 1
    small = BilinearConv(C, C, match="carafe", compressed_channels=8)
    assert abs(count_parameters(small) - count_parameters(
        sapa.build_upsampler("carafe", C, guide_channels=C, compressed_channels=8))) <= 5 * C + 1
    x, y = torch.randn(2, C, 5, 7, dtype=torch.float64), torch.randn(2, C, 10, 14, dtype=torch.float64)
    ctrl = ctrl.double()
    torch.testing.assert_close(ctrl(x, y), F.interpolate(x, size=(10, 14), mode="bilinear", align_corners=False))
    assert ctrl(x).shape == (2, C, 10, 14)
    # it learns: one gradient step moves it away from plain bilinear
    ctrl(x, y).square().sum().backward()
    assert ctrl.conv2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="x must be"):
        ctrl(torch.randn(2, C + 1, 5, 7, dtype=torch.float64))
    assert "bilinear+conv" in available_segmenter_upsamplers()
    seg = Segmenter(3, "bilinear+conv", width=4, decoder_width=8, head="segformer")
    assert seg(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_segformer_run_exports_and_loads(tmp_path, one_thread):
    from sapa.lab.results import export_model, load_model
    from sapa.lab.train import train

    run = tmp_path / "run"
    result = train(dict(upsampler="bilinear+conv", head="segformer", dataset="textures", profile="quick", size=16,
                        train_samples=8, val_samples=4, epochs=1, batch_size=4, width=4, decoder_width=8, stages=3,
                        max_steps_per_epoch=1, out=str(run), progress=False))
    dest = export_model(run, tmp_path / "m.safetensors")
    model = load_model(dest)
    assert model.head_arm == "segformer" and model.upsampler_name == "bilinear+conv"
    image = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(image), result["model"].eval()(image))
