"""The SAPA module: variants, shapes, Eq. 4 on constant inputs, initialisation, errors."""
import pytest
import torch
import torch.nn as nn

import sapa
from sapa.modules import channel_layer_norm

VARIANTS = ("I", "B", "P", "G")


def _module(variant, C=8, Cy=None, **kw):
    Cy = C if (variant == "I" or Cy is None) else Cy
    return sapa.SAPA(C, Cy, variant=variant, **kw).double()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(6, 7, 12, 14), (5, 5, 11, 11), (4, 6, 4, 6), (3, 4, 10, 13)])
def test_shapes_and_backends_agree(variant, size):
    H, W, Hq, Wq = size
    m = _module(variant, C=8, Cy=5)
    x = torch.randn(2, 8, H, W, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, m.guide_channels, Hq, Wq, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for backend in ("reference", "torch"):
        m.backend = backend
        out = m(x, y)
        assert out.shape == (2, 8, Hq, Wq)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [x, y] + list(m.parameters())))
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_constant_input_unchanged_away_from_borders(variant):
    """Eq. 4: a spatially constant x is a smooth window everywhere, so the kernel is the
    average kernel and the output equals x, whatever the guide, except near the borders where
    zero padding enters the window."""
    C, H, W, K = 6, 9, 10, 5
    m = _module(variant, C=C, Cy=4, kernel_size=K)
    with torch.no_grad():  # random (not the identity-like init) parameters
        for p in m.parameters():
            p.normal_()
    x = torch.randn(2, C, 1, 1, dtype=torch.float64).expand(2, C, H, W).contiguous()
    y = torch.randn(2, m.guide_channels, 2 * H, 2 * W, dtype=torch.float64)
    out = m(x, y)
    R = K // 2
    inner = out[:, :, 2 * R : 2 * (H - R), 2 * R : 2 * (W - R)]
    torch.testing.assert_close(inner, x[:, :, :1, :1].expand_as(inner))
    # with padding="ignore" the whole map is a smooth window
    m.padding = "ignore"
    torch.testing.assert_close(m(x, y), x[:, :, :1, :1].expand(2, C, 2 * H, 2 * W))


def test_official_initialisation_and_parameter_counts():
    C, Cy, d = 64, 32, 16
    counts = {
        "I": 2 * C,  # two LayerNorms (weight + bias), no projection
        "B": 2 * Cy + 2 * C + (Cy * d + d) + (C * d + d),
        "P": 2 * Cy + 2 * C + ((Cy + C) * d + d) + (C * d + d),
        "G": 2 * Cy + 2 * C + (Cy * d + d) + (C * d + d) + (C * d + d) + (C + 1),
    }
    for variant, expected in counts.items():
        m = sapa.SAPA(C, C if variant == "I" else Cy, variant=variant, embedding_dim=d)
        if variant == "I":
            expected = 2 * C + 2 * C
        assert sum(p.numel() for p in m.parameters()) == expected, variant
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                assert torch.count_nonzero(mod.bias) == 0
                # trunc_normal_(std=0.02) with the default cut at +-2 (absolute, as in the official code)
                assert mod.weight.abs().max() <= 2.0
                assert mod.weight.numel() < 100 or 0.015 < mod.weight.std() < 0.025
            if isinstance(mod, nn.LayerNorm):
                assert torch.equal(mod.weight, torch.ones_like(mod.weight))
                assert torch.equal(mod.bias, torch.zeros_like(mod.bias))


