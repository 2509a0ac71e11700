"""The benchmark runs and reports what it promises (no timing assertions)."""
import json
import subprocess
import sys

import pytest
import torch

from sapa import bench


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sapa.bench", *args], capture_output=True, text=True)


def test_materialised_baseline_matches_reference(one_thread):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 3, 10, 21), (2, 3, 5, 7), (2, 4, 5, 7)))
    for K in (1, 3, 5):
        import sapa

        torch.testing.assert_close(bench.materialised(q, k, v, K), sapa.sapa_upsample(q, k, v, K, backend="reference"))
    with pytest.raises(ValueError, match="integer scales"):
        bench.materialised(q[..., :9, :], k, v)


def test_run_case_reports_time_and_memory():
    r = bench.run_case("torch", B=1, C=8, d=4, H=6, scale=2, K=3, dtype="float32", device="cpu",
                       backward=True, max_runs=3)
    assert r["seconds"] > 0 and r["runs"] == 3
    assert r["min_seconds"] <= r["seconds"] <= r["max_seconds"]
    # the CPU allocator's peak: at least the output and the three input gradients (float32)
    out, grads = 8 * 12 * 12, 4 * 12 * 12 + 4 * 6 * 6 + 8 * 6 * 6
    assert r["peak_bytes"] >= 4 * (out + grads)


def test_peak_bytes_is_the_allocators_and_exact():
    """The materialised baseline holds the unfolded value (B, C, K*K, H, W) and the output; the
    fused C++ kernel's forward allocates its output and nothing else: the measured peaks say so,
    and repeat exactly."""
    from sapa.backends import cpp

    case = dict(B=1, C=16, d=4, H=8, scale=2, K=5, dtype="float32", device="cpu", backward=False, threads=1)
    unfolded, out = 4 * 16 * 25 * 8 * 8, 4 * 16 * 16 * 16
    mat = bench._peak_case("materialised", **case)
    assert mat >= unfolded + out
    assert bench._peak_case("materialised", **case) == mat
    if not cpp.available(torch.empty(0)):
        pytest.skip(f"the C++ kernel is not built here: {cpp.build_error()}")
    assert bench._peak_case("cpp", **case) == out


def test_run_interleaves_and_adds_the_baseline(one_thread):
    res = bench.run(["torch", "bilinear"], sizes=(4,), C=8, d=4, K=3, device="cpu", progress=False,
                    threads=(1, 2), repeats=3, measure_memory=False)
    assert [r["method"] for r in res[:3]] == ["materialised", "torch", "bilinear"]
    assert len(res) == 3 * 2 * 2  # methods x passes x thread counts
    assert {r["threads"] for r in res} == {1, 2}
    for r in res:
        assert r["runs"] == 3 and r["min_seconds"] <= r["seconds"] <= r["max_seconds"]
        assert r["speedup"] > 0 and r["time_ratio"] == pytest.approx(1 / r["speedup"])
        if r["method"] == "materialised":
            assert r["speedup"] == 1.0
    assert torch.get_num_threads() == 1  # restored


@pytest.mark.slow  # a memory subprocess per case (~20 s): `make test-fast` skips it
def test_cli_json_and_table():
    proc = _cli("--sizes", "4", "--channels", "8", "--dim", "4", "--json", "--methods", "torch", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["method"] for r in results] == ["materialised", "torch"] * 2
    for r in results:
        assert r["peak_bytes"] > 0 and r["runs"] == 2 and isinstance(r["flags"], list)
    assert results[0]["memory_ratio"] == 1.0 and results[1]["memory_ratio"] < 1.0
    table = bench.format_table(results)
    assert table.count("\n") == 1 + len(results)
    assert "speed-up vs materialised" in table


def _result(method, backward, med, lo, hi):
    return dict(method=method, H=4, scale=2, backward=backward, threads=1, device="cpu", seconds=med,
                min_seconds=lo, max_seconds=hi, runs=5, peak_bytes=100)


def test_flags_results_whose_spread_voids_the_ratio():
    res = [_result("materialised", False, 1.0, 0.95, 1.05), _result("cpp", False, 0.1, 0.099, 0.101),
           _result("torch", False, 0.5, 0.2, 1.5),
           _result("materialised", True, 3.0, 2.9, 3.1), _result("cpp", True, 0.09, 0.08, 0.1),
           _result("torch", True, 1.0, 0.9, 1.1)]
    bench._add_ratios(res)
    flags = {(r["method"], r["backward"]): r["flags"] for r in res}
    assert flags[("materialised", False)] == [] and flags[("cpp", False)] == []
    assert flags[("torch", False)] == ["spread"]
    assert flags[("cpp", True)] == ["fwd+bwd<fwd"]
    assert flags[("torch", True)] == []
    assert res[1]["speedup"] == pytest.approx(10.0)
    assert "spread" in bench.format_table(res)


