"""sapa_upsample / SAPA as a PyTorch operator: the sapa:: torch.library ops under
torch.compile, torch.export, meta and fake tensors, torch.func, ONNX, TorchScript tracing."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import sapa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _qkv(B=2, d=4, C=3, H=5, W=7, Hq=11, Wq=13, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, d, Hq, Wq, generator=g, dtype=dtype), torch.randn(B, d, H, W, generator=g, dtype=dtype),
            torch.randn(B, C, H, W, generator=g, dtype=dtype))


def _fast_cpu_backends():
    """"torch" and whatever "auto" runs on CPU float tensors (the C++ kernels when they build)."""
    auto = sapa.backends.resolve_backend("auto", torch.zeros(1)).name
    return sorted({"torch", auto})


def _module(variant="G", seed=0):
    torch.manual_seed(seed)
    m = sapa.SAPA(8, 4, variant=variant, kernel_size=3, embedding_dim=6).eval()
    with torch.no_grad():  # non-trivial weights: the official init has zero biases and tiny weights
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def _xy(B=2, H=5, W=7, Hq=11, Wq=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 8, H, W, generator=g), torch.randn(B, 4, Hq, Wq, generator=g)


# ---- the registered ops -----------------------------------------------------------------
def test_opcheck_schema_fake_autograd():
    q, k, v = (t.requires_grad_() for t in _qkv(dtype=torch.float64))
    for norm, pad in (("relu", "ignore"),):
        res = torch.library.opcheck(torch.ops.sapa.upsample.default, (q, k, v, 3, norm, pad, "torch"))
        assert all(r == "SUCCESS" for r in res.values()), res


def test_op_matches_reference_and_gradients():
    q, k, v = (t.requires_grad_() for t in _qkv(dtype=torch.float64))
    out, stat = torch.ops.sapa.upsample(q, k, v, 3, "softmax", "zeros", "torch")
    assert stat.shape == (0,)
    ref = sapa.sapa_upsample(q, k, v, 3, backend="reference")
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g))


def test_meta_and_fake_tensors_propagate_shapes():
    q, k, v = _qkv()
    out = sapa.sapa_upsample(*(t.to("meta") for t in (q, k, v)), 3)
    assert out.device.type == "meta" and out.shape == (2, 3, 11, 13)
    m = _module().to("meta")
    x, y = _xy()
    assert m(x.to("meta"), y.to("meta")).shape == (2, 8, 11, 13)
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fq, fk, fv = (mode.from_tensor(t.requires_grad_()) for t in _qkv(H=6, W=6, Hq=13, Wq=19))
    with mode:
        out = sapa.sapa_upsample(fq, fk, fv, 5)
        assert out.shape == (2, 3, 13, 19)
        out.sum().backward()
        assert fq.grad.shape == fq.shape and fk.grad.shape == fk.shape and fv.grad.shape == fv.shape


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_batch_size_zero(backend):
    q, k, v = (t[:0].requires_grad_() for t in _qkv())
    out = sapa.sapa_upsample(q, k, v, 3, backend=backend)
    assert out.shape == (0, 3, 11, 13)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    x, y = _xy(B=0)
    assert _module()(x, y).shape == (0, 8, 11, 13)


def test_channels_last_in_channels_last_out():
    m = _module()
    x, y = _xy()
    ref = m(x, y)
    out = m(x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, ref)
    assert ref.is_contiguous()
    q, k, v = _qkv()
    for backend in ("reference", "torch"):
        o = sapa.sapa_upsample(q, k, v.contiguous(memory_format=torch.channels_last), 3, backend=backend)
        assert o.is_contiguous(memory_format=torch.channels_last), backend


# ---- torch.compile --------------------------------------------------------------------------
def test_compile_fullgraph_no_graph_break_dynamic_compiles_once():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    m = _module()
    explained = torch._dynamo.explain(m)(*_xy())
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(m, backend=counter, fullgraph=True, dynamic=True)
    for H, W, Hq, Wq in ((5, 7, 11, 13), (6, 6, 12, 12), (4, 9, 9, 20)):
        x, y = _xy(H=H, W=W, Hq=Hq, Wq=Wq)
        torch.testing.assert_close(compiled(x, y), m(x, y))
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_compile_aot_eager_forward_and_backward():
    torch._dynamo.reset()
    q, k, v = _qkv()

    def f(q, k, v):
        return sapa.sapa_upsample(q, k, v, 3, "sigmoid", "ignore")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, ref = compiled(*leaves), f(*ref_leaves)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, ref_leaves, g))
    torch._dynamo.reset()


def test_without_triton_compile_fullgraph_and_clear_errors():
    """A process where `import triton` fails: compile still fullgraph; asking for triton says why."""
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # `import triton` now raises ImportError
        import pytest, torch, sapa
        import sapa.backends as B
        calls = []
        load = B._OPTIONAL["triton"]
        B._OPTIONAL["triton"] = lambda: (calls.append(1), load())[1]
        m = sapa.SAPA(8, 4, variant="G", kernel_size=3)
        x, y = torch.randn(2, 8, 5, 7), torch.randn(2, 4, 11, 13)
        out = torch.compile(m, backend="eager", fullgraph=True)(x, y)
        torch.testing.assert_close(out, m(x, y))
        for _ in range(3):
            sapa.sapa_upsample(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2))
        assert calls == [1], calls  # the failed import was tried once
        assert "triton" not in sapa.available_backends()
        with pytest.raises(ValueError, match="backend 'triton' is not available.*needs Triton"):
            sapa.SAPA(8, 4, backend="triton")
        with pytest.raises(ValueError, match="backend 'triton' is not available"):
            sapa.sapa_upsample(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2),
                               backend="triton")
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-4000:]


# ---- torch.export -----------------------------------------------------------------------------
@pytest.mark.parametrize("strict", [True, False])
def test_export_matches_eager(strict):
    m = _module()
    m.backend = "torch" if strict else "auto"
    x, y = _xy()
    ep = torch.export.export(m, (x, y), strict=strict)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "sapa.upsample.default" in ops, ops  # one opaque node, not a traced backend
    x2, y2 = _xy(seed=7)
    torch.testing.assert_close(ep.module()(x2, y2), m(x2, y2))


def test_export_dynamic_spatial_sizes():
    from torch.export import Dim

    m = _module(variant="B")
    x, y = _xy()
    dims = ({2: Dim("h", min=2, max=64), 3: Dim("w", min=2, max=64)},
            {2: Dim("hq", min=2, max=256), 3: Dim("wq", min=2, max=256)})
    ep = torch.export.export(m, (x, y), dynamic_shapes=dims, strict=False)
    for H, W, Hq, Wq in ((6, 6, 12, 13), (3, 8, 9, 8)):
        x2, y2 = _xy(H=H, W=W, Hq=Hq, Wq=Wq, seed=H)
        torch.testing.assert_close(ep.module()(x2, y2), m(x2, y2))


# ---- torch.func -------------------------------------------------------------------------------
def test_vmap_matches_a_loop():
    from torch.func import vmap

    q, k, v = (t.view(3, 2, *t.shape[1:]) for t in _qkv(B=6, dtype=torch.float64))
    for backend in _fast_cpu_backends():
        f = lambda q, k, v: sapa.sapa_upsample(q, k, v, 3, "softplus", backend=backend)  # noqa: E731
        torch.testing.assert_close(vmap(f)(q, k, v), torch.stack([f(*a) for a in zip(q, k, v)]))
        torch.testing.assert_close(vmap(f, in_dims=(0, None, 0))(q, k[0], v),
                                   torch.stack([f(a, k[0], c) for a, c in zip(q, v)]))


def test_jacrev_matches_reference():
    from torch.func import jacrev

    q, k, v = _qkv(B=1, d=2, C=2, H=2, W=3, Hq=5, Wq=5, dtype=torch.float64)
    jac = {b: jacrev(lambda *a: sapa.sapa_upsample(*a, 3, backend=b), argnums=(0, 1, 2))(q, k, v)
           for b in _fast_cpu_backends() + ["reference"]}
    for backend in _fast_cpu_backends():
        for a, e in zip(jac[backend], jac["reference"]):
            torch.testing.assert_close(a, e, msg=lambda m: f"{backend}: {m}")


def test_per_sample_gradients_with_functional_call():
    from torch.func import functional_call, grad, vmap

    m = _module().double()
    params = {n: p.detach() for n, p in m.named_parameters()}
    x, y = (t.double() for t in _xy(B=3))

    def loss(p, xi, yi):
        return functional_call(m, p, (xi[None], yi[None])).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        m.zero_grad()
        m(x[i : i + 1], y[i : i + 1]).square().sum().backward()
        for n, p in m.named_parameters():
            torch.testing.assert_close(per_sample[n][i], p.grad, msg=lambda s: f"{n}, sample {i}: {s}")


# ---- ONNX and TorchScript ---------------------------------------------------------------------
def _run_onnx(model_bytes, x, y):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert len(names) == 2, names  # the inputs are real graph inputs (not folded into constants)
    return torch.from_numpy(sess.run(None, {names[0]: x.numpy(), names[1]: y.numpy()})[0])


@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_export_runs_in_onnxruntime(dynamo):
    pytest.importorskip("onnx")
    m = _module()
    x, y = _xy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            model = torch.onnx.export(m, (x, y), dynamo=True).model_proto.SerializeToString()
        else:
            f = io.BytesIO()
            torch.onnx.export(m, (x, y), f, dynamo=False, opset_version=17)
            model = f.getvalue()
    x2, y2 = _xy(seed=5)  # other values, same shapes: a graph that ignores its inputs fails here
    torch.testing.assert_close(_run_onnx(model, x2, y2), m(x2, y2), atol=1e-4, rtol=1e-4)


def test_jit_trace_save_load(tmp_path):
    m = _module()
    x, y = _xy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the shape checks
        traced = torch.jit.trace(m, (x, y))
    torch.jit.save(traced, tmp_path / "sapa.pt")
    loaded = torch.jit.load(tmp_path / "sapa.pt")
    x2, y2 = _xy(seed=3)
    torch.testing.assert_close(loaded(x2, y2), m(x2, y2))


def test_eager_path_equals_the_op_and_double_backward():
    q, k, v = (t.requires_grad_() for t in _qkv(dtype=torch.float64))
    for backend in _fast_cpu_backends():
        out = sapa.sapa_upsample(q, k, v, 3, "relu", "ignore", backend=backend)  # eager fast path
        op_out = torch.ops.sapa.upsample(q, k, v, 3, "relu", "ignore", backend)[0]
        torch.testing.assert_close(out, op_out)
        g = torch.randn_like(out)
        torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(op_out, (q, k, v), g))
        (gq,) = torch.autograd.grad(sapa.sapa_upsample(q, k, v, 3, backend=backend).sum(), q, create_graph=True)
        (gq_ref,) = torch.autograd.grad(sapa.sapa_upsample(q, k, v, 3, backend="reference").sum(), q,
                                        create_graph=True)
        torch.testing.assert_close(gq, gq_ref)
        assert gq.requires_grad  # a graph: second-order gradients (tests/test_higher_order.py)
        torch.testing.assert_close(torch.autograd.grad(gq.square().sum(), k),
                                   torch.autograd.grad(gq_ref.square().sum(), k))


def _export_op(normalization, padding, dynamo, K=3, C=12, H=5, W=6, s=2, t=2, dynamic=True):
    """The bare op exported at batch 2; ``dynamic``: batch and spatial sizes are graph inputs."""
    onnx = pytest.importorskip("onnx")

    class Op(torch.nn.Module):
        def forward(self, q, k, v):
            return sapa.sapa_upsample(q, k, v, K, normalization, padding)

    q, k, v = _qkv(B=2, d=4, C=C, H=H, W=W, Hq=H * s, Wq=W * t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            b, h, w = torch.export.Dim("B"), torch.export.Dim("H", min=2), torch.export.Dim("W", min=2)
            shapes = ({0: b, 2: s * h, 3: t * w}, {0: b, 2: h, 3: w}, {0: b, 2: h, 3: w}) if dynamic else None
            return torch.onnx.export(Op(), (q, k, v), dynamo=True, dynamic_shapes=shapes).model_proto
        f = io.BytesIO()
        axes = {"q": {0: "B", 2: "Hq", 3: "Wq"}, "k": {0: "B", 2: "H", 3: "W"}, "v": {0: "B", 2: "H", 3: "W"}}
        torch.onnx.export(Op(), (q, k, v), f, dynamo=False, opset_version=17, input_names=["q", "k", "v"],
                          dynamic_axes=axes if dynamic else None)
        return onnx.load_from_string(f.getvalue())


def _largest_per_item(model):
    """Most elements per batch item of any tensor of the graph (shape inference, static dims)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    best = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if len(dims) >= 2 and all(dims[1:]):
            n = 1
            for x in dims[1:]:
                n *= x
            best = max(best, n)
    return best


