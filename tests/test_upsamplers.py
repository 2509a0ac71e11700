"""Tests of the upsampler zoo (sapa.upsamplers)."""

import pytest
import torch
import torch.nn.functional as F

import sapa
from sapa.upsamplers import GUIDED, available_upsamplers, build_upsampler, reassemble

NAMES = available_upsamplers()
INTEGER_SCALE = ("deconv", "pixelshuffle", "carafe", "dysample", "indexnet-hin", "indexnet-m2o", "a2u")
FREE_SIZE = ("nearest", "bilinear", "fade", "sapa-i", "sapa-b", "sapa-p", "sapa-g", "sapa-d")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_names():
    assert set(NAMES) == {
        "nearest", "bilinear", "deconv", "pixelshuffle", "carafe", "indexnet-hin", "indexnet-m2o",
        "a2u", "fade", "dysample", "sapa-i", "sapa-b", "sapa-p", "sapa-g", "sapa-d",
    }
    assert set(GUIDED) <= set(NAMES)
    assert set(INTEGER_SCALE) | set(FREE_SIZE) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_gradients(name):
    torch.manual_seed(0)
    m = build_upsampler(name, 16)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    y = torch.randn(2, 16, 16, 16, requires_grad=True)
    out = m(x, y)
    assert out.shape == (2, 16, 16, 16)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    if name in GUIDED:
        assert y.grad is not None and y.grad.abs().sum() > 0
    else:
        assert y.grad is None  # guide-free: y only gives the size
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"
    assert m.extra_repr() and "in_channels=16" in repr(m)
    assert type(m).__doc__ and "(B, C" in type(m).__doc__


@pytest.mark.parametrize("name", [n for n in NAMES if n not in GUIDED])
def test_guide_free_without_guide(name):
    m = build_upsampler(name, 8, scale_factor=2)
    assert m(torch.randn(1, 8, 5, 6)).shape == (1, 8, 10, 12)


@pytest.mark.parametrize("name", ["nearest", "bilinear"])
def test_guide_free_follows_guide_size(name):
    m = build_upsampler(name, 8)
    assert m(torch.randn(1, 8, 5, 6), torch.randn(1, 3, 11, 13)).shape == (1, 8, 11, 13)


@pytest.mark.parametrize("name", ["fade", "sapa-b", "sapa-g", "sapa-d"])
def test_guided_non_integer_sizes(name):
    m = build_upsampler(name, 8)
    assert m(torch.randn(1, 8, 5, 6), torch.randn(1, 8, 11, 13)).shape == (1, 8, 11, 13)


@pytest.mark.parametrize("s", [3, 4])
@pytest.mark.parametrize("name", ["deconv", "pixelshuffle", "carafe", "dysample", "indexnet-hin", "indexnet-m2o", "a2u"])
def test_other_integer_scales(name, s):
    m = build_upsampler(name, 8, scale_factor=s)
    assert m(torch.randn(2, 8, 4, 5), torch.randn(2, 8, 4 * s, 5 * s)).shape == (2, 8, 4 * s, 5 * s)


# ------------------------------------------------------------------------------------
# float64 gradcheck on tiny inputs, w.r.t. x and y.
# All designs are smooth almost everywhere and are checked. Caveats per name:
# * nearest, indexnet-*: the nearest copy is an index op, linear in x, hence exact;
#   IndexNet's ReLU6 has kinks at 0 and 6 that random inputs do not hit.
# * dysample, sapa-d: bilinear sampling is piecewise linear in the sampling position, with
#   kinks where a point crosses a pixel row/column; offsets are made non-trivial (std 0.3)
#   and random so no point sits within the finite-difference step of a kink.
# * sapa-d at zero offsets would sample exactly at the kinks (integer positions): avoided.
# * sapa-i/b/p/g run on the "reference" backend with K = 3 (speed; the backends are
#   gradchecked in test_ops.py).
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    torch.manual_seed(1)
    opts = {"compressed_channels": 8} if name == "carafe" else {}
    if name in ("sapa-i", "sapa-b", "sapa-p", "sapa-g"):
        # the fast backends' own gradchecks live in test_ops.py; here: the module around it
        opts = {"backend": "reference", "kernel_size": 3}
    m = build_upsampler(name, 4, **opts).double()
    if name in ("dysample", "sapa-d"):
        torch.nn.init.normal_(m.offset.weight, std=0.3)
        torch.nn.init.normal_(m.offset.bias, std=0.3)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=name in GUIDED)
    inputs = (x, y) if name in GUIDED else (x,)
    fn = (lambda a, b: m(a, b)) if name in GUIDED else (lambda a: m(a, y))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


