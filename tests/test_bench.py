"""`crnn bench` and `crnn kernels` on a tiny grid: the table, the JSON document and its fields."""

from __future__ import annotations

import json

import pytest
import torch

from crnn_core.base.errors import ConfigError
from crnn_plugins.commands import fastweights_bench as bench
from crnn_plugins.fast_weights import fused as ff

from .conftest import assert_one_line_error, invoke

# compiled compiles every shape (seconds each), so most tests leave it out and one test covers it
EAGER = ("fused", "reference", "naive")
TINY_SHAPE = ["--batch", "2", "--length", "3", "--hidden", "5", "--inner-steps", "1", "--repeats", "2", "--warmup", "1"]
TINY = TINY_SHAPE + ["--backend", "fused", "--backend", "reference", "--backend", "naive"]
RECORD_FIELDS = {"backend", "mode", "batch", "length", "hidden", "inner_steps", "median_ms", "peak_memory_bytes",
                 "memory_method", "ratio_to_fused", "device", "dtype", "repeats", "min_ms", "max_ms", "q1_ms", "q3_ms",
                 "iqr_rel"}


def test_run_benchmark_records_and_ratios():
    doc = bench.run_benchmark((2,), (3, 4), (5,), (1, 2), repeats=2, warmup=0, backends=EAGER)
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
    doc = bench.run_benchmark((4,), (6,), (8,), (1,), repeats=1, warmup=0, modes=("forward+backward",),
                              backends=EAGER)
    mem = {r["backend"]: r["peak_memory_bytes"] for r in doc["records"]}
    # the naive loop keeps an H x H matrix per step and example; the others O(T H) per example
    assert mem["naive"] > mem["reference"]
    if "fused" in mem:
        assert mem["fused"] < mem["naive"]


def test_compiled_backend_is_timed_with_its_compile_time_apart():
    doc = bench.run_benchmark((2,), (3,), (5,), (1,), repeats=2, warmup=1, modes=("forward",),
                              backends=("fused", "compiled"))
    rec = {r["backend"]: r for r in doc["records"]}
    assert rec["compiled"]["median_ms"] > 0 and rec["compiled"]["compile_s"] > 0
    assert "compile_s" not in rec.get("fused", {})
    if "fused" in rec:
        assert doc["ratios"][0]["compiled_over_fused"] > 0
        assert doc["summary"]["forward"]["compiled_over_fused"]["points"] == 1
    table = bench.format_table(doc)
    assert "compiled ms" in table and "compile time of compiled" in table
    if "fused" in rec:
        assert "compiled/fused" in table and "grid median, forward: compiled/fused" in table


def test_compiled_is_skipped_beyond_max_compiled_length():
    doc = bench.run_benchmark((1,), (4,), (3,), (1,), repeats=1, warmup=0, modes=("forward",),
                              backends=("reference", "compiled"), max_compiled_length=3)
    rec = {r["backend"]: r for r in doc["records"]}
    assert rec["compiled"]["median_ms"] is None and "max-compiled-length" in rec["compiled"]["skipped"]


def test_spread_is_reported_and_wide_spreads_warned():
    assert bench.spread([1.0, 1.0, 1.0, 1.0])["iqr_rel"] == 0.0
    wide = bench.spread([1.0, 1.0, 2.0, 3.0])
    assert wide["q1_ms"] == 1.0 and wide["q3_ms"] == 2.25 and wide["iqr_rel"] > bench.SPREAD_WARN
    doc = bench.run_benchmark((2,), (3,), (5,), (1,), repeats=3, warmup=0, modes=("forward",), backends=("reference",))
    doc["records"][0].update(iqr_rel=0.5)
    doc["warnings"] = ["one"]
    table = bench.format_table(doc)
    assert "50%!" in table and "WARNING: 1 timings vary" in table


def test_cpu_clock_needs_one_thread(thread_count_kept):
    torch.set_num_threads(2)
    with pytest.raises(bench.ConfigError, match="--threads 1"):
        bench.run_benchmark((2,), (3,), (5,), (1,), repeats=1, warmup=0, backends=("reference",), clock="cpu")
    torch.set_num_threads(1)
    doc = bench.run_benchmark((2,), (3,), (5,), (1,), repeats=2, warmup=0, backends=("reference",), clock="cpu")
    assert doc["settings"]["clock"] == "cpu" and all(r["median_ms"] > 0 for r in doc["records"])
    assert "thread CPU time" in bench.format_table(doc)


