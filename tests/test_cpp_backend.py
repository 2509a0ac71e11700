"""The C++ CPU backend ("cpp"): numerics against float64, gradients, determinism, the fallback.

Compile cost: the extension is built once per source version and machine into PyTorch's
extensions cache (``~/.cache/torch_extensions`` or ``$TORCH_EXTENSIONS_DIR``); the first test
that needs it pays the build (about a minute on one idle core), every later process of the
suite loads the cached library. The fallback tests never build: one fakes the failure
in-process, the other runs a subprocess with a fresh, empty extensions directory and a
compiler that does not exist, so the real build fails at once.
"""
import itertools
import os
import random
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import sapa
from sapa.backends import cpp, resolve_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NORMS = ("softmax", "relu", "sigmoid", "softplus", "none")
PADS = ("zeros", "ignore")
# (B, d, C, H, W, H', W'): integer scales, odd and non-integer scales, H' = H, 1-pixel maps,
# widths that are not a multiple of the vector width
SHAPES = [
    (2, 5, 6, 8, 8, 16, 16),
    (1, 3, 2, 3, 4, 7, 9),
    (2, 8, 5, 6, 5, 13, 11),
    (1, 4, 3, 5, 7, 5, 7),
    (1, 2, 3, 1, 1, 3, 2),
    (1, 33, 17, 9, 21, 20, 45),
    (1, 4, 9, 4, 19, 12, 76),
]


@pytest.fixture(scope="module")
def ext():
    """The compiled extension; a failed build fails these tests (it names the reason)."""
    mod = cpp.load_extension()
    assert mod is not None, f"the C++ extension did not build: {cpp.build_error()}"
    return mod


def _inputs(B, d, C, H, W, Hq, Wq, dtype=torch.float64, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else random.randrange(2**31))
    q = torch.randn(B, d, Hq, Wq, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, d, H, W, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    grad = torch.randn(B, C, Hq, Wq, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v, grad


def _run(backend, q, k, v, grad, K, normalization, padding):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = sapa.sapa_upsample(q, k, v, K, normalization, padding, backend=backend)
    return (out,) + torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("padding", PADS)
def test_matches_float64_reference(ext, one_thread, normalization, padding):
    """Output and all three gradients, float64 and float32, against the float64 reference."""
    for shape in SHAPES:
        q, k, v, grad = _inputs(*shape)
        for K in (1, 3, 5, 7):
            expected = _run("reference", q, k, v, grad, K, normalization, padding)
            # relu and softplus weigh by 1/(sum h + 1e-6): where a window's h are all ~0 the
            # weights are ill-conditioned, and float32 rounding of the logits is amplified
            # ~1e5-fold; their float32 path is the same template as the float64 one tested here
            dtypes = (torch.float64,) if normalization in ("relu", "softplus") else (torch.float64, torch.float32)
            for dtype in dtypes:
                args = [t.to(dtype) for t in (q, k, v, grad)]
                got = _run("cpp", *args, K, normalization, padding)
                for name, g, e in zip(("out", "grad_query", "grad_key", "grad_value"), got, expected):
                    assert g.dtype == dtype
                    if dtype == torch.float64:
                        torch.testing.assert_close(g, e, msg=lambda m: f"{name} {shape} K={K}: {m}")
                    else:
                        torch.testing.assert_close(g.double(), e, rtol=2e-4, atol=2e-4,
                                                   msg=lambda m: f"{name} {shape} K={K}: {m}")


@pytest.mark.parametrize("normalization,padding", [("softmax", "zeros"), ("softmax", "ignore"), ("sigmoid", "ignore"),
                                                   ("softplus", "zeros"), ("none", "ignore")])
def test_gradcheck(ext, one_thread, normalization, padding):
    q, k, v, _ = _inputs(1, 3, 2, 3, 4, 7, 9)
    fn = lambda q, k, v: sapa.sapa_upsample(q, k, v, 3, normalization, padding, backend="cpp")
    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (q, k, v)))


def test_every_subset_of_gradients(ext, one_thread):
    """Only the requested gradients are computed, and each equals the full backward's."""
    q, k, v, grad = _inputs(2, 4, 3, 5, 6, 10, 13)
    expected = _run("reference", q, k, v, grad, 5, "softmax", "ignore")[1:]
    for mask in itertools.product((False, True), repeat=3):
        if not any(mask):
            continue
        ts = [t.detach().clone().requires_grad_(m) for t, m in zip((q, k, v), mask)]
        out = sapa.sapa_upsample(*ts, 5, "softmax", "ignore", backend="cpp")
        got = torch.autograd.grad(out, [t for t in ts if t.requires_grad], grad)
        for g, e in zip(got, [e for e, m in zip(expected, mask) if m]):
            torch.testing.assert_close(g, e)


def test_non_contiguous_inputs(ext, one_thread):
    q, k, v, grad = _inputs(2, 4, 6, 5, 6, 10, 12, dtype=torch.float32)
    args = [t.to(memory_format=torch.channels_last) for t in (q, k, v)] + [grad.transpose(-1, -2).contiguous().transpose(-1, -2)]
    got = _run("cpp", *args, 5, "softmax", "ignore")
    expected = _run("reference", *(t.double() for t in (q, k, v, grad)), 5, "softmax", "ignore")
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_gradients_bitwise_repeatable(ext, threads):
    """Same inputs, same bits: run to run, and whatever the number of threads."""
    q, k, v, grad = _inputs(2, 8, 12, 9, 11, 18, 23, dtype=torch.float32)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        first = _run("cpp", q, k, v, grad, 5, "softmax", "zeros")
        second = _run("cpp", q, k, v, grad, 5, "softmax", "zeros")
        torch.set_num_threads(1)
        single = _run("cpp", q, k, v, grad, 5, "softmax", "zeros")
    finally:
        torch.set_num_threads(n)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_auto_picks_cpp_for_float_cpu_tensors(ext):
    for dtype in (torch.float32, torch.float64):
        assert resolve_backend("auto", torch.zeros(1, dtype=dtype)).name == "cpp"
    for dtype in (torch.float16, torch.bfloat16):  # half precision runs on "torch"
        assert resolve_backend("auto", torch.zeros(1, dtype=dtype)).name == "torch"
    q, k, v, _ = _inputs(1, 3, 2, 4, 4, 8, 8, dtype=torch.float32)
    assert torch.equal(sapa.sapa_upsample(q, k, v), sapa.sapa_upsample(q, k, v, backend="cpp"))