# ------------------------------------------------------------------------------------
# parameter counts from the published designs (formulas, not the code)
# ------------------------------------------------------------------------------------
def expected_params(name, C, Cy, s=2):
    LN = 2 * Cy + 2 * C
    d = 32
    return {
        "nearest": 0,
        "bilinear": 0,
        "deconv": C * C * (2 * s) ** 2 + C,
        "pixelshuffle": s * s * C * C + s * s * C,
        # compressor 1x1 C->64 (+bias), encoder 3x3 64 -> s^2 K^2 (+bias), K = 5
        "carafe": (C * 64 + 64) + (9 * 64 * s * s * 25 + s * s * 25),
        # conv 4x4 Cy->2Cy, BN(2Cy), conv 1x1 2Cy->4, no biases
        "indexnet-hin": 16 * Cy * 2 * Cy + 2 * 2 * Cy + 2 * Cy * 4,
        # four branches: conv 4x4 C->C, BN(C), conv 1x1 C->C
        "indexnet-m2o": 4 * (16 * C * C + 2 * C + C * C),
        # U, V filter generators Cy->1 (+bias), two GroupNorms, P: Cy -> 4 K^2 (+bias), K = 3
        "a2u": 2 * (Cy + 1) + 2 * 2 * Cy + (Cy + 1) * 4 * 9,
        # en 1x1 C->64 (+bias), de 1x1 C->64, shared 3x3 64->25 (+bias), gate C->1 (+bias)
        "fade": (C * 64 + 64) + C * 64 + (9 * 64 * 25 + 25) + (C + 1),
        # offset 1x1 C -> 2 * 4 groups * s^2 (+bias)
        "dysample": (C + 1) * 2 * 4 * s * s,
        "sapa-i": LN,
        "sapa-b": LN + (Cy + 1) * d + (C + 1) * d,
        "sapa-p": LN + (Cy + C + 1) * d + (C + 1) * d,
        "sapa-g": LN + (Cy + 1) * d + 2 * (C + 1) * d + (C + 1),
        # tiny-smart/sapa SAPADeform: q 1x1 Cy -> 4 groups * d, k 1x1 C -> 4 d,
        # offsets 1x1 C -> 4 groups * 9 points * 2 * s^2 (all with bias), no norm
        "sapa-d": (Cy + 1) * 4 * d + (C + 1) * 4 * d + (C + 1) * 4 * 9 * 2 * s * s,
    }[name]


@pytest.mark.parametrize("name", NAMES)
def test_param_counts(name):
    C = 16
    Cy = C if name in ("indexnet-m2o", "fade", "sapa-i") else 24
    m = build_upsampler(name, C, Cy)
    assert sum(p.numel() for p in m.parameters()) == expected_params(name, C, Cy)


def test_param_counts_paper_c256():
    # the paper's Table 1 terms, C = 256, plus what the paper leaves out
    C = 256
    n = lambda name: sum(p.numel() for p in build_upsampler(name, C).parameters())  # noqa: E731
    assert n("carafe") == C * 64 + 36 * 25 * 64 + (64 + 100)  # Cd + 36K^2 d + biases
    assert n("indexnet-hin") == 32 * C * C + 8 * C + 4 * C  # + BatchNorm(2C)
    assert n("indexnet-m2o") == 68 * C * C + 8 * C  # + four BatchNorm(C)
    assert n("a2u") == 4 * 9 * C + 2 * C + (4 * C + 36 + 2)  # + GroupNorms, biases
    assert n("sapa-b") == 2 * C * 32 + (4 * C + 2 * 32)  # + LayerNorms, biases