def test_bench_threads_option_leaves_the_callers_thread_count(runner, thread_count_kept):
    torch.set_num_threads(2)
    result = invoke(runner, ["bench", *TINY, "--threads", "1", "--clock", "cpu", "-q"])
    assert result.exit_code == 0, result.stderr
    assert "thread CPU time" in result.stdout
    assert torch.get_num_threads() == 2


def test_growth_with_length_exponents():
    recs = [{"backend": "fused", "mode": "forward", "batch": 1, "hidden": 4, "inner_steps": 1, "length": T,
             "median_ms": 2.0 * T, "peak_memory_bytes": 8 * T * T} for T in (10, 100)]
    (g,) = bench.length_growth(recs)
    assert g["time_exponent"] == 1.0 and g["memory_exponent"] == 2.0 and g["lengths"] == [10, 100]


def test_bench_json_on_stdout(runner):
    result = invoke(runner, ["bench", *TINY, "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"machine", "settings", "records", "ratios", "backends", "summary", "warnings"} <= set(doc)
    assert "load_avg_1m_before" in doc["machine"]
    assert {r["mode"] for r in doc["records"]} == {"forward", "forward+backward"}
    assert all(RECORD_FIELDS <= set(r) for r in doc["records"])
    assert "B=2 T=3 H=5 S=1" in result.stderr  # progress goes to stderr


def test_bench_table(runner):
    result = invoke(runner, ["bench", *TINY_SHAPE, "--mode", "forward", "--backend", "reference", "--backend", "naive", "-q"])
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


@pytest.mark.parametrize("extra", [["--layer", "--layer-shape", "2,4,3"], []])
@pytest.mark.parametrize("option, value", [("--warmup", 2**63), ("--repeats", 2**63), ("--repeats", bench.MAX_CALLS + 1),
                                           ("--warmup", 10**100)])
def test_bench_counts_are_bounded(runner, monkeypatch, extra, option, value):
    """A count past MAX_CALLS ran for ever (or overflowed): one line, exit 2, before anything is timed."""
    monkeypatch.setattr(bench, "_time_point", lambda *a, **k: pytest.fail("a point was timed"))
    args = [*extra, *(TINY if not extra else []), "--repeats", "1", "--warmup", "0"]
    result = invoke(runner, ["bench", *args, option, str(value), "-q"])
    assert_one_line_error(result, f"'{option}': {value} is not in the range")
    assert result.exit_code == 2 and str(bench.MAX_CALLS) in result.stderr


@pytest.mark.parametrize("name, value", [("repeats", 0), ("repeats", bench.MAX_CALLS + 1), ("warmup", -1),
                                         ("warmup", 2**63), ("repeats", 2.5)])
def test_run_benchmark_counts_are_bounded(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be an integer between"):
        bench.run_benchmark((2,), (3,), (5,), (1,), backends=("reference",), **{"repeats": 1, "warmup": 0, name: value})


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
    if rep["fused_loaded"]:
        assert rep["block_pool"]["limit_bytes"] > 0
        assert ("CPU block pool: active" in text) == rep["block_pool"]["enabled"]


def test_kernels_command_names_a_disabled_block_pool(tmp_path):
    """CRNN_NO_POOL=1 (read once, when the extension loads) shows as 'off' in crnn kernels."""
    import os
    import subprocess
    import sys

    if not ff.load_status()[0]:
        pytest.skip("the fused kernel is not loaded")
    env = {**os.environ, "CRNN_NO_POOL": "1"}
    proc = subprocess.run([sys.executable, "-m", "crnn_core", "kernels"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CPU block pool: off (CRNN_NO_POOL=1)" in proc.stdout


def test_kernels_command_explains_a_missing_kernel(runner, monkeypatch):
    monkeypatch.setattr(ff, "_state", {"ok": False, "reason": "disabled by CRNN_NO_FUSED=1"})
    result = invoke(runner, ["kernels"])
    assert "NOT available (disabled by CRNN_NO_FUSED=1)" in result.stdout
    assert "backend=auto -> reference" in result.stdout


def test_state_art_times_the_training_call_in_every_backend(monkeypatch):
    """``--state art``: h0 = 0, ``A0=None`` and ``final_state=False`` for every backend (the zero-init
    ART step's call), so the fused op's batch-in-lanes path is what is timed, and less is saved."""
    seen = []
    real = bench._backend_fns

    def spying_fns(dev):
        fns, notes = real(dev)
        wrapped = {}
        for name, fn in fns.items():
            if fn is bench._compiled_reference:
                wrapped[name] = fn
                continue

            def spy(*args, _fn=fn, _name=name, **kwargs):
                seen.append((_name, args[2] is None, kwargs.get("final_state")))
                return _fn(*args, **kwargs)
            wrapped[name] = spy
        return wrapped, notes

    monkeypatch.setattr(bench, "_backend_fns", spying_fns)
    backends = ("reference", "naive") + (("fused",) if ff.load_status()[0] else ())
    doc = bench.run_benchmark((20,), (5,), (8,), (1,), repeats=1, warmup=0, backends=backends, state="art",
                              modes=("forward+backward",))
    assert {(name, a0_none, fs) for name, a0_none, fs in seen} == {(b, True, False) for b in backends}
    assert doc["settings"]["state"] == "art"
    random = bench.run_benchmark((20,), (5,), (8,), (1,), repeats=1, warmup=0, backends=("reference",),
                                 modes=("forward+backward",))
    art_saved = next(r["peak_memory_bytes"] for r in doc["records"] if r["backend"] == "reference")
    assert art_saved < random["records"][0]["peak_memory_bytes"], "no A_0 and no A_T: less kept"


@pytest.mark.skipif(not ff.load_status()[0], reason="the fused kernel is not built")
def test_states_art_learned_and_art_free_time_the_training_calls_with_an_A0():
    """``--state art-learned`` gives every backend a per-example A0 and ``art-free`` the fused op
    one ``[H, H]`` A0 (the others it tiled), both without A_T, and the backends agree on them."""
    for state, a0_shape in (("art-learned", (6, 8, 8)), ("art-free", (8, 8))):
        args, _ = bench.bench_inputs(6, 5, 8, "cpu", torch.float64, state)
        assert args[2].shape == a0_shape and not bench.wants_final_state(state)
        outs = {}
        reference = bench._backend_fns(torch.device("cpu"))[0]["reference"]
        for name, fn in (("fused", ff.fastweights_fused), ("reference", reference)):
            timer = bench._Timer(fn, args, torch.ones(6, 5, 8, dtype=torch.float64), "forward", 1, torch.device("cpu"),
                                 final_state=False)
            outs[name], A_T = timer._run()
            assert A_T is None
        torch.testing.assert_close(outs["fused"], outs["reference"], rtol=1e-10, atol=1e-10)
    assert bench.wants_final_state("random") and not bench.wants_final_state("art")


def test_ctrl_c_prints_the_rows_measured_so_far(runner, monkeypatch):
    """Ctrl-C during the second grid point: the first point's rows are printed, then one
    `Interrupted:` line and exit 130 (the measured rows are kept)."""
    real, calls = bench._time_backends, []

    def interrupted_at_the_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # point 2, its first mode
            raise KeyboardInterrupt("SIGINT")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "_time_backends", interrupted_at_the_third_call)
    result = invoke(runner, ["bench", *TINY_SHAPE, "--length", "4", "--backend", "reference", "-q"])
    assert result.exit_code == 130
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert [row[:5] for row in rows] == [["2", "3", "5", "1", "fwd"], ["2", "3", "5", "1", "fwd+bwd"]]
    assert result.stderr.strip().splitlines()[-1] == (
        "Interrupted: SIGINT received: stopped after 1 of 2 grid points; the rows above are those measured")


def test_the_default_grid_is_one_point_and_full_is_the_grid(monkeypatch, runner):
    seen = {}

    def record(batches, lengths, hiddens, inner_steps, **kwargs):
        seen["grid"] = (batches, lengths, hiddens, inner_steps)
        raise SystemExit(0)

    monkeypatch.setattr(bench, "run_benchmark", record)
    invoke(runner, ["bench", "-q"])
    assert seen["grid"] == ((128,), (11,), (50,), (1,))
    invoke(runner, ["bench", "--full", "-q"])
    assert seen["grid"] == ((1, 128), (11, 25), (50, 128), (1,))
    invoke(runner, ["bench", "--full", "--hidden", "7", "-q"])
    assert seen["grid"] == ((1, 128), (11, 25), (7,), (1,))


# ---------------------------------------------------------------------------------------
# crnn bench --layer


def test_layer_bench_interleaves_the_cases_after_their_warmup():
    from crnn_plugins.commands import layer_bench

    now, calls = [0.0], []
    cost = {"a": 0.001, "b": 0.003, "c": 0.002}

    def case(name):
        def call():
            calls.append(name)
            now[0] += cost[name]
        return call

    samples = layer_bench.time_interleaved({n: case(n) for n in cost}, repeats=3, warmup=2, clock=lambda: now[0])
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"], "each round starts one case later"
    for name, seconds in cost.items():
        assert samples[name] == pytest.approx([seconds * 1e3] * 3)


def test_layer_bench_ratios_are_medians_over_medians():
    from crnn_plugins.commands import layer_bench

    samples = {"no_lengths": [2.0, 4.0, 3.0], "equal_lengths": [3.0, 3.3, 9.0], "random_lengths": [1.5, 1.5, 9.0],
               "bidirectional": [5.0, 7.0, 6.0], "two_unidirectional": [6.0, 6.0, 6.0], "lstm": [4.0, 5.0, 6.0]}
    record = layer_bench.shape_record(2, 4, 3, samples)
    assert record["cases"]["equal_lengths"]["median_ms"] == 3.3
    assert record["ratios"] == {"equal_over_no_lengths": 1.1, "random_over_no_lengths": 0.5,
                                "bidirectional_over_two_unidirectional": 1.0, "fastweights_over_lstm": 0.6}


@pytest.mark.usefixtures("fused_kernel", "thread_count_kept")
def test_bench_layer_json_and_table(runner):
    from crnn_plugins.commands import layer_bench

    threads = torch.get_num_threads()
    tiny = ["bench", "--layer", "--layer-shape", "2,4,3", "--layer-shape", "3x2x5", "--repeats", "2", "--warmup", "0"]
    doc = json.loads(invoke(runner, [*tiny, "--json", "-q"]).stdout)
    assert torch.get_num_threads() == threads, "the caller's thread count is kept"
    assert doc["settings"]["threads"] == 2 and doc["settings"]["repeats"] == 2
    assert [(r["batch"], r["length"], r["hidden"]) for r in doc["records"]] == [(2, 4, 3), (3, 2, 5)]
    for r in doc["records"]:
        assert set(r["cases"]) == set(layer_bench.CASES) and all(c["median_ms"] > 0 for c in r["cases"].values())
        for name, (num, den, _) in layer_bench.RATIOS.items():
            expected = r["cases"][num]["median_ms"] / r["cases"][den]["median_ms"]
            assert r["ratios"][name] == pytest.approx(expected, rel=0.01, abs=1e-3)
        assert r["length"] / 2 <= r["random_lengths"]["low"] <= r["random_lengths"]["high"] <= r["length"]
    table = invoke(runner, [*tiny, "-q"]).stdout.splitlines()
    assert table[0].split()[:4] == ["B", "T", "H", "none"] and "fw/lstm" in table[0]
    assert [row.split()[:3] for row in table[1:3]] == [["2", "4", "3"], ["3", "2", "5"]]


def test_bench_layer_refuses_the_unroll_grid_options(runner):
    assert_one_line_error(invoke(runner, ["bench", "--layer", "--batch", "2"]), "--batch")
    assert_one_line_error(invoke(runner, ["bench", "--layer-shape", "2,4,3"]), "--layer")
    assert_one_line_error(invoke(runner, ["bench", "--layer", "--layer-shape", "2,4"]), "B,T,H")