def test_bilinear_query_key_definition():
    m = _module("B", C=8, Cy=5, embedding_dim=4)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x, y = torch.randn(2, 8, 4, 5, dtype=torch.float64), torch.randn(2, 5, 8, 10, dtype=torch.float64)
    q, k = m.query_key(x, y)
    ln = lambda t, n: torch.nn.functional.layer_norm(t.permute(0, 2, 3, 1), t.shape[1:2], n.weight, n.bias, n.eps)
    q_exp = (ln(y, m.norm_y) @ m.q_y.weight.T + m.q_y.bias).permute(0, 3, 1, 2)
    k_exp = (ln(x, m.norm_x) @ m.k_x.weight.T + m.k_x.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(q, q_exp)
    torch.testing.assert_close(k, k_exp)


def test_gated_query_definition():
    m = _module("G", C=6, Cy=3, embedding_dim=4)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x, y = torch.randn(1, 6, 3, 4, dtype=torch.float64), torch.randn(1, 3, 7, 9, dtype=torch.float64)
    q, _ = m.query_key(x, y)
    xn = channel_layer_norm(x, m.norm_x)
    yn = channel_layer_norm(y, m.norm_y)
    rows, cols = sapa.window_centres(7, 3), sapa.window_centres(9, 4)
    proj = lambda t, lin: torch.einsum("bchw,dc->bdhw", t, lin.weight) + lin.bias[:, None, None]
    g = torch.sigmoid(proj(xn, m.gate))[:, :, rows][:, :, :, cols]
    x_up = x[:, :, rows][:, :, :, cols]
    torch.testing.assert_close(q, g * proj(yn, m.q_y) + (1 - g) * proj(x_up, m.q_x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_low_precision(dtype):
    m = sapa.SAPA(16, 8).to(dtype)
    x, y = torch.randn(2, 16, 8, 8, dtype=dtype), torch.randn(2, 8, 17, 16, dtype=dtype)
    out = m(x, y)
    assert out.dtype == dtype and out.shape == (2, 16, 17, 16)
    ref = sapa.SAPA(16, 8).double()
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(out.double(), ref(x.double(), y.double()), atol=tol, rtol=tol)


def test_extra_repr():
    r = repr(sapa.SAPA(64, 32, variant="G", kernel_size=3, embedding_dim=16))
    for part in ("in_channels=64", "guide_channels=32", "variant='G'", "kernel_size=3", "embedding_dim=16",
                 "normalization='softmax'", "padding='zeros'"):
        assert part in r


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(in_channels=8, guide_channels=4, variant="I"), ValueError, "guide_channels == in_channels"),
        (dict(in_channels=8, variant="X"), ValueError, "unknown variant 'X'"),
        (dict(in_channels=8, kernel_size=2), ValueError, "kernel_size"),
        (dict(in_channels=0), ValueError, "in_channels must be positive"),
        (dict(in_channels=8.0), TypeError, "in_channels must be an int"),
        (dict(in_channels=8, embedding_dim=0), ValueError, "embedding_dim"),
        (dict(in_channels=8, normalization="exp"), ValueError, "normalization"),
        (dict(in_channels=8, padding="same"), ValueError, "padding"),
    ],
)
def test_bad_constructor(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sapa.SAPA(**kwargs)


@pytest.mark.parametrize(
    "x_shape,y_shape,match",
    [
        ((2, 7, 4, 4), (2, 4, 8, 8), r"x must have in_channels=8.*\(2, 7, 4, 4\)"),
        ((2, 8, 4, 4), (2, 5, 8, 8), r"y must have guide_channels=4.*\(2, 5, 8, 8\)"),
        ((2, 8, 4, 4), (1, 4, 8, 8), r"batch sizes differ"),
        ((2, 8, 4, 4), (2, 4, 3, 8), r"at least as large"),
        ((8, 4, 4), (2, 4, 8, 8), r"x must have 4 dimensions"),
    ],
)
def test_bad_forward_inputs(x_shape, y_shape, match):
    m = sapa.SAPA(8, 4)
    with pytest.raises(ValueError, match=match):
        m(torch.randn(*x_shape), torch.randn(*y_shape))


def test_dtype_and_device_mismatches_are_named():
    m = sapa.SAPA(8, 4)
    with pytest.raises(TypeError, match="x and y must share dtype"):
        m(torch.randn(1, 8, 4, 4), torch.randn(1, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="module's parameters are torch.float32"):
        m(torch.randn(1, 8, 4, 4, dtype=torch.float64), torch.randn(1, 4, 8, 8, dtype=torch.float64))


def test_autocast_bfloat16():
    m = sapa.SAPA(8, 4, variant="G")
    x, y = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 9, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, y)
    assert out.shape == (2, 8, 9, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out, m(x, y), atol=0.1, rtol=0.1)


def test_numpy_integer_arguments():
    np = pytest.importorskip("numpy")
    m = sapa.SAPA(np.int64(8), np.int32(4), kernel_size=np.int64(3), embedding_dim=np.int16(6))
    assert (m.in_channels, m.guide_channels, m.kernel_size, m.embedding_dim) == (8, 4, 3, 6)
    assert all(type(v) is int for v in (m.in_channels, m.guide_channels, m.kernel_size, m.embedding_dim))
    assert m(torch.randn(1, 8, 3, 3), torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)
    with pytest.raises(TypeError, match="in_channels must be an int, got bool"):
        sapa.SAPA(True)


def test_backend_checked_at_construction():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        sapa.SAPA(8, 4, backend="cuda")
    with pytest.raises(TypeError, match="backend must be a string"):
        sapa.SAPA(8, 4, backend=None)
    for name in sapa.available_backends():
        assert sapa.SAPA(8, 4, backend=name).backend == name


def test_docstring_documents_every_constructor_argument():
    import inspect

    doc = sapa.SAPA.__doc__
    for name in inspect.signature(sapa.SAPA.__init__).parameters:
        if name != "self":
            assert f"    {name}: " in doc, name
    assert 'padding="ignore"' in doc and "0.36" in doc


def test_zero_padding_darkens_borders_ignore_does_not():
    """The documented numbers: a constant map of ones, K = 5, 2x upsampling."""
    x, y = torch.ones(1, 8, 6, 6), torch.randn(1, 4, 12, 12)
    for variant in ("B", "G"):
        out = sapa.SAPA(8, 4, variant=variant)(x, y)  # LN(constant) = 0: uniform softmax weights
        torch.testing.assert_close(out[0, :, 0, 0], torch.full((8,), 9 / 25))  # 0.36 in a corner
        torch.testing.assert_close(out[0, :, 0, 5], torch.full((8,), 15 / 25))  # 0.6 along an edge
        torch.testing.assert_close(out[0, :, 5, 5], torch.ones(8))
        kept = sapa.SAPA(8, 4, variant=variant, padding="ignore")(x, y)
        torch.testing.assert_close(kept, torch.ones_like(kept))


def test_layer_norm_modules_are_called_with_their_hooks():
    """The module calls its LayerNorms (as the official code does, on the channels-last view), so
    hooks on them fire: sapa.complexity counts normalisation with such hooks, and a user's
    feature hooks or a replaced norm module keep working."""
    m = sapa.SAPA(8, 6)
    seen = []
    for name in ("norm_x", "norm_y"):
        getattr(m, name).register_forward_hook(lambda mod, inp, out, name=name: seen.append((name, inp[0].shape)))
    m(torch.randn(2, 8, 4, 5), torch.randn(2, 6, 8, 10))
    assert sorted(seen) == [("norm_x", (2, 4, 5, 8)), ("norm_y", (2, 8, 10, 6))]
    m.norm_y = nn.Identity()  # a replaced module is used, not bypassed
    y = torch.randn(2, 6, 8, 10)
    q, _ = m.query_key(torch.randn(2, 8, 4, 5), y)
    torch.testing.assert_close(q, torch.einsum("bchw,dc->bdhw", y, m.q_y.weight) + m.q_y.bias[:, None, None])


def test_dtype_mismatch_on_meta_tensors_is_a_clear_type_error():
    """The autocast check must not fail on devices autocast does not know (meta): a dtype
    mismatch there is the same TypeError as on the CPU, not an internal RuntimeError."""
    m = sapa.SAPA(8, 6).to("meta")
    x, y = torch.randn(2, 8, 4, 5, device="meta"), torch.randn(2, 6, 8, 10, device="meta", dtype=torch.float64)
    with pytest.raises(TypeError, match="x and y must share dtype and device"):
        m(x, y)