# ------------------------------------------------------------------------------------
# numerics against independent formulations
# ------------------------------------------------------------------------------------
def test_reassemble_matches_unfold():
    torch.manual_seed(2)
    for (H, W, Hq, Wq, K) in [(5, 6, 10, 12, 5), (4, 4, 9, 7, 3)]:
        x = torch.randn(2, 3, H, W, dtype=torch.float64)
        k = torch.randn(2, K * K, Hq, Wq, dtype=torch.float64)
        rows = sapa.window_centres(Hq, H)
        cols = sapa.window_centres(Wq, W)
        unf = F.unfold(x, K, padding=K // 2).view(2, 3, K * K, H, W)[..., rows, :][..., cols]
        ref = torch.einsum("bkhw,bckhw->bchw", k, unf)
        torch.testing.assert_close(reassemble(x, k, K), ref)


def test_reassemble_bad_kernels():
    with pytest.raises(ValueError, match="kernels"):
        reassemble(torch.randn(1, 2, 4, 4), torch.randn(1, 24, 8, 8), 5)


def test_carafe_uniform_kernels_is_box_filter():
    m = build_upsampler("carafe", 6)
    torch.nn.init.zeros_(m.encoder.weight)
    x = torch.randn(2, 6, 5, 7)
    ref = sapa.nearest_upsample_to(F.avg_pool2d(x, 5, 1, 2, count_include_pad=True), (10, 14))
    torch.testing.assert_close(m(x), ref)


def test_dysample_zero_offsets_is_bilinear():
    m = build_upsampler("dysample", 8)
    torch.nn.init.zeros_(m.offset.weight)
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(m(x), F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def test_sapa_wrapper_matches_module():
    m = build_upsampler("sapa-g", 8, 12, kernel_size=3)
    x, y = torch.randn(2, 8, 4, 4), torch.randn(2, 12, 8, 8)
    torch.testing.assert_close(m(x, y), m.sapa(x, y))


def test_fade_gate_open_returns_guide():
    m = build_upsampler("fade", 4)
    torch.nn.init.zeros_(m.gate.weight)
    torch.nn.init.constant_(m.gate.bias, 50.0)
    x, y = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(m(x, y), y)


def test_indexnet_is_index_times_nearest():
    m = build_upsampler("indexnet-hin", 4)
    x, y = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 6, 10)
    out = m(x, y)
    idx = m.decoder_index(y)
    assert idx.shape == (2, 1, 6, 10) and (idx > 0).all() and (idx < 1).all()
    torch.testing.assert_close(out, idx * sapa.nearest_upsample_to(x, (6, 10)))


@pytest.mark.parametrize("name", ["carafe", "a2u", "fade"])
def test_kernels_are_normalised(name):
    m = build_upsampler(name, 4)
    x, y = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 8, 8)
    k = m.kernels(x) if name == "carafe" else m.kernels(y) if name == "a2u" else m.kernels(x, y)
    torch.testing.assert_close(k.sum(1), torch.ones(1, 8, 8))


# ------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------
def test_unknown_name():
    with pytest.raises(ValueError, match="name"):
        build_upsampler("bicubic", 4)
    with pytest.raises(TypeError, match="name"):
        build_upsampler(3, 4)


def test_unknown_option():
    with pytest.raises(TypeError, match="kernel_sise"):
        build_upsampler("carafe", 4, kernel_sise=3)
    with pytest.raises(TypeError, match="groups"):
        build_upsampler("sapa-b", 4, groups=2)


def test_bad_construction():
    with pytest.raises(TypeError, match="in_channels"):
        build_upsampler("nearest", 4.0)
    with pytest.raises(ValueError, match="scale_factor"):
        build_upsampler("carafe", 4, scale_factor=0)
    with pytest.raises(ValueError, match="guide_channels"):
        build_upsampler("indexnet-m2o", 4, 8)
    with pytest.raises(ValueError, match="guide_channels"):
        build_upsampler("fade", 4, 8)
    with pytest.raises(ValueError, match="groups"):
        build_upsampler("dysample", 6)
    with pytest.raises(ValueError, match="kernel_size"):
        build_upsampler("carafe", 4, kernel_size=4)


@pytest.mark.parametrize("name", GUIDED)
def test_missing_guide(name):
    m = build_upsampler(name, 8)
    with pytest.raises(ValueError, match="y"):
        m(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_x_channels(name):
    m = build_upsampler(name, 8)
    with pytest.raises(ValueError, match=r"in_channels=8.*\(1, 5, 4, 4\)"):
        m(torch.randn(1, 5, 4, 4), torch.randn(1, 8, 8, 8))


@pytest.mark.parametrize("name", GUIDED)
def test_wrong_guide_channels(name):
    m = build_upsampler(name, 8)
    with pytest.raises(ValueError, match=r"guide_channels=8.*\(1, 3, 8, 8\)"):
        m(torch.randn(1, 8, 4, 4), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("name", INTEGER_SCALE)
def test_integer_scale_rejects_other_sizes(name):
    m = build_upsampler(name, 8)
    with pytest.raises(ValueError, match=r"scale_factor.*\(1, 8, 4, 4\).*\(1, 8, 9, 8\)"):
        m(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 9, 8))


@pytest.mark.parametrize("name", GUIDED)
def test_guided_bad_guides(name):
    m = build_upsampler(name, 8)
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="batch"):
        m(x, torch.randn(3, 8, 8, 8))
    with pytest.raises(TypeError, match="y"):
        m(x, torch.randn(2, 8, 8, 8).numpy())
    with pytest.raises(ValueError, match="y"):
        m(x, torch.randn(8, 8, 8))
    if name not in INTEGER_SCALE:
        with pytest.raises(ValueError, match="at least as large"):
            m(x, torch.randn(2, 8, 3, 8))


