"""sapa.from_official: every documented form (a name, an official class name, sapa.SAPA, an
upsampler class; a state dict, a checkpoint dict, a file) gives the module that computes the
official module's output with the same weights; a checkpoint of another variant, or with shapes
that disagree, is refused with a ValueError that says what it is. Also SAPA.forward refusing the
official (y, x) argument order.

The official modules are the float64 re-implementations of tests/test_upsamplers_official.py
(written from the public code; see that file)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import sapa
from sapa.upsamplers import (
    A2U, CARAFE, FADE, Bilinear, DySample, IndexNetHIN, IndexNetM2O, SAPADynamic, SAPAUpsampler, build_upsampler,
)
from test_upsamplers_official import (
    OfficialA2U, OfficialCARAFEPack, OfficialDySample, OfficialFADE, OfficialHIN, OfficialM2O, OfficialSAPADeform,
    OfficialSAPAExp, _randomise,
)

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64
SAPA_REF = {"backend": "reference"}  # no C++ build in these tests


def _official(make, seed=0):
    """The official module (float64, eval) with random weights that float32 holds exactly
    (from_official builds float32 modules; .double() then gives the same weights)."""
    off = make().to(DT)
    _randomise(off, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in list(off.parameters()) + list(off.buffers()):
            if t.is_floating_point():
                t.copy_(t.float().double())
    return off.eval()


def _same_output(module, official, C, Cy, H, W, guided=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, H, W, generator=g, dtype=DT)
    y = torch.randn(2, Cy, 2 * H, 2 * W, generator=g, dtype=DT)
    module = module.double()
    with torch.no_grad():
        ref = official(y, x) if guided else official(x)
        out = module(x, y) if guided else module(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# official module, C, C_y, low-res (H, W), guided
OFFICIAL = {
    "sapa-b": (lambda: OfficialSAPAExp(10, 8, "encoder_only", 3, 6), 8, 10, (4, 5), True),
    "sapa-g": (lambda: OfficialSAPAExp(10, 8, "gate", 3, 6), 8, 10, (4, 5), True),
    "sapa-p": (lambda: OfficialSAPAExp(10, 8, "cat", 3, 6), 8, 10, (4, 5), True),
    "sapa-d": (lambda: OfficialSAPADeform(12, 8, embedding_dim=4), 8, 12, (4, 5), True),
    "fade": (lambda: OfficialFADE(8), 8, 8, (4, 4), True),
    "carafe": (lambda: OfficialCARAFEPack(8, up_kernel=3, compressed_channels=6), 8, 8, (4, 5), False),
    "dysample": (lambda: OfficialDySample(8), 8, 8, (4, 5), False),
    "indexnet-hin": (lambda: OfficialHIN(6), 5, 6, (3, 4), True),
    "indexnet-m2o": (lambda: OfficialM2O(6), 6, 6, (3, 4), True),
    "a2u": (lambda: OfficialA2U(32), 5, 32, (4, 3), True),
}
#: what the state dict cannot tell: SAPA's window size; the sizes of IndexNet and A2U
GIVEN = {"sapa-b": dict(kernel_size=3, **SAPA_REF), "sapa-g": dict(kernel_size=3, **SAPA_REF),
         "sapa-p": dict(kernel_size=3, **SAPA_REF), "indexnet-hin": dict(in_channels=5, guide_channels=6),
         "indexnet-m2o": dict(in_channels=6), "a2u": dict(in_channels=5, guide_channels=32)}
CLASSES = {"sapa-d": SAPADynamic, "fade": FADE, "carafe": CARAFE, "dysample": DySample,
           "indexnet-hin": IndexNetHIN, "indexnet-m2o": IndexNetM2O, "a2u": A2U}


def _case(name, seed=0):
    make, C, Cy, (H, W), guided = OFFICIAL[name]
    return _official(make, seed), (C, Cy, H, W, guided)


# ------------------------------------------------------------------------------------
# the documented forms
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OFFICIAL))
def test_a_name_gives_the_official_output(name):
    off, dims = _case(name)
    m = sapa.from_official(name, off.state_dict(), **GIVEN.get(name, {}))
    assert m.name == name and not m.training
    _same_output(m, off, *dims)


@pytest.mark.parametrize("variant", ["B", "G", "P"])
def test_sapa_class_gives_a_bare_sapa_with_the_variant_of_the_keys(variant):
    off, dims = _case(f"sapa-{variant.lower()}")
    m = sapa.from_official(sapa.SAPA, off.state_dict(), **GIVEN["sapa-b"])
    assert type(m) is sapa.SAPA and not m.training
    assert (m.variant, m.in_channels, m.guide_channels, m.embedding_dim, m.kernel_size) == (variant, 8, 10, 6, 3)
    _same_output(m, off, *dims)


@pytest.mark.parametrize("name", list(CLASSES) + ["sapa-b", "sapa-g", "sapa-p"])
def test_an_upsampler_class_gives_that_upsampler(name):
    cls = CLASSES.get(name, SAPAUpsampler)
    off, dims = _case(name, seed=2)
    m = sapa.from_official(cls, off.state_dict(), **GIVEN.get(name, {}))
    assert type(m) is cls and m.name == name and not m.training
    _same_output(m, off, *dims)


@pytest.mark.parametrize("official_name, name", [
    ("SAPA", "sapa-b"), ("SAPADeform", "sapa-d"), ("CARAFEPack", "carafe"), ("FADE", "fade"),
    ("DySample", "dysample"), ("HolisticIndexBlock", "indexnet-hin"), ("DepthwiseM2OIndexBlock", "indexnet-m2o"),
    ("InterChannelUpDown", "a2u"), ("SAPAExp", "sapa-b"), ("SAPAExp", "sapa-g"), ("SAPAExp", "sapa-p"),
])
def test_official_class_names(official_name, name):
    off, _ = _case(name)
    m = sapa.from_official(official_name, off.state_dict(), **GIVEN.get(name, {}))
    assert m.name == name  # SAPAExp: the q_mode is read from the keys


def test_sizes_and_options_of_sapa_d_and_dysample_are_read():
    # SAPA-D with GroupNorm, no biases, low-res offsets, 2 groups of 3 dims, 5 points
    make = lambda: OfficialSAPADeform(32, 64, embedding_dim=3, high_offset=False, norm=True,  # noqa: E731
                                      qkv_bias=False, groups=2, num_point=5)
    off = _official(make, seed=3)
    m = sapa.from_official("sapa-d", off.state_dict(), groups=2, high_offset=False)
    assert (m.in_channels, m.guide_channels, m.embedding_dim, m.groups, m.points) == (64, 32, 3, 2, 5)
    assert (m.norm, m.qkv_bias, m.high_offset) == (True, False, False)
    _same_output(m, off, 64, 32, 3, 4)
    m = sapa.from_official("sapa-d", off.state_dict(), embedding_dim=3, high_offset=False)  # groups from d
    assert m.groups == 2
    # DySample+ (dynamic scope), 2 groups
    off = _official(lambda: OfficialDySample(8, groups=2, dyscope=True), seed=4)
    m = sapa.from_official("dysample", off.state_dict())
    assert (m.groups, m.dyscope) == (2, True)
    _same_output(m, off, 8, 8, 3, 5, guided=False)


def test_files_checkpoint_dicts_prefix_and_dataparallel(tmp_path):
    off, dims = _case("sapa-g")
    sd = off.state_dict()
    pth = tmp_path / "net.pth"
    torch.save({"state_dict": {"decode_head.up.0." + k: v for k, v in sd.items()}, "epoch": 3}, pth)
    m = sapa.from_official("sapa-g", pth, prefix="decode_head.up.0.", **GIVEN["sapa-g"])
    _same_output(m, off, *dims)
    whole = {"decode_head.up.0." + k: v for k, v in sd.items()}
    whole["decode_head.cls.weight"] = torch.zeros(3)  # the rest of the network
    m = sapa.from_official("sapa-g", whole, prefix="decode_head.up.0.", **GIVEN["sapa-g"])
    _same_output(m, off, *dims)
    from safetensors.torch import save_file

    st = tmp_path / "sapa_g.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    m = sapa.from_official(sapa.SAPA, str(st), **GIVEN["sapa-g"])
    _same_output(m, off, *dims)
    m = sapa.from_official(sapa.SAPA, {"model": {"module." + k: v for k, v in sd.items()}}, **GIVEN["sapa-g"])
    _same_output(m, off, *dims)


# ------------------------------------------------------------------------------------
# a checkpoint of another variant or design: say which, and what to pass
# ------------------------------------------------------------------------------------
def _sd(name, seed=0):
    return _case(name, seed)[0].state_dict()


@pytest.mark.parametrize("asked", [sapa.SAPA, SAPAUpsampler, "sapa-b", "SAPA", "SAPAExp"])
def test_a_sapa_d_checkpoint_for_a_sapa_module_says_pass_sapa_d(asked):
    for sd in (_sd("sapa-d"), _official(lambda: OfficialSAPADeform(32, 32, 4, norm=True)).state_dict()):
        with pytest.raises(ValueError, match=r"this is a SAPA-D checkpoint: pass 'sapa-d'"):
            sapa.from_official(asked, sd)


@pytest.mark.parametrize("have, asked", [
    ("sapa-g", "sapa-b"), ("sapa-p", "sapa-b"), ("sapa-b", "sapa-g"), ("sapa-p", "sapa-g"), ("sapa-b", "sapa-p"),
    ("sapa-b", "sapa-d"), ("sapa-b", SAPADynamic), ("fade", "carafe"), ("carafe", FADE), ("dysample", "sapa-d"),
    ("sapa-d", "dysample"), ("a2u", "indexnet-hin"), ("indexnet-m2o", IndexNetHIN), ("indexnet-hin", "a2u"),
    ("fade", sapa.SAPA), ("carafe", SAPAUpsampler),
])
def test_another_variant_or_design_is_named(have, asked):
    label = {"sapa-b": "SAPA-B", "sapa-g": "SAPA-G", "sapa-p": "SAPA-P", "sapa-d": "SAPA-D", "fade": "FADE",
             "carafe": "CARAFE", "dysample": "DySample", "a2u": "A2U", "indexnet-hin": "IndexNet-HIN",
             "indexnet-m2o": "IndexNet-M2O"}[have]
    with pytest.raises(ValueError, match=rf"this is an? {label} checkpoint: pass '{have}' \(name_or_module_class="):
        sapa.from_official(asked, _sd(have), **GIVEN.get(have, {}))


def test_checkpoints_of_modules_without_a_counterpart_are_named():
    # tiny-smart/sapa sapa_base.py: 1x1 convolutions and GroupNorm (not SAPA.py's Linear + LayerNorm)
    g = torch.Generator().manual_seed(0)
    base = {"norm_y.weight": torch.ones(32), "norm_y.bias": torch.zeros(32), "norm_x.weight": torch.ones(32),
            "norm_x.bias": torch.zeros(32), "q.weight": torch.randn(8, 32, 1, 1, generator=g),
            "q.bias": torch.zeros(8), "k.weight": torch.randn(8, 32, 1, 1, generator=g), "k.bias": torch.zeros(8)}
    for asked in (sapa.SAPA, "sapa-b", "SAPA"):
        with pytest.raises(ValueError, match=r"sapa_base\.py.*'q\.weight' has shape \(8, 32, 1, 1\)"):
            sapa.from_official(asked, base)
    # SAPAExp(v_embed=True): a value projection that sapa.SAPA does not have
    sd = dict(_sd("sapa-b"), **{"v.weight": torch.randn(8, 8, generator=g), "v.bias": torch.zeros(8)})
    with pytest.raises(ValueError, match=r"'v\.weight'.*v_embed"):
        sapa.from_official(sapa.SAPA, sd)


# ------------------------------------------------------------------------------------
# shapes that disagree, bad arguments
# ------------------------------------------------------------------------------------
def test_mismatched_shapes_name_the_official_key_and_both_shapes_before_building(monkeypatch):
    import sapa.official as official

    built = []
    real_build = official.build_upsampler

    def spy(*args, **kwargs):
        m = real_build(*args, **kwargs)
        built.append({t.device.type for t in m.state_dict().values()})
        return m

    monkeypatch.setattr(official, "build_upsampler", spy)
    sd = dict(_sd("sapa-b"), **{"k.weight": torch.randn(6, 9)})  # norm_x says C = 8
    with pytest.raises(ValueError, match=r"'k\.weight' has shape \(6, 9\), expected \(6, 8\)"):
        sapa.from_official("sapa-b", sd, **SAPA_REF)
    sd = dict(_sd("carafe"))
    sd["content_encoder.weight"] = torch.randn(37, 6, 3, 3)  # not s^2 K^2 kernels: K = isqrt(37 // 4) = 3
    with pytest.raises(ValueError,
                       match=r"'content_encoder\.weight' has shape \(37, 6, 3, 3\), expected \(36, 6, 3, 3\)"):
        sapa.from_official(CARAFE, sd)
    sd = dict(_sd("fade"))
    del sd["kernel_generator.conv2_bias"]
    sd["kernel_generator.extra"] = torch.zeros(1)
    with pytest.raises(ValueError,
                       match=r"missing.*'kernel_generator\.conv2_bias'.*\n.*unexpected.*'kernel_generator\.extra'"):
        sapa.from_official("fade", sd)
    assert built and all(devices == {"meta"} for devices in built)  # only shape-only probes were built


def test_sizes_that_cannot_be_read_are_named():
    with pytest.raises(ValueError, match=r"'q\.weight' has 18 output channels.*groups=4"):
        sapa.from_official("sapa-d", _official(lambda: OfficialSAPADeform(12, 8, groups=2, embedding_dim=9))
                           .state_dict())
    with pytest.raises(ValueError, match=r"'offset\.weight' has 32 output channels.*scale_factor=3"):
        sapa.from_official("dysample", _sd("dysample"), scale_factor=3)
    with pytest.raises(ValueError, match=r"embedding_dim=5 was given but the checkpoint has embedding_dim=4"):
        sapa.from_official("sapa-d", _sd("sapa-d"), embedding_dim=5, groups=4)


def test_mistakes_are_named():
    sd = _sd("sapa-b")
    with pytest.raises(ValueError, match="in_channels=4 was given but the checkpoint has in_channels=8"):
        sapa.from_official("sapa-b", sd, in_channels=4)
    with pytest.raises(ValueError, match="no official module is known for 'bilinear'"):
        sapa.from_official("bilinear", sd)
    with pytest.raises(ValueError, match="Bilinear has no official module"):
        sapa.from_official(Bilinear, sd)
    with pytest.raises(ValueError, match="no key 'norm_x.weight'"):
        sapa.from_official("sapa-b", {k: v for k, v in sd.items() if not k.startswith("norm_x")})
    with pytest.raises(ValueError, match="pass in_channels"):
        sapa.from_official("a2u", {"x.weight": torch.ones(1)})
    with pytest.raises(ValueError, match=r"not those of an official SAPA-B, -G or -P module"):
        sapa.from_official(sapa.SAPA, {"x.weight": torch.ones(1)})
    with pytest.raises(TypeError, match="name_or_module_class"):
        sapa.from_official(3, sd)
    with pytest.raises(TypeError, match=r"name_or_module_class is an instance of CARAFE.*load_official_state_dict"):
        sapa.from_official(build_upsampler("carafe", 8), _sd("carafe"))
    with pytest.raises(TypeError, match=r"Conv2d is not a module class of sapa"):
        sapa.from_official(nn.Conv2d, sd)
    with pytest.raises(ValueError, match="prefix 'nope.'"):
        sapa.from_official("sapa-b", sd, prefix="nope.")


def test_swapped_arguments_are_refused_before_any_work():
    m = sapa.SAPA(8, 6, **SAPA_REF)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 8, 4, 5, generator=g), torch.randn(2, 6, 8, 10, generator=g)
    with pytest.raises(ValueError, match=r"look swapped \(x has guide_channels=6 channels and y has in_channels=8\)"):
        m(y, x)
    sq = sapa.SAPA(8, **SAPA_REF)  # equal channels: the sizes tell
    x8 = torch.randn(2, 8, 4, 5, generator=g)
    y8 = torch.randn(2, 8, 8, 10, generator=g)
    with pytest.raises(ValueError, match=r"look swapped \(x is larger than the guide y\).*forward\(y, x\)"):
        sq(y8, x8)
    assert sq(x8, y8).shape == (2, 8, 8, 10)
    # an ordinary channel mistake is still reported as such
    with pytest.raises(ValueError, match="x must have in_channels=8"):
        m(torch.randn(2, 7, 4, 5, generator=g), y)
