"""Tests of sapa.complexity: parameter/MAC counts and the recomputed Table 1."""
import pytest
import torch
import torch.nn as nn

import sapa
from sapa.complexity import count_flops, count_params, format_table, paper_table1, table1
from sapa.upsamplers import build_upsampler


pytestmark = pytest.mark.usefixtures("one_thread")


def test_count_params():
    m = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5))
    assert count_params(m) == 3 * 5 + 5 + 2 * 5
    m[0].bias.requires_grad_(False)
    assert count_params(m, trainable_only=True) == 3 * 5 + 2 * 5


def test_counter_convention_is_macs():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    c = count_flops(conv, torch.randn(2, 4, 5, 7))
    assert c["counter"] == 2 * 5 * 7 * 6 * 4 * 9  # one MAC per weight per output element
    assert c["macs"] == c["counter"] and c["flops"] == 2 * c["macs_with_norm"]


def test_norm_hook_and_mode_preserved():
    m = build_upsampler("sapa-b", 8, 6, kernel_size=3, embedding_dim=4)
    m.eval()
    B, H, W = 2, 4, 5
    c = count_flops(m, torch.randn(B, 8, H, W), torch.randn(B, 6, 2 * H, 2 * W))
    assert not m.training
    assert c["norm"] == 2 * B * (8 * H * W + 6 * 4 * H * W)
    # counter: q (4HW * 6 * 4) + k (HW * 8 * 4) + similarity 4HW*9*4 + assembly 4HW*9*8
    HW = B * H * W
    assert c["counter"] == HW * (4 * 6 * 4 + 8 * 4 + 4 * 9 * 4 + 4 * 9 * 8)
    assert c["macs"] == c["counter"]


@pytest.mark.parametrize("C,s", [(8, 2), (4, 3)])
def test_carafe_counts(C, s):
    m = build_upsampler("carafe", C, scale_factor=s, compressed_channels=16, kernel_size=3)
    H, W = 5, 6
    c = count_flops(m, torch.randn(1, C, H, W))
    assert c["counter"] == H * W * (C * 16 + 9 * 16 * s * s * 9)
    assert c["weighted_sum"] == H * W * s * s * 9 * C
    assert c["macs"] == c["counter"] + c["weighted_sum"]


def test_sapa_module_gate_counted():
    m = sapa.SAPA(8, 8, variant="G", kernel_size=3, embedding_dim=4)
    c = count_flops(m, torch.randn(1, 8, 4, 4), torch.randn(1, 8, 8, 8))
    assert c["gate"] == 2 * 4 * 64


def test_other_upsamplers_countable():
    x, y = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 8, 8)
    C, n_out = 8, 8 * 8  # channels, output pixels
    counts = {name: count_flops(build_upsampler(name, 8), x, y)
              for name in ("nearest", "bilinear", "deconv", "pixelshuffle", "dysample", "fade", "sapa-d")}
    for name, c in counts.items():
        parts = ("counter", "weighted_sum", "similarity", "gate", "sampling")
        assert c["macs"] == sum(c[k] for k in parts) and c["flops"] == 2 * c["macs"], name
    assert counts["nearest"]["macs"] == 0
    assert counts["bilinear"]["macs"] == counts["bilinear"]["sampling"] == 4 * C * n_out  # 4 taps per output
    assert counts["pixelshuffle"]["counter"] == C * (4 * C) * 16  # 1x1 conv C -> 4C at 4 x 4
    assert counts["dysample"]["sampling"] == 4 * C * n_out
    n = 9 * n_out  # SAPA-D: 9 points per output pixel, G d = 4 x 32
    assert (counts["sapa-d"]["sampling"], counts["sapa-d"]["similarity"], counts["sapa-d"]["weighted_sum"]) == (
        4 * n * (128 + C), n * 128, n * C)
    assert counts["fade"]["weighted_sum"] == 25 * C * n_out and counts["fade"]["macs"] > counts["sapa-d"]["macs"]
    assert count_flops(build_upsampler("deconv", 8), x)["counter"] == 16 * 8 * 8 * 16


@pytest.fixture(scope="module")
def rows64():
    return {r["module"]: r for r in table1(C=64, d=16, size=8)}


