"""Each baseline against its authors' module, re-implemented here in float64 from the official code.

The ``Official*`` modules below follow the structure of the public code (names of the
submodules, the order of the reshapes, the official sampling and reassembly rules) and are
written independently of ``sapa.upsamplers``: the official module's weights are loaded into
ours with :func:`sapa.upsamplers.load_official_state_dict` (strictly), and outputs and
gradients (inputs and every parameter) must agree to float64 round-off.

Sources read (facts only): mmcv ``ops/carafe.py`` (CARAFEPack), poppinace/fade
``FADE_H2L.py``, poppinace/indexnet_matting ``scripts/hlindex.py``, dongdong93/a2u_matting
``scripts/BilinearModel.py`` and its CUDA ``biupsample_naive`` kernel, tiny-smart/dysample
``dysample.py``, tiny-smart/sapa ``sapa_deform.py`` and ``deformsapa/forward_check.py``,
poppinace/sapa ``SAPA.py`` and ``SAPAExp.py``.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sapa.upsamplers import build_upsampler, convert_official_state_dict, load_official_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64


# ------------------------------------------------------------------------------------
# official reassembly rules (CUDA kernels of mmcv CARAFE and A2U's biupsample_naive)
# ------------------------------------------------------------------------------------
def official_carafe(x, masks, K, s):
    """out[n,c,ph,pw] = sum_{iy,ix in window of (ph//s, pw//s)} x[n,c,iy,ix] masks[n,(iy-dph+R)*K+(ix-dpw+R),ph,pw]."""
    n, c, h, w = x.shape
    R = (K - 1) // 2
    cols = F.unfold(x, K, padding=R).view(n, c, K * K, h, w)  # zero outside the map
    cols = cols.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4)  # parent (ph//s, pw//s)
    return torch.einsum("nckhw,nkhw->nchw", cols, masks)


# ------------------------------------------------------------------------------------
# re-implementations of the official modules
# ------------------------------------------------------------------------------------
class OfficialCARAFEPack(nn.Module):
    def __init__(self, channels, scale_factor=2, up_kernel=5, encoder_kernel=3, compressed_channels=64):
        super().__init__()
        self.s, self.K = scale_factor, up_kernel
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(compressed_channels, up_kernel**2 * scale_factor**2, encoder_kernel,
                                         padding=(encoder_kernel - 1) // 2)

    def forward(self, x):
        mask = F.pixel_shuffle(self.content_encoder(self.channel_compressor(x)), self.s)
        n, mc, h, w = mask.shape
        mask = F.softmax(mask.view(n, 1, -1, h, w), dim=2).view(n, mc, h, w)
        return official_carafe(x, mask, self.K, self.s)


class _Gate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, 1, 1)


class _SemiShift(nn.Module):
    def __init__(self, c_en, c_de, d=64, K=5):
        super().__init__()
        self.d, self.K = d, K
        self.conv1_en = nn.Conv2d(c_en, d, 1)
        self.conv1_de = nn.Conv2d(c_de, d, 1, bias=False)
        self.conv2_kernels = nn.Parameter(torch.empty(K * K, d, 3, 3))
        self.conv2_bias = nn.Parameter(torch.empty(K * K))

    def forward(self, en, de):
        B, _, H, W = de.shape
        ce, cd = self.conv1_en(en), self.conv1_de(de)
        # four shifted copies (left/top, right/top, left/bottom, right/bottom), stride-2 conv each
        pads = [F.pad(ce, [1, 0, 1, 0]), F.pad(ce, [0, 1, 1, 0]), F.pad(ce, [1, 0, 0, 1]), F.pad(ce, [0, 1, 0, 1])]
        pe = torch.cat(pads, dim=1).view(B * 4, self.d, 2 * H + 1, 2 * W + 1)
        k = F.conv2d(pe, self.conv2_kernels, self.conv2_bias, stride=2).view(B, 4, self.K**2, H, W)
        k = k + F.conv2d(cd, self.conv2_kernels, self.conv2_bias, padding=1).unsqueeze(1)  # the bias again
        # space reassembly: sub-pixel index r1 * 2 + r2 -> output (2h + r1, 2w + r2)
        k = k.view(B, 2, 2, self.K**2, H, W).permute(0, 3, 4, 1, 5, 2).reshape(B, self.K**2, 2 * H, 2 * W)
        return k


class OfficialFADE(nn.Module):
    def __init__(self, c_en, c_de=None, K=5):
        super().__init__()
        c_de = c_de or c_en
        self.K = K
        self.gate_generator = _Gate(c_de)
        self.kernel_generator = _SemiShift(c_en, c_de, K=K)

    def forward(self, en, de):
        gate = torch.sigmoid(F.interpolate(self.gate_generator.conv(de), scale_factor=2, mode="nearest"))
        kernels = F.softmax(self.kernel_generator(en, de), dim=1)
        return gate * en + (1 - gate) * official_carafe(de, kernels, self.K, 2)


class OfficialHIN(nn.Module):
    """HolisticIndexBlock(inp, use_nonlinear=True, use_context=True); upsampling idx_de * nearest(x)."""

    def __init__(self, inp):
        super().__init__()
        self.indexnet = nn.Sequential(
            nn.Conv2d(inp, 2 * inp, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * inp), nn.ReLU6(),
            nn.Conv2d(2 * inp, 4, 1, bias=False))

    def forward(self, y, x):
        idx_de = F.pixel_shuffle(torch.sigmoid(self.indexnet(y)), 2)
        return idx_de * F.interpolate(x, scale_factor=2, mode="nearest")


class OfficialM2O(nn.Module):
    """DepthwiseM2OIndexBlock(inp, use_nonlinear, use_context=True)."""

    def __init__(self, inp, use_nonlinear=True):
        super().__init__()
        for i in range(1, 5):
            if use_nonlinear:
                block = nn.Sequential(nn.Conv2d(inp, inp, 4, 2, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU6(),
                                      nn.Conv2d(inp, inp, 1, bias=False))
            else:
                block = nn.Sequential(nn.Conv2d(inp, inp, 4, 2, 1, bias=False))
            setattr(self, f"indexnet{i}", block)

    def forward(self, y, x):
        bs, c, h, w = y.shape
        z = torch.cat([getattr(self, f"indexnet{i}")(y).unsqueeze(2) for i in range(1, 5)], dim=2)
        idx_de = F.pixel_shuffle(torch.sigmoid(z).view(bs, c * 4, h // 2, w // 2), 2)
        return idx_de * F.interpolate(x, scale_factor=2, mode="nearest")


class OfficialA2U(nn.Module):
    """InterChannelUpDown with share=True, d=1, group=1, encode_kernel_size=6, up_kernel_size=3."""

    def __init__(self, c, K=3, k=6):
        super().__init__()
        self.K, self.k, self.pad = K, k, (k - 1) // 2
        self.bnu = nn.Sequential(nn.GroupNorm(32, c), nn.LeakyReLU())
        self.bnv = nn.Sequential(nn.GroupNorm(32, c), nn.LeakyReLU())
        self.bconv_UP = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, (2 * K) ** 2, 1))
        self.bconv_DP = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, (2 * K) ** 2, 1))
        self.bconv_U = nn.Sequential(nn.AdaptiveAvgPool2d(k), nn.Conv2d(c, 1, 1))
        self.bconv_V = nn.Sequential(nn.AdaptiveAvgPool2d(k), nn.Conv2d(c, 1, 1))

    def up_kernels(self, y):
        n, c, h, w = y.shape
        p_u = self.bconv_UP(y).view(n, (2 * self.K) ** 2, 1, 1, 1)
        u, v = self.bconv_U(y).view(n, -1, self.k, self.k), self.bconv_V(y).view(n, -1, self.k, self.k)
        outs = []
        for i in range(n):  # per sample, as the official loop
            o1 = F.conv2d(y[i].unsqueeze(1), u[i][0].view(1, 1, self.k, self.k), stride=2, padding=self.pad)
            o2 = F.conv2d(y[i].unsqueeze(1), v[i][0].view(1, 1, self.k, self.k), stride=2, padding=self.pad)
            o1 = self.bnu(o1.view(1, c, h // 2, w // 2)).view(c, 1, h // 2, w // 2)
            o2 = self.bnv(o2.view(1, c, h // 2, w // 2)).view(c, 1, h // 2, w // 2)
            aff = (o1 * o2).sum(dim=0, keepdim=True) / math.sqrt(c)
            outs.append(F.conv2d(aff, p_u[i].view((2 * self.K) ** 2, 1, 1, 1)))
        out = F.pixel_shuffle(torch.cat(outs, 0).view(n, self.K**2 * 4, h // 2, w // 2), 2)
        return F.softmax(torch.sigmoid(out.view(n, self.K**2, 1, h, w)), dim=1).view(n, -1, h, w)

    def forward(self, y, x):
        return official_carafe(x, self.up_kernels(y), self.K, 2)


class OfficialDySample(nn.Module):
    """DySample(in_channels, scale, style="lp", groups, dyscope)."""

    def __init__(self, c, scale=2, groups=4, dyscope=False):
        super().__init__()
        self.scale, self.groups = scale, groups
        self.offset = nn.Conv2d(c, 2 * groups * scale**2, 1)
        if dyscope:
            self.scope = nn.Conv2d(c, 2 * groups * scale**2, 1)
        h = torch.arange((-scale + 1) / 2, (scale - 1) / 2 + 1) / scale
        self.register_buffer("init_pos", torch.stack(torch.meshgrid([h, h], indexing="ij")).transpose(1, 2)
                             .repeat(1, groups, 1).reshape(1, -1, 1, 1))

    def forward(self, x):
        if hasattr(self, "scope"):
            offset = self.offset(x) * self.scope(x).sigmoid() * 0.5 + self.init_pos
        else:
            offset = self.offset(x) * 0.25 + self.init_pos
        B, _, H, W = offset.shape
        offset = offset.view(B, 2, -1, H, W)
        coords = torch.stack(torch.meshgrid([torch.arange(W) + 0.5, torch.arange(H) + 0.5], indexing="ij"))
        coords = coords.transpose(1, 2).unsqueeze(1).unsqueeze(0).to(x.dtype)
        norm = torch.tensor([W, H], dtype=x.dtype).view(1, 2, 1, 1, 1)
        coords = 2 * (coords + offset) / norm - 1  # (B, 2, g s^2, H, W)
        # the official code pixel-shuffles this 5-d tensor directly; its backward then fails on
        # current PyTorch (non-contiguous gradient), so the same shuffle is done on (B*2, ...)
        coords = F.pixel_shuffle(coords.reshape(B * 2, -1, H, W), self.scale)
        coords = coords.view(B, 2, self.groups, self.scale * H, self.scale * W).permute(0, 2, 3, 4, 1)
        coords = coords.contiguous().flatten(0, 1)
        return F.grid_sample(x.reshape(B * self.groups, -1, H, W), coords, mode="bilinear", align_corners=False,
                             padding_mode="border").view(B, -1, self.scale * H, self.scale * W)


def official_deform_sample(x, offset, num_point, scale, groups):
    """forward_check.sample: x repeated per point, one grid per (batch, group, point)."""
    B, _, H, W = x.shape
    offset = offset.view(B, -1, 2, scale * H, scale * W).permute(0, 1, 3, 4, 2)
    coords = torch.stack(torch.meshgrid([torch.arange(W) + 0.5, torch.arange(H) + 0.5], indexing="ij"))
    coords = coords.permute(2, 1, 0).to(offset.dtype)
    coords = coords.reshape(H, 1, W, 1, 2).repeat(1, scale, 1, scale, 1).view(scale * H, scale * W, 2)
    norm = torch.tensor([W, H], dtype=x.dtype).view(1, 1, 1, 1, 2)
    coords = 2 * (coords.unsqueeze(0).unsqueeze(0) + offset) / norm - 1
    xs = x.reshape(B * groups, -1, H, W).repeat(1, num_point, 1, 1).view(B * groups * num_point, -1, H, W)
    out = F.grid_sample(xs, coords.reshape(-1, scale * H, scale * W, 2), mode="bilinear", align_corners=False)
    return out.view(B, groups, num_point, -1, scale * H, scale * W)


class OfficialSAPADeform(nn.Module):
    def __init__(self, dim_y, dim_x=None, up_factor=2, num_point=9, groups=4, embedding_dim=32,
                 qkv_bias=True, high_offset=True, norm=False):
        super().__init__()
        dim_x = dim_x or dim_y
        self.s, self.P, self.G, self.high_offset, self.norm = up_factor, num_point, groups, high_offset, norm
        if norm:
            self.norm_y, self.norm_x = nn.GroupNorm(32, dim_y), nn.GroupNorm(32, dim_x)
        self.q = nn.Conv2d(dim_y, groups * embedding_dim, 1, bias=qkv_bias)
        self.k = nn.Conv2d(dim_x, groups * embedding_dim, 1, bias=qkv_bias)
        od = groups * num_point * 2 * (up_factor**2 if high_offset else 1)
        self.offset = nn.Conv2d(dim_x, od, 1, bias=qkv_bias)

    def forward(self, y, x):
        x_ = self.norm_x(x) if self.norm else x
        y = self.norm_y(y) if self.norm else y
        q, k = self.q(y), self.k(x_)
        if self.high_offset:
            offset = F.pixel_shuffle(self.offset(x_), self.s)
        else:
            offset = F.interpolate(self.offset(x_), scale_factor=self.s, mode="nearest")
        B, _, H, W = q.shape
        ks = official_deform_sample(k, offset, self.P, self.s, self.G)
        attn = F.softmax(torch.sum(q.view(B, self.G, 1, -1, H, W) * ks, dim=3), dim=2)
        vs = official_deform_sample(x, offset, self.P, self.s, self.G)
        return torch.sum(attn.unsqueeze(3) * vs, dim=2).view(B, -1, H, W)


def official_sapa_attention(q, k, v, K, s):
    """SAPA's sim + softmax + atn: window K x K around (i//s, j//s), zero keys/values outside."""
    B, d, Hq, Wq = q.shape
    H, W = k.shape[-2:]
    R = K // 2
    kw = F.unfold(k, K, padding=R).view(B, d, K * K, H, W)
    vw = F.unfold(v, K, padding=R).view(B, v.shape[1], K * K, H, W)
    up = lambda t: t.repeat_interleave(s, -2).repeat_interleave(s, -1)  # noqa: E731
    attn = torch.softmax(torch.einsum("bdhw,bdkhw->bkhw", q, up(kw)), dim=1)
    return torch.einsum("bkhw,bckhw->bchw", attn, up(vw))


class OfficialSAPAExp(nn.Module):
    """SAPA.py (q_mode="encoder_only") and SAPAExp.py (q_mode "gate" / "cat"), channels last inside."""

    def __init__(self, dim_y, dim_x=None, q_mode="encoder_only", up_kernel_size=5, embedding_dim=32):
        super().__init__()
        dim_x = dim_x or dim_y
        self.q_mode, self.K = q_mode, up_kernel_size
        self.norm_y, self.norm_x = nn.LayerNorm(dim_y), nn.LayerNorm(dim_x)
        if q_mode == "encoder_only":
            self.q = nn.Linear(dim_y, embedding_dim)
        elif q_mode == "cat":
            self.q = nn.Linear(dim_x + dim_y, embedding_dim)
        else:
            self.qy, self.qx, self.gate = nn.Linear(dim_y, embedding_dim), nn.Linear(dim_x, embedding_dim), nn.Linear(dim_x, 1)
        self.k = nn.Linear(dim_x, embedding_dim)

    def forward(self, y, x):
        y, x = y.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1)
        y, x_ = self.norm_y(y), self.norm_x(x)
        up = lambda t: t.repeat_interleave(2, 1).repeat_interleave(2, 2)  # noqa: E731  nearest, channels last
        if self.q_mode == "encoder_only":
            q = self.q(y)
        elif self.q_mode == "cat":
            q = self.q(torch.cat([y, up(x)], dim=-1))
        else:
            g = up(torch.sigmoid(self.gate(x_)))
            q = g * self.qy(y) + (1 - g) * self.qx(up(x))
        k = self.k(x_)
        chw = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
        return official_sapa_attention(chw(q), chw(k), chw(x), self.K, 2)


# ------------------------------------------------------------------------------------
# the comparison
# ------------------------------------------------------------------------------------
def _randomise(module, gen):
    """Fresh random weights and buffers (non-zero biases, BatchNorm statistics) in float64."""
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked") or name.endswith("init_pos"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=DT) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen, dtype=DT) * (0.3 if t.dim() > 1 else 0.5))


# name, our options, official module factory, C, guide channels, low-res size, guided
CASES = [
    ("carafe", {}, lambda: OfficialCARAFEPack(8), 8, 8, (4, 5), False),
    ("fade", {}, lambda: OfficialFADE(8), 8, 8, (4, 4), True),
    ("fade", {}, lambda: OfficialFADE(6), 6, 6, (3, 5), True),  # non-square: official shapes fixed here
    ("indexnet-hin", {}, lambda: OfficialHIN(6), 5, 6, (3, 4), True),
    ("indexnet-m2o", {}, lambda: OfficialM2O(6), 6, 6, (3, 4), True),
    ("indexnet-m2o", {"use_nonlinear": False}, lambda: OfficialM2O(6, use_nonlinear=False), 6, 6, (3, 4), True),
    ("a2u", {}, lambda: OfficialA2U(32), 5, 32, (4, 3), True),
    ("dysample", {}, lambda: OfficialDySample(8), 8, 8, (4, 5), False),
    ("dysample", {"dyscope": True, "groups": 2}, lambda: OfficialDySample(8, groups=2, dyscope=True), 8, 8, (3, 5), False),
    ("sapa-d", {"embedding_dim": 4}, lambda: OfficialSAPADeform(12, 8, embedding_dim=4), 8, 12, (4, 5), True),
    ("sapa-d", {"embedding_dim": 3, "high_offset": False, "norm": True, "qkv_bias": False, "groups": 2, "points": 5},
     lambda: OfficialSAPADeform(32, 64, embedding_dim=3, high_offset=False, norm=True, qkv_bias=False, groups=2,
                                num_point=5), 64, 32, (3, 4), True),
    ("sapa-b", {"kernel_size": 3, "embedding_dim": 6}, lambda: OfficialSAPAExp(10, 8, "encoder_only", 3, 6),
     8, 10, (4, 5), True),
    ("sapa-g", {"embedding_dim": 6}, lambda: OfficialSAPAExp(10, 8, "gate", 5, 6), 8, 10, (4, 5), True),
    ("sapa-p", {"embedding_dim": 6}, lambda: OfficialSAPAExp(10, 8, "cat", 5, 6), 8, 10, (4, 5), True),
]


def _ids():
    return [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("case", CASES, ids=_ids())
@pytest.mark.parametrize("train", [False, True])
def test_matches_official_module(case, train):
    name, opts, make_official, C, Cy, (H, W), guided = case
    gen = torch.Generator().manual_seed(sum(map(ord, name)) + len(opts))
    official = make_official().to(DT)
    _randomise(official, gen)
    ours = build_upsampler(name, C, Cy, **opts).to(DT)
    load_official_state_dict(name, ours, official.state_dict())
    official.train(train)
    ours.train(train)
    x = torch.randn(2, C, H, W, dtype=DT, generator=gen, requires_grad=True)
    y = torch.randn(2, Cy, 2 * H, 2 * W, dtype=DT, generator=gen, requires_grad=guided)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = y.detach().clone().requires_grad_(guided)
    ref = official(y, x) if guided else official(x)
    out = ours(x2, y2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn(ref.shape, dtype=DT, generator=gen)
    (ref * g).sum().backward()
    (out * g).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-9, atol=1e-10)
    if guided:
        torch.testing.assert_close(y2.grad, y.grad, rtol=1e-9, atol=1e-10)
    grads = {k: p.grad for k, p in official.named_parameters() if p.grad is not None}
    mapped = convert_official_state_dict(name, ours, grads)
    ours_grads = {k: p.grad for k, p in ours.named_parameters()}
    assert set(mapped) == set(ours_grads), (set(mapped) ^ set(ours_grads))
    for k in mapped:
        torch.testing.assert_close(ours_grads[k], mapped[k], rtol=1e-9, atol=1e-10, msg=lambda m: f"{name} {k}: {m}")
    if train:  # BatchNorm running statistics move identically
        mapped_buffers = convert_official_state_dict(name, ours, dict(official.named_buffers()))
        for k, v in ours.named_buffers():
            if k in mapped_buffers:
                torch.testing.assert_close(v, mapped_buffers[k].to(v.dtype))


# ------------------------------------------------------------------------------------
# default initialisation as the official code (tolerances that a wrong scheme fails)
# ------------------------------------------------------------------------------------
def _std_ok(w, std, rel=0.08):
    w = w.detach().double().flatten()
    assert abs(w.mean().item()) < 4 * std / math.sqrt(w.numel()), "mean"
    assert abs(w.std().item() / std - 1) < rel, f"std {w.std().item():.5f}, expected {std:.5f}"


def _kurtosis(w):
    w = w.detach().double().flatten()
    z = (w - w.mean()) / w.std()
    return (z**4).mean().item()  # 3 for a normal, 1.8 for a uniform distribution


def test_init_fade():
    torch.manual_seed(0)
    C, d, K = 256, 64, 5
    m = build_upsampler("fade", C)
    for conv in (m.compress_y, m.compress_x):  # xavier-uniform: bound sqrt(6 / (C + d))
        bound = math.sqrt(6 / (C + d))
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
        _std_ok(conv.weight, bound / math.sqrt(3))
        assert _kurtosis(conv.weight) < 2.2
    assert torch.equal(m.compress_y.bias, torch.zeros(d)) and m.compress_x.bias is None
    _std_ok(m.kernel_weight, math.sqrt(2 / (9 * d + 9 * K * K)))  # xavier-normal
    assert abs(_kurtosis(m.kernel_weight) - 3) < 0.4
    assert torch.equal(m.kernel_bias, torch.zeros(K * K)) and torch.equal(m.gate.bias, torch.zeros(1))
    assert m.gate.weight.abs().max() <= math.sqrt(6 / (C + 1))


@pytest.mark.parametrize("nonlinear", [True, False])
def test_init_indexnet(nonlinear):
    torch.manual_seed(1)
    C = 64
    hin = build_upsampler("indexnet-hin", C, use_nonlinear=nonlinear)
    m2o = build_upsampler("indexnet-m2o", C, use_nonlinear=nonlinear)
    if nonlinear:
        _std_ok(hin.index[0].weight, math.sqrt(2 / (16 * 2 * C)))  # n = k*k*out_channels
        _std_ok(hin.index[3].weight, math.sqrt(2 / (1 * 4)), rel=0.15)
        _std_ok(m2o.index[0].weight, math.sqrt(2 / (16 * C)))  # per official branch: out = C
        _std_ok(m2o.index[3].weight, math.sqrt(2 / C))
        assert abs(_kurtosis(m2o.index[0].weight) - 3) < 0.2
        for bn in (hin.index[1], m2o.index[1]):
            assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    else:
        _std_ok(hin.index.weight, math.sqrt(2 / (16 * 4)), rel=0.1)
        _std_ok(m2o.index.weight, math.sqrt(2 / (16 * C)))


def test_init_a2u():
    torch.manual_seed(2)
    C = 256
    m = build_upsampler("a2u", C)
    gain = math.sqrt(2 / (1 + 0.01**2))  # calculate_gain("leaky_relu", 0.01), the official config
    _std_ok(m.proj.weight, gain * math.sqrt(2 / (C + 36)))
    assert abs(_kurtosis(m.proj.weight) - 3) < 0.3
    both = torch.cat([m.filter_u.weight.flatten(), m.filter_v.weight.flatten()])
    _std_ok(both, gain * math.sqrt(2 / (C + 1)), rel=0.15)
    for conv in (m.filter_u, m.filter_v, m.proj):
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    assert torch.equal(m.norm_u.weight, torch.ones(C)) and torch.equal(m.norm_u.bias, torch.zeros(C))


def test_init_carafe_dysample_sapa_d():
    torch.manual_seed(3)
    C = 256
    c = build_upsampler("carafe", C)
    _std_ok(c.compressor.weight, math.sqrt(6 / (C + 64)) / math.sqrt(3))
    _std_ok(c.encoder.weight, 0.001)
    d = build_upsampler("dysample", C, dyscope=True)
    _std_ok(d.offset.weight, 0.001)
    assert not d.offset.bias.any() and not d.scope.weight.any() and not d.scope.bias.any()
    s = build_upsampler("sapa-d", C)
    for conv in (s.q, s.k, s.offset):
        _std_ok(conv.weight, 0.02)
        assert not conv.bias.any()


# ------------------------------------------------------------------------------------
# structure: parameters, state_dict keys, shapes (from the official modules)
# ------------------------------------------------------------------------------------
def test_state_dict_keys():
    C, Cy = 16, 24
    keys = lambda name, **o: {k: tuple(v.shape) for k, v in build_upsampler(name, C, Cy, **o).state_dict().items()}  # noqa: E731
    assert keys("dysample") == {"offset.weight": (32, C, 1, 1), "offset.bias": (32,), "init_pos": (1, 32, 1, 1)}
    assert keys("sapa-d") == {"q.weight": (128, Cy, 1, 1), "q.bias": (128,), "k.weight": (128, C, 1, 1),
                              "k.bias": (128,), "offset.weight": (4 * 9 * 2 * 4, C, 1, 1), "offset.bias": (288,)}
    assert set(keys("sapa-d", norm=True, qkv_bias=False)) == {
        "q.weight", "k.weight", "offset.weight", "norm_y.weight", "norm_y.bias", "norm_x.weight", "norm_x.bias"}
    assert keys("sapa-d", high_offset=False)["offset.weight"] == (72, C, 1, 1)
    C = Cy  # FADE mixes y and x: equal channels
    assert keys("fade") == {"compress_y.weight": (64, C, 1, 1), "compress_y.bias": (64,),
                            "compress_x.weight": (64, C, 1, 1), "kernel_weight": (25, 64, 3, 3),
                            "kernel_bias": (25,), "gate.weight": (1, C, 1, 1), "gate.bias": (1,)}


def test_dysample_init_pos_hand_computed():
    m = build_upsampler("dysample", 4, groups=1)
    # sub-pixel k = 2a + b of a low-res pixel: dx = (b + 0.5) / 2 - 0.5, dy = (a + 0.5) / 2 - 0.5
    expected = torch.tensor([-0.25, 0.25, -0.25, 0.25, -0.25, -0.25, 0.25, 0.25]).view(1, 8, 1, 1)
    torch.testing.assert_close(m.state_dict()["init_pos"], expected)
    m3 = build_upsampler("dysample", 4, scale_factor=3, groups=2)
    third = torch.tensor([-1 / 3, 0, 1 / 3])
    torch.testing.assert_close(m3.init_pos.view(2, 2, 3, 3)[0, 1], third.repeat(3, 1))  # dx, group 1
    torch.testing.assert_close(m3.init_pos.view(2, 2, 3, 3)[1, 0], third.view(3, 1).repeat(1, 3))  # dy


def test_dysample_old_state_dict_without_init_pos_loads():
    m = build_upsampler("dysample", 8)
    sd = {k: v for k, v in m.state_dict().items() if k != "init_pos"}
    m2 = build_upsampler("dysample", 8)
    m2.load_state_dict(sd, strict=True)
    torch.testing.assert_close(m2.init_pos, m.init_pos)
    assert "init_pos" not in sd  # the caller's dict is left alone


# ------------------------------------------------------------------------------------
# hand-computed cases
# ------------------------------------------------------------------------------------
def test_fade_bias_enters_twice():
    m = build_upsampler("fade", 4, kernel_size=3)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.kernel_bias[0] = math.log(3) / 2  # 2b = ln 3: weight 3/11 at p = 0, 1/11 elsewhere
    x, y = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 6, 6)
    k = m.kernels(x, y)
    expected = torch.full((9,), 1 / 11)
    expected[0] = 3 / 11
    torch.testing.assert_close(k[0, :, 2, 3], expected)
    torch.testing.assert_close(k, expected.view(1, 9, 1, 1).expand(1, 9, 6, 6))


def test_a2u_constant_logits_is_box_filter():
    m = build_upsampler("a2u", 4)
    with torch.no_grad():
        m.proj.weight.zero_()
        m.proj.bias.zero_()
    x, y = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 6, 10)
    box = F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)  # softmax(sigmoid(0)) = 1/9 each
    torch.testing.assert_close(m(x, y), box.repeat_interleave(2, -2).repeat_interleave(2, -1))


@pytest.mark.parametrize("dx,dy", [(0.0, 0.0), (1.0, 0.0), (0.0, 0.5), (-1.0, 1.0)])
def test_sapa_d_constant_offsets_hand_computed(dx, dy):
    """All points of all groups at the parent + (dx, dy): the output is x read there."""
    torch.manual_seed(4)
    m = build_upsampler("sapa-d", 8, 6).double()
    with torch.no_grad():
        m.offset.weight.zero_()
        b = m.offset.bias.view(4 * 9, 2, 4)  # channel ((group, point), xy, sub-pixel) before the shuffle
        b[:, 0], b[:, 1] = dx, dy
    x = torch.randn(2, 8, 3, 4, dtype=DT)
    y = torch.randn(2, 6, 6, 8, dtype=DT)
    xp = F.pad(x, (2, 2, 2, 2))  # zeros outside the map
    rows, cols = torch.arange(6) // 2 + 2, torch.arange(8) // 2 + 2
    def at(oy, ox):  # noqa: E306
        return xp[:, :, rows + oy][:, :, :, cols + ox]
    fy, fx = math.floor(dy), math.floor(dx)
    ty, tx = dy - fy, dx - fx
    expected = ((1 - ty) * (1 - tx) * at(fy, fx) + (1 - ty) * tx * at(fy, fx + 1)
                + ty * (1 - tx) * at(fy + 1, fx) + ty * tx * at(fy + 1, fx + 1))
    torch.testing.assert_close(m(x, y), expected)
    w, pts = m.kernels(x, y)
    torch.testing.assert_close(w.sum(2), torch.ones(2, 4, 6, 8, dtype=DT))
    torch.testing.assert_close(pts[0, 1, 3, 5, 7], torch.tensor([7 // 2 + dx, 5 // 2 + dy], dtype=DT))


def test_sapa_d_any_output_size_keeps_parent():
    """Beyond the official code: H' != sH; zero offsets read the parent floor(i H / H')."""
    m = build_upsampler("sapa-d", 4)
    with torch.no_grad():
        m.offset.weight.zero_()
    x, y = torch.randn(1, 4, 3, 5), torch.randn(1, 4, 7, 11)
    out = m(x, y)
    rows, cols = (torch.arange(7) * 3) // 7, (torch.arange(11) * 5) // 11
    torch.testing.assert_close(out, x[:, :, rows][:, :, :, cols])


# ------------------------------------------------------------------------------------
# the loader
# ------------------------------------------------------------------------------------
def _official_fade():
    torch.manual_seed(5)
    off = OfficialFADE(8)
    _randomise(off.double(), torch.Generator().manual_seed(5))
    return off.float()


class NotWeights:  # unpickling it needs code: weights_only refuses it
    pass


def test_loader_reads_files_safely(tmp_path):
    off = _official_fade()
    sd = off.state_dict()
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "fade.pth")
    m = load_official_state_dict("fade", build_upsampler("fade", 8), tmp_path / "fade.pth")
    torch.testing.assert_close(m.kernel_bias, sd["kernel_generator.conv2_bias"])
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "fade.safetensors"))
    m2 = load_official_state_dict("fade", build_upsampler("fade", 8), str(tmp_path / "fade.safetensors"))
    torch.testing.assert_close(m2.gate.weight, sd["gate_generator.conv.weight"])

    torch.save({"obj": NotWeights()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_official_state_dict("fade", build_upsampler("fade", 8), tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_official_state_dict("fade", build_upsampler("fade", 8), tmp_path / "nope.pth")


def test_loader_prefix_and_dataparallel():
    sd = _official_fade().state_dict()
    whole = {f"decode_head.ups.0.{k}": v for k, v in sd.items()}
    whole["decode_head.cls.weight"] = torch.zeros(3)
    m = load_official_state_dict("fade", build_upsampler("fade", 8), whole, prefix="decode_head.ups.0.")
    torch.testing.assert_close(m.kernel_weight, sd["kernel_generator.conv2_kernels"])
    dp = {f"module.{k}": v for k, v in sd.items()}
    load_official_state_dict("fade", build_upsampler("fade", 8), dp)


def test_loader_errors_name_the_keys():
    sd = dict(_official_fade().state_dict())
    m = build_upsampler("fade", 8)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad = dict(sd)
    del bad["kernel_generator.conv2_bias"]
    bad["kernel_generator.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys.*'kernel_bias'.*\n.*unexpected keys.*'kernel_generator.extra'"):
        load_official_state_dict("fade", m, bad)
    bad = dict(sd)
    bad["gate_generator.conv.weight"] = torch.zeros(1, 7, 1, 1)
    with pytest.raises(ValueError, match=r"shape mismatches.*gate.weight: checkpoint \(1, 7, 1, 1\), module \(1, 8, 1, 1\)"):
        load_official_state_dict("fade", m, bad)
    for k, v in m.state_dict().items():  # nothing copied on failure
        torch.testing.assert_close(v, before[k])
    with pytest.raises(TypeError, match="'carafe'"):
        load_official_state_dict("carafe", m, sd)
    with pytest.raises(ValueError, match="no official module.*'bilinear'"):
        load_official_state_dict("bilinear", build_upsampler("bilinear", 8), {})
    m2o = build_upsampler("indexnet-m2o", 6)
    partial = {k: v for k, v in OfficialM2O(6).state_dict().items() if not k.startswith("indexnet4.")}
    with pytest.raises(ValueError, match=r"unexpected keys.*indexnet1\.0\.weight"):
        load_official_state_dict("indexnet-m2o", m2o, partial)


def test_a2u_downsampling_branch_is_dropped_on_purpose():
    off = OfficialA2U(32)
    sd = off.state_dict()
    assert any(k.startswith("bconv_DP.") for k in sd)
    converted = convert_official_state_dict("a2u", build_upsampler("a2u", 8, 32), sd)
    assert not any("DP" in k for k in converted)