def _check_onnx_runs(model, normalization, padding, K=3, C=12, s=2, t=2, sizes=((5, 6), (8, 3), (2, 2))):
    """The exported graph at batch 3 and 0 and at other map sizes equals the eager operator."""
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert len(names) == 3, names  # q, k, v are real graph inputs (not folded into constants)
    for B in (3, 0):
        for H, W in sizes:
            q, k, v = _qkv(B=B, d=4, C=C, H=H, W=W, Hq=H * s, Wq=W * t, seed=B + H)
            out = sess.run(None, dict(zip(names, (q.numpy(), k.numpy(), v.numpy()))))[0]
            ref = sapa.sapa_upsample(q, k, v, K, normalization, padding)
            assert out.shape == tuple(ref.shape), (B, H, W)
            torch.testing.assert_close(torch.from_numpy(out), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("padding", ["zeros", "ignore"])
@pytest.mark.parametrize("normalization", ["softmax", "relu", "sigmoid", "softplus", "none"])
def test_onnx_graph_any_batch_and_map_size(normalization, padding):
    """TorchScript exporter: one graph for every batch size (also 0) and map size (ratio 2)."""
    _check_onnx_runs(_export_op(normalization, padding, dynamo=False), normalization, padding)


def test_onnx_graph_size_does_not_depend_on_channels_or_map_size():
    """The graph is per-pixel MatMuls of K gathered shifts: its node count depends on K alone,
    and no tensor holds the K*K gathered values (nothing per item above the output's size)."""
    nodes = {}
    for C, H, W in ((12, 5, 6), (96, 23, 17)):
        for dynamic in (False, True):
            model = _export_op("softmax", "ignore", dynamo=False, C=C, H=H, W=W, dynamic=dynamic)
            nodes[C, H, W, dynamic] = len(model.graph.node)
            if not dynamic:
                assert 0 < _largest_per_item(model) <= C * H * W * 4  # output: C x 2H x 2W
    for dynamic in (False, True):  # dynamic sizes add Shape nodes, the same number at every size
        assert nodes[12, 5, 6, dynamic] == nodes[96, 23, 17, dynamic], nodes
    assert max(nodes.values()) < 400, nodes  # TorchScript: ~330 (half of them Constant), dynamo: ~100


def test_onnx_graph_unequal_ratios():
    """s != t (2 x 3): the phases still come out of one transpose."""
    model = _export_op("softmax", "zeros", dynamo=False, K=5, C=5, s=2, t=3)
    _check_onnx_runs(model, "softmax", "zeros", K=5, C=5, s=2, t=3, sizes=((5, 6), (3, 9)))


@pytest.mark.slow  # the dynamo ONNX exporter (~10-20 s): `make test-fast` skips it
def test_onnx_dynamo_exporter_dynamic_batch_and_map_size():
    model = _export_op("softmax", "ignore", dynamo=True)
    assert len(model.graph.node) < 300
    _check_onnx_runs(model, "softmax", "ignore")


def test_onnx_non_integer_scale():
    ort = pytest.importorskip("onnxruntime")

    class Op(torch.nn.Module):
        def forward(self, q, k, v):
            return sapa.sapa_upsample(q, k, v, 5, "softmax", "zeros")

    q, k, v = _qkv(Hq=11, Wq=13)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Op(), (q, k, v), f, dynamo=False, opset_version=17, input_names=["q", "k", "v"])
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    q, k, v = _qkv(Hq=11, Wq=13, seed=4)
    out = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), sapa.sapa_upsample(q, k, v, 5), atol=1e-4, rtol=1e-4)


