"""`crnn bench` and `crnn kernels` on a tiny grid: the table, the JSON document and its fields."""

from __future__ import annotations

import json

import pytest
import torch

from crnn_plugins import fastweights_bench as bench
from crnn_plugins import fastweights_fused as ff

from .conftest import assert_one_line_error, invoke

TINY = ["--batch", "2", "--length", "3", "--hidden", "5", "--inner-steps", "1", "--repeats", "2", "--warmup", "1"]
RECORD_FIELDS = {"backend", "mode", "batch", "length", "hidden", "inner_steps", "median_ms", "peak_memory_bytes",
                 "memory_method", "ratio_to_fused", "device", "dtype", "repeats", "min_ms", "max_ms"}


def test_run_benchmark_records_and_ratios():
    doc = bench.run_benchmark((2,), (3, 4), (5,), (1, 2), repeats=2, warmup=0)
    fused = ff.load_status()[0]
    backends = ["fused", "reference", "naive"] if fused else ["reference", "naive"]
    assert doc["settings"]["backends"] == backends
    assert len(doc["records"]) == 2 * 2 * 2 * len(backends)  # lengths x inner steps x modes x backends
    for r in doc["records"]:
        assert RECORD_FIELDS <= set(r)
        assert r["median_ms"] > 0 and r["peak_memory_bytes"] > 0
    if fused:
        assert len(doc["ratios"]) == 2 * 2 * 2
        assert all(r["reference_over_fused"] > 0 and r["naive_over_fused"] > 0 for r in doc["ratios"])
        assert all(r["ratio_to_fused"] == 1.0 for r in doc["records"] if r["backend"] == "fused")
    assert doc["machine"]["logical_cpus"] >= 1 and doc["machine"]["torch"] == torch.__version__


def test_cpu_memory_counts_saved_tensors():
    doc = bench.run_benchmark((4,), (6,), (8,), (1,), repeats=1, warmup=0, modes=("forward+backward",))
    mem = {r["backend"]: r["peak_memory_bytes"] for r in doc["records"]}
    # the naive loop keeps an H x H matrix per step and example; the others O(T H) per example
    assert mem["naive"] > mem["reference"]
    if "fused" in mem:
        assert mem["fused"] < mem["naive"]


def test_bench_json_on_stdout(runner):
    result = invoke(runner, ["bench", *TINY, "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"machine", "settings", "records", "ratios", "backends"} <= set(doc)
    assert {r["mode"] for r in doc["records"]} == {"forward", "forward+backward"}
    assert all(RECORD_FIELDS <= set(r) for r in doc["records"])
    assert "B=2 T=3 H=5 S=1" in result.stderr  # progress goes to stderr


def test_bench_table(runner):
    result = invoke(runner, ["bench", *TINY, "--mode", "forward", "--backend", "reference", "--backend", "naive", "-q"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["B", "T", "H", "S", "mode"]
    assert lines[1].split()[:5] == ["2", "3", "5", "1", "fwd"]
    assert result.stderr == ""


def test_bench_without_the_fused_kernel_times_the_fallbacks(runner, monkeypatch):
    monkeypatch.setattr(ff, "load_status", lambda: (False, "disabled for the test"))
    result = invoke(runner, ["bench", *TINY, "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert {r["backend"] for r in doc["records"]} == {"reference", "naive"}
    assert doc["ratios"] == [] and "disabled for the test" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_bench_cuda_without_cuda_is_a_one_line_error(runner):
    assert_one_line_error(invoke(runner, ["bench", *TINY, "--device", "cuda"]), "no CUDA device")


def test_bench_rejects_bad_sizes(runner):
    result = invoke(runner, ["bench", "--batch", "0"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_kernels_command(runner):
    result = invoke(runner, ["kernels", "--json"])
    assert result.exit_code == 0, result.stderr
    rep = json.loads(result.stdout)
    assert rep["devices"]["cpu"]["reference"] is True
    assert rep["devices"]["cpu"]["fused"] == ff.load_status()[0]
    assert rep["devices"]["cpu"]["auto"] == ("fused" if rep["fused_loaded"] else "reference")
    if not torch.cuda.is_available():
        assert rep["devices"]["cuda"]["device_available"] is False
    text = invoke(runner, ["kernels"]).stdout
    assert text.startswith("fused kernel:") and "cpu: fused" in text


def test_kernels_command_explains_a_missing_kernel(runner, monkeypatch):
    monkeypatch.setattr(ff, "_state", {"ok": False, "reason": "disabled by CRNN_NO_FUSED=1"})
    result = invoke(runner, ["kernels"])
    assert "NOT available (disabled by CRNN_NO_FUSED=1)" in result.stdout
    assert "backend=auto -> reference" in result.stdout