def test_sapa_d_kernels_and_dysample_offsets():
    m = build_upsampler("sapa-d", 8)
    x, y = torch.randn(2, 8, 4, 5), torch.randn(2, 8, 8, 10)
    w, pts = m.kernels(x, y)
    assert w.shape == (2, 4, 9, 8, 10) and pts.shape == (2, 4, 9, 8, 10, 2)
    torch.testing.assert_close(w.sum(2), torch.ones(2, 4, 8, 10))
    d = build_upsampler("dysample", 8)
    off = d.offsets(x)
    assert off.shape == (2, 2, 4, 8, 10)
    assert d.offsets(x, learned_only=True).abs().max() < 0.05
    torch.testing.assert_close(off[:, :, :, 0::2, 0::2] - off[:, :, :, 1::2, 1::2],
                               d.offsets(x, learned_only=True)[:, :, :, 0::2, 0::2]
                               - d.offsets(x, learned_only=True)[:, :, :, 1::2, 1::2] - 0.5)


def test_fade_kernels_match_float64_formula():
    """FADE's kernels: softmax(conv3x3_{W,b}(P_y y) + up(conv3x3_{W,b}(P_x x))): b in both, as officially."""
    torch.manual_seed(0)
    up = sapa.build_upsampler("fade", 6, 6).double()
    with torch.no_grad():
        up.kernel_bias.normal_()
    x, y = torch.randn(2, 6, 4, 5, dtype=torch.float64), torch.randn(2, 6, 8, 10, dtype=torch.float64)
    W, b = up.kernel_weight, up.kernel_bias
    m_y = F.conv2d(F.conv2d(y, up.compress_y.weight, up.compress_y.bias), W, b, padding=1)
    m_x = F.conv2d(F.conv2d(x, up.compress_x.weight), W, b, padding=1)
    expected = torch.softmax(m_y + m_x.repeat_interleave(2, -2).repeat_interleave(2, -1), dim=1)
    torch.testing.assert_close(up.kernels(x, y), expected)


@pytest.mark.parametrize("B,H,W,sh,sw,K", [(2, 5, 7, 2, 2, 5), (2, 4, 3, 3, 2, 3), (1, 1, 1, 2, 2, 5), (0, 4, 4, 2, 2, 5)])
def test_reassemble_integer_ratio_path_equals_the_gather_path(B, H, W, sh, sw, K):
    """The matmul path (integer ratios) against the gather path, which FlopCounterMode forces;
    outputs and both gradients in float64."""
    from torch.utils.flop_counter import FlopCounterMode

    from sapa.upsamplers import reassemble

    x = torch.randn(B, 3, H, W, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, K * K, sh * H, sw * W, dtype=torch.float64, requires_grad=True)
    fast = reassemble(x, k, K)
    with FlopCounterMode(display=False):
        slow = reassemble(x, k, K)
    torch.testing.assert_close(fast, slow)
    if B:
        g = torch.randn_like(fast)
        for a, b in zip(torch.autograd.grad(fast, (x, k), g), torch.autograd.grad(slow, (x, k), g)):
            torch.testing.assert_close(a, b)


def test_reassemble_upsamplers_compile_fullgraph():
    for name in ("carafe", "fade", "a2u"):
        m = build_upsampler(name, 8)
        x, y = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 12, 12)
        torch.testing.assert_close(torch.compile(m, fullgraph=True, backend="eager")(x, y), m(x, y))


def _sapa_d_definition(m, x, y):
    """SAPA-D as defined (official deform_qk / deform_av): G d key channels and the values
    read by grid_sample at the points, weights softmax over the points."""
    w, pts = m.kernels(x, y)
    vs = sapa.upsamplers.sapa_variants.deform_sample(x, pts, m.groups)
    return (w.unsqueeze(2) * vs).sum(3).reshape(x.shape[0], x.shape[1], *y.shape[-2:])


@pytest.mark.parametrize("opts", [{}, {"norm": True}, {"qkv_bias": False},
                                  {"high_offset": False, "norm": True, "groups": 2, "points": 5}])
