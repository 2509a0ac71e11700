"""sapa.from_official: official checkpoints into ready modules (sizes read from the state
dict, files loaded safely), and SAPA.forward refusing the official (y, x) argument order."""
from __future__ import annotations

import pytest
import torch

import sapa
from sapa.upsamplers import build_upsampler


def _official_sapa_b(Cy=6, C=8, d=5, seed=0):
    """A state dict with the official ``SAPA(dim_y, dim_x, embedding_dim=d)`` keys and shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return {"norm_y.weight": r(Cy), "norm_y.bias": r(Cy), "norm_x.weight": r(C), "norm_x.bias": r(C),
            "q.weight": r(d, Cy), "q.bias": r(d), "k.weight": r(d, C), "k.bias": r(d)}


def _xy(C=8, Cy=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, C, 4, 5, generator=g, dtype=torch.float64),
            torch.randn(2, Cy, 8, 10, generator=g, dtype=torch.float64))


def test_sapa_class_gives_a_bare_module_with_the_sizes_of_the_checkpoint():
    sd = _official_sapa_b()
    m = sapa.from_official(sapa.SAPA, sd, kernel_size=3)
    assert type(m) is sapa.SAPA and not m.training
    assert (m.in_channels, m.guide_channels, m.embedding_dim, m.variant) == (8, 6, 5, "B")
    torch.testing.assert_close(m.q_y.weight, sd["q.weight"].float())
    x, y = (t.float() for t in _xy())
    # the official computation, by hand: LN, q from y, k from x, SAPA on the raw x
    ref = sapa.SAPA(8, 6, kernel_size=3, embedding_dim=5, backend="reference")
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x, y), ref(x, y))


def test_names_and_files(tmp_path):
    sd = _official_sapa_b()
    pth = tmp_path / "sapa_b.pth"
    torch.save({"state_dict": {"decode_head.up." + k: v for k, v in sd.items()}}, pth)
    m = sapa.from_official("SAPA", pth, prefix="decode_head.up.")  # official class name, a file
    assert m.name == "sapa-b" and m.sapa.embedding_dim == 5
    from safetensors.torch import save_file

    st = tmp_path / "sapa_b.safetensors"
    save_file(sd, str(st))
    m2 = sapa.from_official("sapa-b", st)
    for (n, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)


def test_gate_and_concat_variants_are_read_from_the_keys():
    sd = _official_sapa_b()
    g = {k: v for k, v in sd.items() if not k.startswith("q.")}
    g.update({"qy.weight": sd["q.weight"], "qy.bias": sd["q.bias"], "qx.weight": torch.randn(5, 8),
              "qx.bias": torch.randn(5), "gate.weight": torch.randn(1, 8), "gate.bias": torch.randn(1)})
    assert sapa.from_official(sapa.SAPA, g).variant == "G"
    p = dict(sd, **{"q.weight": torch.randn(5, 14)})
    assert sapa.from_official(sapa.SAPA, p).variant == "P"


def test_other_designs_read_their_sizes():
    for name, opts in (("fade", dict(in_channels=8, embedding_dim=4)), ("carafe", dict(in_channels=8)),
                       ("dysample", dict(in_channels=8))):
        built = build_upsampler(name, **opts)
        inv = {"compress_y": "kernel_generator.conv1_en", "compress_x": "kernel_generator.conv1_de",
               "kernel_weight": "kernel_generator.conv2_kernels", "kernel_bias": "kernel_generator.conv2_bias",
               "gate": "gate_generator.conv", "compressor": "channel_compressor", "encoder": "content_encoder"}
        official = {}
        for k, v in built.state_dict().items():
            head, _, rest = k.partition(".")
            official[inv.get(head, head) + ("." + rest if rest else "")] = v.clone()
        m = sapa.from_official(name, official)
        assert type(m) is type(built) and m.in_channels == 8
        for k, v in built.state_dict().items():
            torch.testing.assert_close(m.state_dict()[k], v)


def test_mistakes_are_named():
    sd = _official_sapa_b()
    with pytest.raises(ValueError, match="in_channels=4 was given but the checkpoint has in_channels=8"):
        sapa.from_official("sapa-b", sd, in_channels=4)
    with pytest.raises(ValueError, match="no official module is known for 'bilinear'"):
        sapa.from_official("bilinear", sd)
    with pytest.raises(ValueError, match="no key 'norm_x.weight'"):
        sapa.from_official("sapa-b", {k: v for k, v in sd.items() if not k.startswith("norm_x")})
    with pytest.raises(ValueError, match="pass in_channels"):
        sapa.from_official("a2u", {"x.weight": torch.ones(1)})
    with pytest.raises(TypeError, match="name_or_module_class"):
        sapa.from_official(3, sd)
    with pytest.raises(ValueError, match="prefix 'nope.'"):
        sapa.from_official("sapa-b", sd, prefix="nope.")


def test_swapped_arguments_are_refused_before_any_work():
    m = sapa.SAPA(8, 6)
    x, y = _xy()
    x, y = x.float(), y.float()
    with pytest.raises(ValueError, match=r"look swapped \(x has guide_channels=6 channels and y has in_channels=8\)"):
        m(y, x)
    sq = sapa.SAPA(8)  # equal channels: the sizes tell
    x8 = torch.randn(2, 8, 4, 5)
    y8 = torch.randn(2, 8, 8, 10)
    with pytest.raises(ValueError, match=r"look swapped \(x is larger than the guide y\).*forward\(y, x\)"):
        sq(y8, x8)
    assert sq(x8, y8).shape == (2, 8, 8, 10)
    # an ordinary channel mistake is still reported as such
    with pytest.raises(ValueError, match="x must have in_channels=8"):
        m(torch.randn(2, 7, 4, 5), y)