@pytest.mark.parametrize("args,match", [
    (("--device", "cuda"), "CUDA is not available"),
    (("--methods", "nosuch"), "--methods nosuch: unknown"),
    (("--threads", "0"), "--threads must be positive"),
])
def test_cli_errors_are_one_line(args, match):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _cli("--sizes", "4", *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sapa.bench: error:") and match in lines[0], proc.stderr


def test_triton_without_triton_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(bench, "available_backends", lambda: ("reference", "torch"))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--methods", "triton", "--device", "cpu"])
    assert str(exc.value) == "sapa.bench: error: --methods triton: the triton package is not installed (pip install triton)"


def test_triton_on_cpu_is_one_line(monkeypatch):
    monkeypatch.setattr(bench, "available_backends", lambda: ("reference", "torch", "triton"))
    with pytest.raises(SystemExit, match="needs --device cuda"):
        bench.main(["--methods", "triton", "--device", "cpu"])


def test_gbps_counts_forward_plus_fused_backward_bytes():
    # b (dN + dn + Cn + CN) + 4N forward; b (3dN + 2dn + 2Cn + 2CN) + 4N + 24 PN backward
    B, C, d, K, H, s, b = 2, 24, 8, 3, 6, 2, 4
    N, n, P = B * (s * H) ** 2, B * H * H, K * K
    fwd = b * (d * N + d * n + C * n + C * N) + 4 * N
    bwd = b * (3 * d * N + 2 * d * n + 2 * C * n + 2 * C * N) + 4 * N + 24 * P * N
    res = [dict(_result(m, bwd_, 1e-3, 1e-3, 1e-3), B=B, C=C, d=d, K=K, H=H, scale=s, dtype="float32")
           for m in ("materialised", "triton") for bwd_ in (False, True)]
    bench._add_gbps(res)
    by = {(r["method"], r["backward"]): r for r in res}
    assert "gbps" not in by[("materialised", False)]
    assert by[("triton", False)]["gbps"] == pytest.approx(fwd / 1e-3 / 1e9)
    assert by[("triton", True)]["gbps"] == pytest.approx((fwd + bwd) / 1e-3 / 1e9)


def test_floor_seconds_is_the_roofline():
    """The floor of a case is the larger of its FLOPs at the matmul rate and its fused bytes at
    the copy bandwidth; the backward has three times the forward's FLOPs."""
    from sapa.traffic import backward_bytes, bytes_moved

    r = dict(B=2, C=256, d=32, K=5, scale=2, H=64, dtype="float32", backward=False)
    n_out = 2 * 128 * 128
    flops = 2 * n_out * 25 * (32 + 256)
    nbytes = bytes_moved(2, 256, 32, 5, 2, 64, 64, 4, "fused")
    assert bench.floor_seconds(r, dict(flops=1e12, bandwidth=1e15)) == pytest.approx(flops / 1e12)
    assert bench.floor_seconds(r, dict(flops=1e15, bandwidth=1e9)) == pytest.approx(nbytes / 1e9)
    rb = dict(r, backward=True)
    assert bench.floor_seconds(rb, dict(flops=1e12, bandwidth=1e15)) == pytest.approx(3 * flops / 1e12)
    extra = backward_bytes(2, 256, 32, 5, 2, 64, 64, 4)
    assert bench.floor_seconds(rb, dict(flops=1e15, bandwidth=1e9)) == pytest.approx((nbytes + extra) / 1e9)


def test_run_measures_the_floor_on_the_cpu(one_thread):
    f = bench.machine_floor(1, repeats=2, matmul_n=128, copy_mib=1)
    assert f["flops"] > 1e7 and f["bandwidth"] > 1e7 and f["threads"] == 1
    res = bench.run(["torch", "bilinear"], sizes=(4,), C=8, d=4, K=3, device="cpu", progress=False,
                    passes=("forward",), repeats=2, measure_memory=False)
    by = {r["method"]: r for r in res}
    assert "x_floor" not in by["bilinear"]
    for m in ("materialised", "torch"):
        assert by[m]["x_floor"] == pytest.approx(by[m]["seconds"] / by[m]["floor_seconds"])
        assert by[m]["floor_seconds"] == pytest.approx(bench.floor_seconds(by[m], by[m]["floor"]))
    assert "x floor" in bench.format_table(res)


def test_onnx_bench_reports_export_time_and_ratios():
    """run_onnx (TorchScript exporter, tiny shape): the graph's output equals eager's, and every
    promised number is there (the memory ones from their subprocesses)."""
    pytest.importorskip("onnxruntime")
    from sapa import bench_onnx

    res = bench_onnx.run_onnx(B=1, C=8, d=4, H=6, scale=2, K=3, repeats=2, exporters=("torchscript",), progress=False)
    (r,) = res
    assert r["exporter"] == "torchscript" and r["threads"] == 1 and 0 < r["nodes"] < 400
    assert r["max_abs_err"] < 1e-4 and r["export_s"] > 0
    assert r["time_ratio"] == pytest.approx(r["ort"]["median"] / r["eager"]["median"])
    assert r["graph_peak"] >= 8 * 12 * 12 * 4 and r["eager_peak"] > 0 and r["memory_ratio"] > 0  # >= the output
    table = bench_onnx.format_onnx_table(res)
    assert table.count("\n") == 1 and "ORT/eager" in table


@pytest.mark.slow  # the dynamo exporter (~20 s): `make test-fast` skips it
def test_onnx_cli_json():
    pytest.importorskip("onnxscript")
    proc = _cli("--onnx", "--sizes", "4", "--channels", "8", "--dim", "4", "--repeats", "1", "--no-memory", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["exporter"] for r in json.loads(proc.stdout)] == ["torchscript", "dynamo"]


def test_onnx_cli_on_cuda_is_one_line():
    proc = _cli("--onnx", "--sizes", "4", "--device", "cuda")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sapa.bench: error:"), proc.stderr


def test_graph_peak_counts_live_tensors_once():
    """graph_peak_bytes on a hand-made graph: a -> b -> c with a freed after b; outputs kept."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from sapa import bench_onnx

    t = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1000]) for n in "xyzw"]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"]),
                           helper.make_node("Add", ["z", "x"], ["w"])], "g", [t[0]], [t[3]])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    # y (4000 B) freed after Neg; at Add: z and w live -> 8000 B; the input x is not counted
    assert bench_onnx.graph_peak_bytes(model) == 8000
