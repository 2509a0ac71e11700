"""Numerics of sapa_upsample: backends agree with a float64 reference, gradcheck, Eq. 4."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

import sapa
from _kink import away_from_kink, min_abs_logit
from sapa.normalize import NORM_EPS
from sapa.windows import window_centres

NORMS = ("softmax", "relu", "sigmoid", "softplus", "none")
PADS = ("zeros", "ignore")
CPU_BACKENDS = ("reference", "torch")


def _inputs(B, d, C, H, W, Hq, Wq, dtype=torch.float64, seed=None, scale=1.0):
    g = torch.Generator().manual_seed(seed if seed is not None else random.randrange(2**31))
    q = (scale * torch.randn(B, d, Hq, Wq, generator=g, dtype=torch.float64)).to(dtype)
    k = (scale * torch.randn(B, d, H, W, generator=g, dtype=torch.float64)).to(dtype)
    v = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    return [t.requires_grad_() for t in (q, k, v)]


def loop_sapa(q, k, v, K, normalization, padding):
    """Explicit-loop float64 oracle, written straight from the definition (tiny sizes only)."""
    B, d, Hq, Wq = q.shape
    C, H, W = v.shape[1:]
    R = K // 2
    out = torch.zeros(B, C, Hq, Wq, dtype=torch.float64)
    for b, i, j in itertools.product(range(B), range(Hq), range(Wq)):
        a, c = (i * H) // Hq, (j * W) // Wq
        logits, vals, inside = [], [], []
        for dy, dx in itertools.product(range(-R, R + 1), repeat=2):
            y, x = a + dy, c + dx
            ok = 0 <= y < H and 0 <= x < W
            kk = k[b, :, y, x] if ok else torch.zeros(d, dtype=torch.float64)
            vv = v[b, :, y, x] if ok else torch.zeros(C, dtype=torch.float64)
            logits.append(q[b, :, i, j] @ kk)
            vals.append(vv)
            inside.append(ok)
        s = torch.stack(logits)
        mask = torch.tensor(inside) if padding == "ignore" else torch.ones(len(inside), dtype=torch.bool)
        if normalization == "softmax":
            w = torch.softmax(s.masked_fill(~mask, float("-inf")), 0)
        elif normalization == "none":
            w = s * mask
        else:
            h = {"relu": torch.relu, "sigmoid": torch.sigmoid, "softplus": F.softplus}[normalization](s) * mask
            w = h / (h.sum() + NORM_EPS)
        out[b, :, i, j] = (w[:, None] * torch.stack(vals)).sum(0)
    return out


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("padding", PADS)
def test_reference_matches_loops(normalization, padding):
    q, k, v = _inputs(1, 3, 2, 3, 4, 7, 9)
    for K in (1, 3, 5):
        expected = loop_sapa(q.detach(), k.detach(), v.detach(), K, normalization, padding)
        got = sapa.sapa_upsample(q, k, v, K, normalization, padding, backend="reference")
        torch.testing.assert_close(got, expected)


def _random_case(rng):
    H, W = rng.randint(1, 7), rng.randint(1, 7)
    r = rng.choice([1, 2, 3, 4])
    Hq = H * r + rng.choice([0, 0, 1, r - 1 if r > 1 else 0])
    Wq = W * rng.choice([1, 2, 3, 4]) + rng.choice([0, 1])
    return dict(B=rng.randint(1, 2), d=rng.randint(1, 5), C=rng.randint(1, 6), H=H, W=W, Hq=Hq, Wq=Wq)


@pytest.mark.parametrize("K", [1, 3, 5, 7])
@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("padding", PADS)
def test_torch_backend_matches_reference_forward_and_backward(K, normalization, padding):
    rng = random.Random()
    for _ in range(3):
        case = _random_case(rng)
        q, k, v = _inputs(**case)
        ref = sapa.sapa_upsample(q, k, v, K, normalization, padding, backend="reference")
        out = sapa.sapa_upsample(q, k, v, K, normalization, padding, backend="torch")
        torch.testing.assert_close(out, ref, msg=lambda m: f"{case}: {m}")
        g = torch.randn_like(ref)
        grads_ref = torch.autograd.grad(ref, (q, k, v), g)
        grads = torch.autograd.grad(out, (q, k, v), g)
        for name, a, b in zip("qkv", grads, grads_ref):
            torch.testing.assert_close(a, b, msg=lambda m: f"grad {name} {case}: {m}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "normalization,padding",
    [("softmax", "zeros"), ("softmax", "ignore"), ("relu", "zeros"), ("sigmoid", "ignore"),
     ("softplus", "zeros"), ("none", "ignore")],
)
def test_gradcheck(backend, normalization, padding):
    q, k, v = _inputs(1, 2, 3, 3, 4, 7, 9)
    if normalization == "relu":  # every in-map logit q . k at least 0.05 away from relu's kink
        away_from_kink(q, k, 3)
        assert min_abs_logit(q, k, 3) >= 0.05
    fn = lambda q, k, v: sapa.sapa_upsample(q, k, v, 3, normalization, padding, backend=backend)
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_partial_requires_grad(backend):
    q, k, v = _inputs(2, 3, 4, 4, 5, 8, 10)
    k.requires_grad_(False)
    out = sapa.sapa_upsample(q, k, v, backend=backend)
    gq, gv = torch.autograd.grad(out.sum(), (q, v))
    q2, k2, v2 = (t.detach().requires_grad_() for t in (q, k, v))
    gq2, gv2 = torch.autograd.grad(sapa.sapa_upsample(q2, k2, v2, backend="reference").sum(), (q2, v2))
    torch.testing.assert_close(gq, gq2)
    torch.testing.assert_close(gv, gv2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_against_float64(backend, dtype):
    q, k, v = _inputs(2, 8, 6, 5, 7, 11, 14, dtype=torch.float64)
    ref = sapa.sapa_upsample(q, k, v, backend="reference")
    gref = torch.autograd.grad(ref, (q, k, v), torch.ones_like(ref))
    ql, kl, vl = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out = sapa.sapa_upsample(ql, kl, vl, backend=backend)
    assert out.dtype == dtype
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    # Compare against the float64 result of the *rounded* inputs (the op accumulates in fp32).
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (ql, kl, vl))
    ref_r = sapa.sapa_upsample(q64, k64, v64, backend="reference")
    torch.testing.assert_close(out.double(), ref_r, atol=tol, rtol=tol)
    grads = torch.autograd.grad(out, (ql, kl, vl), torch.ones_like(out))
    gref_r = torch.autograd.grad(ref_r, (q64, k64, v64), torch.ones_like(ref_r))
    for g, gr in zip(grads, gref_r):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), gr, atol=4 * tol, rtol=4 * tol)
    del gref


def test_window_centres():
    assert window_centres(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert window_centres(9, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert window_centres(5, 5).tolist() == [0, 1, 2, 3, 4]
    for n_in in range(1, 9):
        for n_out in range(n_in, 4 * n_in + 2):
            c = window_centres(n_out, n_in)
            assert c.min() == 0 and c.max() == n_in - 1
            assert (c[1:] - c[:-1]).ge(0).all() and (c[1:] - c[:-1]).le(1).all()


def test_official_semantics_integer_scale():
    """H' = s*H: centre is (i//s, j//s) and padding='zeros' equals zero-padded key and value."""
    q, k, v = _inputs(2, 4, 3, 5, 6, 10, 12)
    out = sapa.sapa_upsample(q, k, v, 5, backend="torch")
    rows = torch.arange(10) // 2
    cols = torch.arange(12) // 2
    kp, vp = F.pad(k, (2, 2, 2, 2)), F.pad(v, (2, 2, 2, 2))
    logits = torch.stack(
        [(q * kp[:, :, rows + dy][:, :, :, cols + dx]).sum(1) for dy in range(5) for dx in range(5)], 1
    )
    w = logits.softmax(1)
    expected = sum(
        w[:, p : p + 1] * vp[:, :, rows + p // 5][:, :, :, cols + p % 5] for p in range(25)
    )
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------- Eq. 4 as a property
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("normalization", ["softmax", "relu", "sigmoid", "softplus"])
def test_smooth_window_gives_average_kernel(backend, normalization):
    """Eq. 4: if all K*K decoder points in a window are equal, the kernel is 1/K^2 for any query.

    We check it through the output: with a constant key window and a value that is a random
    field, the output at interior pixels must equal the plain K x K box average of the value.
    """
    B, d, C, H, W, K = 2, 6, 3, 9, 9, 5
    key = torch.randn(B, d, 1, 1, dtype=torch.float64).expand(B, d, H, W).contiguous()
    if normalization == "relu":  # relu needs a positive similarity so the kernel is not 0
        key = key.abs()
    query = torch.randn(B, d, 2 * H, 2 * W, dtype=torch.float64)
    if normalization == "relu":
        query = query.abs()
    value = torch.randn(B, C, H, W, dtype=torch.float64)
    out = sapa.sapa_upsample(query, key, value, K, normalization, "ignore", backend=backend)
    box = F.avg_pool2d(value, K, stride=1)  # average over fully interior windows
    R = K // 2
    interior = out[:, :, 2 * R : 2 * (H - R), 2 * R : 2 * (W - R)]
    expected = sapa.nearest_upsample_to(box, interior.shape[-2:])
    if normalization != "softmax":
        # w = h / (K^2 h + NORM_EPS): the eps scales the average kernel by K^2 h / (K^2 h + eps)
        sim = torch.einsum("bdhw,bd->bhw", query, key[:, :, 0, 0])
        h = {"relu": torch.relu, "sigmoid": torch.sigmoid, "softplus": F.softplus}[normalization](sim)
        factor = (K * K * h / (K * K * h + NORM_EPS))[:, None, 2 * R : 2 * (H - R), 2 * R : 2 * (W - R)]
        expected = expected * factor
    torch.testing.assert_close(interior, expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_detail_window_prefers_similar_cluster(backend):
    """In a detail window the weight concentrates on the cluster the query is similar to."""
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    key = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    key[0, :, :, :2] = a[:, None, None].double() * 4
    key[0, :, :, 2:] = b[:, None, None].double() * 4
    value = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    value[0, 0, :, :2] = 1.0  # cluster 'a' has value 1, cluster 'b' value 0
    query = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    query[0, :, 2, 2] = a.double() * 4  # centre window straddles both clusters
    out_a = sapa.sapa_upsample(query, key, value, 5, backend=backend)[0, 0, 2, 2]
    query[0, :, 2, 2] = b.double() * 4
    out_b = sapa.sapa_upsample(query, key, value, 5, backend=backend)[0, 0, 2, 2]
    assert out_a > 0.99 and out_b < 0.01


# ------------------------------------------------------------------------- errors
def _ok():
    return torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 6, 4, 4)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda q, k, v: (q[0], k, v), ValueError, r"query must have 4 dimensions.*\(4, 8, 8\)"),
        (lambda q, k, v: (q, k[None], v), ValueError, r"key must have 4 dimensions"),
        (lambda q, k, v: (q, k, v[:1]), ValueError, r"batch sizes differ.*\(1, 6, 4, 4\)"),
        (lambda q, k, v: (q[:, :3], k, v), ValueError, r"embedding dimension.*\(2, 3, 8, 8\).*\(2, 4, 4, 4\)"),
        (lambda q, k, v: (q, k, v[..., :3]), ValueError, r"same spatial size.*\(2, 6, 4, 3\)"),
        (lambda q, k, v: (q[..., :3, :], k, v), ValueError, r"at least as large.*\(2, 4, 3, 8\)"),
        (lambda q, k, v: (q, k.double(), v), TypeError, r"share one dtype"),
        (lambda q, k, v: (q.long(), k, v), TypeError, r"query must be a floating-point.*int64"),
        (lambda q, k, v: (q, k, v.int()), TypeError, r"value must be a floating-point"),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, r"query must be a torch.Tensor"),
        (lambda q, k, v: (q, k.to("meta"), v), ValueError, r"one device"),
    ],
)
def test_bad_tensors(mutate, exc, match):
    with pytest.raises(exc, match=match):
        sapa.sapa_upsample(*mutate(*_ok()))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(kernel_size=4), ValueError, "kernel_size must be a positive odd integer, got 4"),
        (dict(kernel_size=0), ValueError, "kernel_size"),
        (dict(kernel_size=-3), ValueError, "kernel_size"),
        (dict(kernel_size=3.0), TypeError, "kernel_size must be an int"),
        (dict(normalization="exp"), ValueError, "unknown normalization 'exp'"),
        (dict(padding="reflect"), ValueError, "unknown padding 'reflect'"),
        (dict(backend="cuda"), ValueError, "unknown backend 'cuda'"),
        (dict(backend=None), TypeError, "backend must be a string"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sapa.sapa_upsample(*_ok(), **kwargs)


def test_auto_on_cpu_uses_cpp_when_it_builds_else_torch():
    from sapa.backends import cpp

    q, k, v = _inputs(1, 3, 2, 4, 4, 8, 8)
    expected = "cpp" if cpp.available(q) else "torch"
    torch.testing.assert_close(
        sapa.sapa_upsample(q, k, v, backend="auto"), sapa.sapa_upsample(q, k, v, backend=expected), rtol=0, atol=0
    )


def test_deterministic_torch_backend():
    q, k, v = _inputs(2, 5, 7, 6, 7, 13, 15, dtype=torch.float32)
    runs = []
    for _ in range(2):
        out = sapa.sapa_upsample(q, k, v, backend="torch")
        runs.append((out,) + torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("padding", PADS)
@pytest.mark.parametrize("normalization", NORMS)
def test_sapa_kernels_reassemble_the_output(normalization, padding):
    """sapa_kernels returns the weights that sapa_upsample applies to the zero-padded windows."""
    q, k, v = _inputs(2, 3, 4, 4, 5, 9, 11)
    K = 3
    w = sapa.sapa_kernels(q, k, K, normalization, padding)
    assert w.shape == (2, K * K, 9, 11)
    rows, cols = window_centres(9, 4), window_centres(11, 5)
    v_unf = F.unfold(v, K, padding=1).view(2, 4, K * K, 4, 5)[..., rows, :][..., cols]
    torch.testing.assert_close((w[:, None] * v_unf).sum(2), sapa.sapa_upsample(q, k, v, K, normalization, padding))
    if normalization == "softmax":
        torch.testing.assert_close(w.sum(1), torch.ones(2, 9, 11, dtype=w.dtype))


@pytest.mark.parametrize(
    "size,exc,match",
    [
        ((0, 5), ValueError, r"size\[0\] must be positive, got 0"),
        ((4, -1), ValueError, r"size\[1\] must be positive"),
        ((4,), ValueError, r"size must be a pair of ints.*\(4,\)"),
        (8, TypeError, "size must be a pair of ints"),
        ((4.0, 4), TypeError, r"size\[0\] must be an int, got float"),
    ],
)
def test_nearest_upsample_to_validates_size(size, exc, match):
    with pytest.raises(exc, match=match):
        sapa.nearest_upsample_to(torch.randn(1, 2, 3, 3), size)


def test_nearest_upsample_to_accepts_integer_sizes():
    np = pytest.importorskip("numpy")
    x = torch.randn(1, 2, 3, 4)
    expected = x[..., window_centres(7, 3), :][..., window_centres(9, 4)]
    for size in ((7, 9), torch.Size([7, 9]), (np.int64(7), np.int32(9)), [7, 9]):
        torch.testing.assert_close(sapa.nearest_upsample_to(x, size), expected)