@pytest.mark.parametrize("size", [(10, 12), (15, 12), (11, 13)])
@pytest.mark.parametrize("reach,radius", [(0.7, 1), (1.6, 2), (2.5, 3), (4.0, 0)])
def test_sapa_d_fast_paths_equal_the_definition(opts, size, reach, radius):
    """SAPA-D's forward (window path for |offsets| < R <= 3, else one grid_sample of [x, 1])
    against the definition, in float64: outputs and the gradients of x, y and every parameter.
    The offset conv is scaled so that max |offset| = reach (offsets are linear in its weights)."""
    torch.manual_seed(2)
    m = build_upsampler("sapa-d", 8, 6, embedding_dim=5, **opts).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 6, *size, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        scale = reach / float(m.offsets(m.norm_x(x) if m.norm else x, size).abs().max())
        for p in m.offset.parameters():
            p.mul_(scale)
    off = m.offsets(m.norm_x(x) if m.norm else x, size)
    assert m._window_radius(off) == radius
    params = [x, y, *m.parameters()]
    out, ref = m(x, y), _sapa_d_definition(m, x, y)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b)
    if radius:  # the sampling path, forced, agrees too
        m.window_radius_max = 0
        torch.testing.assert_close(m(x, y), ref)


def test_sapa_d_compile_fullgraph():
    m = build_upsampler("sapa-d", 8)
    x, y = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 12, 12)
    torch.testing.assert_close(torch.compile(m, fullgraph=True, backend="eager")(x, y), m(x, y))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sapa_projection_is_the_per_pixel_linear_stored_nchw(bias, channels_last):
    """sapa.modules._project (one matmul per image) = nn.Linear on every pixel, in float64, for
    NCHW and channels-last inputs; the result is contiguous NCHW; gradients agree."""
    from sapa.modules import _project

    torch.manual_seed(3)
    lin = torch.nn.Linear(6, 5, bias=bias).double()
    x = torch.randn(2, 6, 4, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = _project(x, lin)
    ref = lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = [x, *lin.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("C,d,k,padding", [(3, 8, 3, 1), (3, 8, 3, 0), (5, 8, 1, 0), (12, 4, 3, 1)])
def test_compressed_conv_is_the_two_convolutions(bias, C, d, k, padding):
    """base.compressed_conv (one composed conv when cheaper; the compressor's bias through a
    ones map, zero-padded like the compressed map) = conv(compressor(x)), float64, with
    gradients of x and all four parameters."""
    from sapa.upsamplers.base import compressed_conv

    torch.manual_seed(4)
    comp = torch.nn.Conv2d(C, d, 1, bias=bias).double()
    w = torch.randn(7, d, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, C, 5, 6, dtype=torch.float64, requires_grad=True)
    out = compressed_conv(x, comp, w, b, padding)
    ref = F.conv2d(comp(x), w, b, padding=padding)
    torch.testing.assert_close(out, ref)
    params = [x, w, b, *comp.parameters()]
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("ratio", [(1, 1), (2, 2), (3, 1), (1, 4), (2, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_nearest_upsample_integer_path_equals_the_index_rule(ratio, channels_last):
    """windows.nearest_upsample_to's integer-ratio path (stacked copies) against the window
    centre rule by index_select: values and the gradient (the sum over each pixel's copies)."""
    from sapa.windows import window_centres

    torch.manual_seed(5)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    size = (4 * ratio[0], 5 * ratio[1])
    out = sapa.nearest_upsample_to(x, size)
    ref = x.index_select(-2, window_centres(size[0], 4)).index_select(-1, window_centres(size[1], 5))
    assert torch.equal(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_sapa_d_autocast_and_bfloat16():
    """Under autocast (mixed dtypes) SAPA-D takes the grid_sample path and returns what the
    definition returns (float32, as grid_sample runs in float32); a bfloat16 module too (the
    window path's normalised coordinates would lose precision in bfloat16)."""
    import copy

    torch.manual_seed(6)
    m = build_upsampler("sapa-d", 8)
    x, y = torch.randn(2, 8, 6, 6, requires_grad=True), torch.randn(2, 8, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, y)
        ref = m._forward_definition(x, y)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.02, atol=0.02)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    m16 = copy.deepcopy(m).to(torch.bfloat16)
    x16, y16 = x.detach().to(torch.bfloat16), y.to(torch.bfloat16)
    ref32 = m._forward_definition(x.detach(), y)
    err = (m16(x16, y16).float() - ref32).abs().max()
    assert err <= 2 * (m16._forward_definition(x16, y16).float() - ref32).abs().max() + 1e-3