def test_table1_exact_rows(rows64):
    C, d = 64, 16
    paper = paper_table1(C, d)
    assert list(rows64) == ["CARAFE", "IndexNet-HIN", "IndexNet-M2O", "A2U", "SAPA-I", "SAPA-B", "SAPA-G"]
    for name in ("CARAFE", "IndexNet-HIN", "IndexNet-M2O", "SAPA-I", "SAPA-B"):
        assert rows64[name]["macs_per_hw"] == paper[name][0], name
        assert rows64[name]["paper_macs_per_hw"] == paper[name][0]
    # A2U: + the per-sample 1x1 convs on pooled features, spread over HW = 64
    assert rows64["A2U"]["macs_per_hw"] == paper["A2U"][0] + (2 * 36 * C + 36 * C) / 64
    # SAPA-G: + P_xx on x at low resolution (Cd) and 8d instead of 5d for the gated mix
    assert rows64["SAPA-G"]["macs_per_hw"] == paper["SAPA-G"][0] + C * d + 3 * d


def test_table1_params_and_notes(rows64):
    C, d = 64, 16
    extra = {
        "CARAFE": 64 + 100,  # biases
        "IndexNet-HIN": 4 * C,  # BatchNorm(2C)
        "IndexNet-M2O": 8 * C,  # 4 x BatchNorm(C)
        "A2U": 4 * C + 2 + 36,  # GroupNorms, biases
        "SAPA-I": 4 * C,  # LayerNorms
        "SAPA-B": 4 * C + 2 * d,
        "SAPA-G": 4 * C + C * d + 3 * d + 1,  # + P_xx and biases
    }
    for name, r in rows64.items():
        assert r["params"] == r["paper_params"] + extra[name], name
        assert len(r["note"]) > 40


def test_table1_paper_quotes_c256():
    rows = {r["module"]: r for r in table1(C=256, d=32, size=8)}
    # "the FLOPs are H*W*99K, H*W*2M, H*W*28K and H*W*70K for CARAFE, IndexNet-HIN, A2U, SAPA-B"
    assert round(rows["CARAFE"]["macs_per_hw"] / 1e3) == 100  # 99.6K, quoted "99K"
    assert round(rows["IndexNet-HIN"]["macs_per_hw"] / 1e6) == 2
    assert round(rows["A2U"]["macs_per_hw"] / 1e3) == 28
    assert round(rows["SAPA-B"]["macs_per_hw"] / 1e3) == 70
    md = format_table(list(rows.values()))
    assert md.count("\n") == 8 and "SAPA-G" in md


def test_count_flops_leaves_module_untouched():
    m = build_upsampler("indexnet-hin", 4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    backend = build_upsampler("sapa-b", 4)
    count_flops(m, torch.randn(2, 4, 4, 4), torch.randn(2, 4, 8, 8))
    count_flops(backend, torch.randn(2, 4, 4, 4), torch.randn(2, 4, 8, 8))
    assert m.training and backend.sapa.backend == "auto"
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_sapa_d_counts_follow_the_official_design():
    # q: 1x1 C_y -> G d at H'W'; k: 1x1 C -> G d at HW; offsets 1x1 C -> 2 G P s^2 at HW;
    # then per output pixel and point: 4 bilinear reads of G d keys + C values, G d products, C products
    C, Cy, H, W, G, d, P = 8, 12, 4, 5, 2, 3, 5
    m = build_upsampler("sapa-d", C, Cy, groups=G, embedding_dim=d, points=P)
    c = count_flops(m, torch.randn(1, C, H, W), torch.randn(1, Cy, 2 * H, 2 * W))
    HWq = 4 * H * W
    assert c["counter"] == HWq * Cy * G * d + H * W * C * G * d + H * W * C * 2 * G * P * 4
    assert c["sampling"] == 4 * P * HWq * (G * d + C)
    assert c["similarity"] == P * HWq * G * d and c["weighted_sum"] == P * HWq * C
    assert c["norm"] == 0
    n = count_flops(build_upsampler("sapa-d", C, Cy * 8 // 3, groups=G, norm=True), torch.randn(1, C, H, W),
                    torch.randn(1, Cy * 8 // 3, 2 * H, 2 * W))["norm"]
    assert n == 2 * (H * W * C + HWq * Cy * 8 // 3)  # GroupNorm on x and on y