def test_module_runs_on_cpp(ext, one_thread):
    torch.manual_seed(0)
    up = sapa.SAPA(in_channels=8, guide_channels=6, embedding_dim=4).double()
    x, skip = torch.randn(2, 8, 5, 7, dtype=torch.float64), torch.randn(2, 6, 10, 14, dtype=torch.float64)
    out = up(x, skip)
    up.backend = "reference"
    torch.testing.assert_close(out, up(x, skip))


def _reset_loader(monkeypatch):
    monkeypatch.setattr(cpp, "_ext", None)
    monkeypatch.setattr(cpp, "_error", None)


def test_fallback_when_the_build_fails(monkeypatch, one_thread):
    """A failing build: one RuntimeWarning, "auto" runs "torch", "cpp" says why it is unavailable."""
    from torch.utils import cpp_extension

    def broken(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions (simulated)")

    _reset_loader(monkeypatch)
    monkeypatch.setattr(cpp_extension, "load", broken)
    q, k, v, grad = _inputs(1, 3, 4, 5, 6, 11, 12, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [_run("auto", q, k, v, grad, 5, "softmax", padding) for padding in PADS]
        assert resolve_backend("auto", q).name == "torch"
    ours = [w for w in caught if "C++ CPU kernel could not be built" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert "simulated" in str(ours[0].message)
    for padding, g in zip(PADS, got):
        expected = _run("reference", *(t.double() for t in (q, k, v, grad)), 5, "softmax", padding)
        for a, e in zip(g, expected):
            torch.testing.assert_close(a.double(), e, rtol=2e-4, atol=2e-4)
    with pytest.raises(ValueError, match="backend 'cpp' cannot run.*simulated"):
        sapa.sapa_upsample(q, k, v, backend="cpp")


def test_disabled_by_environment_is_silent(monkeypatch):
    _reset_loader(monkeypatch)
    monkeypatch.setenv("SAPA_CPP", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpp.available(torch.zeros(1))
        assert resolve_backend("auto", torch.zeros(1)).name == "torch"
    assert "SAPA_CPP=0" in cpp.build_error()


@pytest.mark.slow  # a real (failed or cached) build in a fresh process
def test_fallback_without_a_compiler(tmp_path):
    """A real failed build (fresh extensions cache, no compiler): one warning, correct results."""
    script = textwrap.dedent("""
        import warnings
        import torch
        import sapa
        q, k, v = torch.randn(1, 3, 10, 12), torch.randn(1, 3, 5, 6), torch.randn(1, 4, 5, 6)
        out = sapa.sapa_upsample(q, k, v)
        out2 = sapa.sapa_upsample(q, k, v, padding="ignore")
        ref = sapa.sapa_upsample(q.double(), k.double(), v.double(), backend="reference")
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
        print("OK", sapa.backends.resolve_backend("auto", q).name)
    """)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), CXX=str(tmp_path / "no-such-c++"),
               PYTHONWARNINGS="default")
    env.pop("SAPA_CPP", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["OK", "torch"]
    assert proc.stderr.count("C++ CPU kernel could not be built") == 1, proc.stderr[-3000:]


def test_first_build_says_so_once(monkeypatch, capsys):
    """Nothing cached: one line on stderr before the build; none when it is cached."""
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: calls.append(kw) or object())
    for cached, expected in ((False, 1), (True, 0)):
        _reset_loader(monkeypatch)
        monkeypatch.setattr(cpp, "_is_built", lambda: cached)
        assert cpp.load_extension() is not None and cpp.load_extension() is not None
        err = capsys.readouterr().err
        assert err.count("building the C++ CPU kernel") == expected, err
        assert expected == 0 or "python -m sapa.build" in err
        assert all(len(line) <= 76 for line in err.splitlines()), err  # fits a notebook's output box
    assert len(calls) == 2


def test_no_compiler_is_said_plainly(monkeypatch, tmp_path):
    _reset_loader(monkeypatch)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.delenv("SAPA_CPP", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cpp.load_extension() is None
    msgs = [str(w.message) for w in caught if "C++ CPU kernel could not be built" in str(w.message)]
    assert len(msgs) == 1 and "no C++ compiler found" in msgs[0], msgs


@pytest.mark.slow  # a real (failed or cached) build in a fresh process
def test_build_cli(tmp_path):
    """``python -m sapa.build``: one line and exit status 0 (kernel ready) or 1 (why not)."""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    env.pop("SAPA_CPP", None)
    res = subprocess.run([sys.executable, "-m", "sapa.build"], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.strip().count("\n") == 0 and "no C++ compiler found" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "sapa.build", "--bogus"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    if cpp.load_extension() is not None:  # cached by this process already: the CLI finds it
        res = subprocess.run([sys.executable, "-m", "sapa.build"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0 and res.stdout.count("\n") == 1 and "ready" in res.stdout, res.stderr
