"""``python -m sapa.check``: its checking logic on the CPU, its timing loop, its result file
and its message on a machine without CUDA.

The correctness comparison runs the real Triton kernels through Triton's interpreter in a
child process (``TRITON_INTERPRET=1`` must be set before Triton is imported), on tiny shapes.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import sapa
from sapa import check
from sapa.backends import _BACKENDS, register_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_random_cases_cover_every_option_and_odd_sizes():
    cases = check.random_cases(30, seed=3)
    assert cases == check.random_cases(30, seed=3) and cases != check.random_cases(30, seed=4)
    assert {(c["normalization"], c["padding"]) for c in cases[:10]} == {
        (n, p) for n in check.NORMALIZATIONS for p in check.PADDINGS}
    for c in cases:
        assert 1 <= c["H"] <= 40 and c["H"] <= c["Hq"] <= 3 * c["H"] + 2
        assert 1 <= c["W"] <= 40 and c["W"] <= c["Wq"] <= 3 * c["W"] + 2
        assert c["K"] in (1, 3, 5, 7)
        if c["normalization"] == "relu":
            assert max(c["H"], c["W"]) <= check.RELU_MAX_LOW
    assert any(c["Hq"] % c["H"] for c in cases)  # a non-integer ratio
    assert any(c["C"] & (c["C"] - 1) for c in cases)  # a C that is not a power of two
    with pytest.raises(ValueError, match="n must be"):
        check.random_cases(5)


@pytest.fixture
def fake_backends():
    """Two wrong backends: 'off' perturbs the output, 'noisy' is not bitwise repeatable."""
    def off(q, k, v, K, norm, pad):  # differentiated by autograd (no backward given)
        out = sapa.sapa_upsample(q, k, v, K, normalization=norm, padding=pad, backend="torch") * (1 + 1e-3)
        return out, out.new_empty(0)

    def noisy(q, k, v, K, norm, pad):
        out = sapa.sapa_upsample(q, k, v, K, normalization=norm, padding=pad, backend="torch")
        return out + 1e-9 * torch.randn_like(out), out.new_empty(0)

    register_backend("test_off", off)
    register_backend("test_noisy", noisy)
    yield
    for name in ("test_off", "test_noisy"):
        _BACKENDS.pop(name, None)


def test_check_case_passes_and_fails(fake_backends):
    case = dict(B=1, d=3, C=5, H=4, W=5, Hq=9, Wq=11, K=3, normalization="softmax", padding="ignore")
    good = check.check_case(case, "cpu", torch.float32, backend="torch", oracle="reference")
    assert good["passed"] and good["bitwise_repeat"] and good["worst"] < 1e-5
    assert good["dtype"] == "float32" and all(good[t + "_scale"] >= 1 for t in check.TENSORS)
    off = check.check_case(case, "cpu", torch.float32, backend="test_off", oracle="reference")
    assert not off["passed"] and off["bitwise_repeat"] and off["worst"] > check.TOLERANCE[torch.float32]
    noisy = check.check_case(case, "cpu", torch.float32, backend="test_noisy", oracle="reference")
    assert not noisy["passed"] and not noisy["bitwise_repeat"]


def test_relu_inputs_avoid_the_kink():
    # K = 1, 8 x 8 -> 16 x 16, d = 1: 512 similarities, so some draws come within 1e-4 of 0; after
    # resampling none does
    case = dict(B=2, d=1, C=2, H=8, W=8, Hq=16, Wq=16, K=1, normalization="relu", padding="zeros")
    rows = [check.check_case(case, "cpu", torch.float32, seed=seed, backend="torch", oracle="reference")
            for seed in range(5)]
    assert all(r["passed"] and r["resampled"] <= 100 for r in rows)
    assert any(r["resampled"] > 0 for r in rows)  # these seeds do come near the kink


def test_time_methods_on_cpu():
    rows = check.time_methods(["torch", "bilinear"], [4], device="cpu", B=1, d=3, C=4, K=3, repeats=3, inner=1,
                              warmup=1)
    assert {(r["method"], r["passes"]) for r in rows} == {
        (m, p) for m in ("torch", "bilinear") for p in ("forward", "forward+backward")}
    for r in rows:
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["repeats"] == 3


def test_result_path_never_takes_another_gpus_file(tmp_path):
    first = check.result_path(tmp_path, "NVIDIA H100 80GB HBM3")
    assert first.name == "gpu_check_nvidia_h100_80gb_hbm3.json"
    first.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3"}))
    assert check.result_path(tmp_path, "NVIDIA H100 80GB HBM3") == first  # same GPU: replace its own
    other = check.result_path(tmp_path, "NVIDIA H100 80GB-HBM3")  # same slug, another device
    assert other.name == "gpu_check_nvidia_h100_80gb_hbm3_2.json"


def test_without_cuda_one_line_and_nonzero_exit(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sapa.check: no CUDA GPU")
    assert check.main(["--cases", "3"]) == 2
    assert "--cases must be >= 10" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_command_line_without_cuda():
    res = subprocess.run([sys.executable, "-m", "sapa.check"], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "no CUDA GPU" in res.stderr


INTERPRETER_CHECK = r"""
import json, torch
from sapa import check
from sapa.backends import triton as triton_ops
assert triton_ops.INTERPRETED
cases = check.random_cases(10, seed=1, max_low=4, max_d=4, max_c=5, kernel_sizes=(1, 3, 5), max_batch=2)
rows = check.run_checks(cases, "cpu", dtypes=(torch.float32, torch.bfloat16))
print(json.dumps(rows))
"""


@pytest.mark.slow  # the Triton interpreter (~1 min): `make test-fast` skips it
def test_run_checks_triton_in_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="1", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 20 and {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    bad = [r for r in rows if not r["passed"]]
    assert not bad, bad
    assert all(r["bitwise_repeat"] for r in rows)
