"""benchmarks/gpu_summary.py: summary.json of a gpu_check.sh run, built from its steps' JSON results.

Fixture files shaped as gpu_bench.py and art_epoch.py write them (on the CPU); a step that
failed, was skipped or was cut short mid-file leaves its keys null.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_summary.py"
KEYS = ["date", "commit", "device", "art_epoch_s_zero", "art_epoch_s_learned", "fwd_bwd_ms_fused", "fwd_bwd_ms_eager",
        "fwd_bwd_ms_compiled", "fwd_bwd_ms_compiled_graphs", "lstm_ms_b1024", "fastweights_ms_b1024"]


@pytest.fixture(scope="module")
def gpu_summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timing(ms: float) -> dict:
    return {"median_ms": ms, "min_ms": ms * 0.9, "max_ms": ms * 1.2, "repeats": 30, "first_s": 0.1}


def bench_doc() -> dict:
    art = {"B": 128, "T": 11, "H": 50, "S": 1, "dtype": "float32"}
    return {
        "device": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "records": [
            {**art, "mode": "forward", "fused": timing(0.3), "eager": timing(2.2)},
            {**art, "mode": "forward+backward", "fused": timing(0.88), "eager": timing(10.5),
             "compiled": timing(3.7), "cudagraphs": {"error": "RuntimeError: capture failed"}},
            {"B": 1, "T": 11, "H": 50, "S": 1, "mode": "forward+backward", "fused": timing(0.5)},
        ],
        "layers": {"B": 1024, "T": 100, "H": 256, "mode": "forward+backward", "lstm": timing(6.0),
                   "fastweights": timing(8.5)},
    }


def epoch(init: str, backend: str, seconds: float) -> dict:
    return {"init": init, "backend": backend, "epoch_train_s": seconds, "first_epoch_s": seconds, "epochs": 1}


def write(folder: Path, name: str, doc: object) -> None:
    (folder / name).write_text(json.dumps(doc))


def test_a_full_run(gpu_summary, tmp_path):
    write(tmp_path, "gpu_bench.json", bench_doc())
    write(tmp_path, "art_epoch.json", [epoch("zero", "fused", 0.5), epoch("zero", "reference", 9.0),
                                       epoch("zero", "fused", 0.7), epoch("zero", "fused", 0.6),
                                       epoch("learned", "reference", 12.0), epoch("learned", "fused", 0.9)])
    write(tmp_path, "art_epoch_graphs.json", [epoch("zero", "fused", 0.25), epoch("learned", "fused", 0.4)])
    doc = gpu_summary.build_summary(tmp_path, "abc123", date="2026-12-07T12:00:00+00:00")
    assert list(doc)[:3] == ["date", "commit", "device"] and set(KEYS) <= set(doc)
    assert doc["device"] == "NVIDIA H100 80GB HBM3" and doc["commit"] == "abc123"
    assert doc["art_epoch_s_zero"] == 0.6, "the median of the fused runs; the reference's are not counted"
    assert doc["art_epoch_s_learned"] == 0.9
    assert (doc["art_epoch_s_zero_cuda_graphs"], doc["art_epoch_s_learned_cuda_graphs"]) == (0.25, 0.4)
    assert doc["art_epoch_s_zero_compiled"] is None, "no art_epoch_compiled.json"
    assert (doc["fwd_bwd_ms_fused"], doc["fwd_bwd_ms_eager"], doc["fwd_bwd_ms_compiled"]) == (0.88, 10.5, 3.7)
    assert doc["fwd_bwd_ms_compiled_graphs"] is None, "a backend that failed is null"
    assert (doc["lstm_ms_b1024"], doc["fastweights_ms_b1024"]) == (6.0, 8.5)


def test_missing_and_truncated_results_are_null(gpu_summary, tmp_path):
    (tmp_path / "gpu_bench.json").write_text('{"device": "NVIDIA H100", "records": [{"B": 12')  # cut short
    write(tmp_path, "art_epoch.json", [epoch("zero", "reference", 9.0)])  # the fused run never finished
    doc = gpu_summary.build_summary(tmp_path, None)
    assert set(KEYS) <= set(doc)
    assert all(doc[key] is None for key in KEYS if key != "date"), doc
    assert doc["date"].endswith("+00:00") and doc["date"][:4].isdigit()


def test_the_layers_at_another_shape_are_not_reported_as_b1024(gpu_summary, tmp_path):
    bench = bench_doc()
    bench["layers"]["B"] = 8
    write(tmp_path, "gpu_bench.json", bench)
    doc = gpu_summary.build_summary(tmp_path, "abc")
    assert doc["lstm_ms_b1024"] is None and doc["fastweights_ms_b1024"] is None
    assert doc["fwd_bwd_ms_fused"] == 0.88


def test_the_command_writes_summary_json(tmp_path):
    write(tmp_path, "gpu_bench.json", bench_doc())
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--commit", "def456"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["commit"] == "def456" and doc["fwd_bwd_ms_fused"] == 0.88 and doc["art_epoch_s_zero"] is None
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode != 0 and "is not a folder" in missing.stderr


def test_gpu_check_sh_parses_and_writes_the_summary():
    script = SCRIPT.parent / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "benchmarks/gpu_summary.py" in script.read_text()