def _exported():
    m = _module()
    x, y = _xy()
    return m, torch.export.export(m, (x, y)), _xy(seed=4)


def test_exported_program_decomposes():
    """torch.export keeps the opaque op; its registered decomposition (export_upsample) gives an
    aten-only graph with the same values."""
    m, ep, (x2, y2) = _exported()
    assert any("sapa.upsample" in str(n.target) for n in ep.graph.nodes)
    dep = ep.run_decompositions(sapa.library.DECOMPOSITIONS)
    assert not any("sapa" in str(n.target) for n in dep.graph.nodes)
    torch.testing.assert_close(dep.module()(x2, y2), m(x2, y2))


@pytest.mark.slow  # the dynamo ONNX exporter (~15 s): `make test-fast` skips it
def test_exported_program_exports_to_onnx():
    """An ExportedProgram decomposed with sapa.library.DECOMPOSITIONS goes through the dynamo
    ONNX exporter (the opaque op alone cannot: no ONNX function for it)."""
    pytest.importorskip("onnxscript")
    m, ep, (x2, y2) = _exported()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.onnx.export(ep.run_decompositions(sapa.library.DECOMPOSITIONS),
                                  dynamo=True).model_proto.SerializeToString()
    torch.testing.assert_close(_run_onnx(model, x2, y2), m(x2, y2), atol=1e-4, rtol=1e-4)


