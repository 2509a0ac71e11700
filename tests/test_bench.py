"""The benchmark runs and reports what it promises (no timing assertions)."""
import json
import subprocess
import sys

from sapa import bench


def test_run_case_reports_time_and_memory():
    r = bench.run_case("torch", B=1, C=8, d=4, H=6, scale=2, K=3, dtype="float32", device="cpu",
                       backward=True, min_time=0.0, max_runs=3)
    assert r["seconds"] > 0 and r["runs"] == 3 and r["peak_bytes"] >= 0


def test_cli_json_and_ratios():
    out = subprocess.run(
        [sys.executable, "-m", "sapa.bench", "--sizes", "4", "--channels", "8", "--dim", "4", "--json",
         "--methods", "reference", "torch"],
        capture_output=True, text=True, check=True,
    ).stdout
    results = json.loads(out)
    assert {r["method"] for r in results} == {"reference", "torch"}
    assert len(results) == 4
    for r in results:
        assert r["time_ratio"] > 0
        if r["method"] == "reference":
            assert r["time_ratio"] == 1.0
    table = bench.format_table(results)
    assert table.count("\n") == 1 + len(results)
