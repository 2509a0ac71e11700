"""sapa.decomposition: shifted_upsample (higher derivatives) and export_upsample (ONNX) equal the reference."""
from __future__ import annotations

import pytest
import torch

import sapa
from sapa import decomposition
from sapa._checks import NORMALIZATIONS, PADDINGS


@pytest.mark.parametrize("chunk", [decomposition.CHUNK_FLOATS, 64])  # one channel chunk, or several
@pytest.mark.parametrize("sizes", [(5, 7, 10, 14), (5, 7, 11, 13), (4, 4, 4, 4), (3, 2, 9, 8), (3, 3, 9, 9)])
def test_matches_reference(monkeypatch, sizes, chunk):
    monkeypatch.setattr(decomposition, "CHUNK_FLOATS", chunk)
    H, W, Hq, Wq = sizes
    g = torch.Generator().manual_seed(sum(sizes))
    q, k, v = (torch.randn(*s, generator=g, dtype=torch.float64)
               for s in ((2, 4, Hq, Wq), (2, 4, H, W), (2, 5, H, W)))
    for K in (1, 3, 5):
        for norm in NORMALIZATIONS:
            for pad in PADDINGS:
                torch.testing.assert_close(decomposition.shifted_upsample(q, k, v, K, norm, pad),
                                           sapa.sapa_upsample(q, k, v, K, norm, pad, backend="reference"))


def test_half_precision_keeps_the_dtype():
    q, k, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4), torch.randn(1, 3, 4, 4)
    out = decomposition.shifted_upsample(q.bfloat16(), k.bfloat16(), v.bfloat16(), 3, "softmax", "zeros")
    assert out.dtype == torch.bfloat16
    ref = sapa.sapa_upsample(*(t.bfloat16().double() for t in (q, k, v)), 3, backend="reference")
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("sizes", [(5, 7, 10, 14), (5, 7, 11, 13), (4, 4, 4, 4), (3, 2, 9, 8), (2, 1, 4, 3)])
@pytest.mark.parametrize("B", [2, 0])
def test_export_formulation_matches_reference(sizes, B):
    """export_upsample (the ONNX graph): integer scales, s != t, a non-integer fallback, K > H."""
    H, W, Hq, Wq = sizes
    q, k, v = (torch.randn(*s, dtype=torch.float64) for s in ((B, 4, Hq, Wq), (B, 4, H, W), (B, 5, H, W)))
    for K in (1, 3, 5):
        for norm in NORMALIZATIONS:
            for pad in PADDINGS:
                torch.testing.assert_close(decomposition.export_upsample(q, k, v, K, norm, pad),
                                           sapa.sapa_upsample(q, k, v, K, norm, pad, backend="reference"))


def test_export_formulation_half_precision_keeps_the_dtype():
    q, k, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4), torch.randn(1, 3, 4, 4)
    out = decomposition.export_upsample(q.half(), k.half(), v.half(), 3, "softmax", "ignore")
    assert out.dtype == torch.float16
    ref = sapa.sapa_upsample(*(t.half().double() for t in (q, k, v)), 3, "softmax", "ignore", backend="reference")
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)