def _export_module(m, x, y, dynamo):
    onnx = pytest.importorskip("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            b, h, w = torch.export.Dim("B"), torch.export.Dim("H", min=2), torch.export.Dim("W", min=2)
            shapes = ({0: b, 2: h, 3: w}, {0: b, 2: 2 * h, 3: 2 * w})
            return torch.onnx.export(m, (x, y), dynamo=True, dynamic_shapes=shapes).model_proto
        f = io.BytesIO()
        torch.onnx.export(m, (x, y), f, dynamo=False, opset_version=17, input_names=["x", "y"],
                          dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}, "y": {0: "B", 2: "Hy", 3: "Wy"}})
        return onnx.load_from_string(f.getvalue())


def _check_module_onnx(variant, dynamo):
    """The whole module (LayerNorms, projections, gate, the operator) exported once runs at other
    batch sizes (also 0) and map sizes: every reshape of the graph must name its sizes."""
    ort = pytest.importorskip("onnxruntime")
    Cy = 16 if variant == "I" else 8
    m = sapa.SAPA(16, Cy, variant=variant, kernel_size=5).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    model = _export_module(m, torch.randn(2, 16, 6, 7), torch.randn(2, Cy, 12, 14), dynamo)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for B, H, W in ((3, 9, 5), (0, 4, 4), (1, 16, 16)):
        x, y = torch.randn(B, 16, H, W), torch.randn(B, Cy, 2 * H, 2 * W)
        out = sess.run(None, dict(zip(names, (x.numpy(), y.numpy()))))[0]
        torch.testing.assert_close(torch.from_numpy(out), m(x, y), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["I", "B", "P", "G"])
def test_module_onnx_any_batch_and_map_size(variant):
    _check_module_onnx(variant, dynamo=False)


@pytest.mark.slow  # the dynamo ONNX exporter (~15 s): `make test-fast` skips it
def test_module_onnx_dynamo_any_batch_and_map_size():
    _check_module_onnx("G", dynamo=True)
