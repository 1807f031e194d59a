"""`crnn sample`: rollouts from a tiny trained LCD run as JSON, CSV and PNG, and clear errors for bad input."""

import csv
import json
import sys

import pytest
import torch
from click.testing import CliRunner

from crnn_core import ConfigError, Task
from crnn_plugins.tasks.art import ARTTask

from .conftest import TINY_ART, assert_one_line_error, invoke
from .test_lcd import TINY_LCD, formula


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny learned-normal LCD run, a tiny zero-init LCD run and a tiny ART run (seconds each)."""
    root = tmp_path_factory.mktemp("runs")
    runner = CliRunner()
    made = {}
    for name, args in {
        "learned": ["--task", "lcd", "--cell", "lstm", "--init", "learned", "--set", "init.distribution=normal", *TINY_LCD],
        "zero": ["--task", "lcd", "--cell", "lstm", "--init", "zero", *TINY_LCD],
        "art": ["--task", "art", "--cell", "lstm", "--init", "learned", "--set", "init.distribution=normal",
                "--set", "cell.hidden_size=8", *TINY_ART],
    }.items():
        result = invoke(runner, ["run", *args, "--epochs", "1", "-q", "--out", str(root / name)])
        assert result.exit_code == 0, result.stderr
        made[name] = root / name
    return made


def sample(runner, run, *args):
    return invoke(runner, ["sample", str(run), *args])


def test_sample_json_on_stdout(runner, runs):
    result = sample(runner, runs["learned"], "--period", "2.0", "--x0", "3.0", "-n", "4")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["n"] == 4 and data["steps"] == 25 and data["sampled"] is True and data["warnings"] == []
    assert data["params"] == {"period": 2.0, "x0": 3.0} and data["names"] == ["x"]
    samples, reference = data["samples"]["x"], data["reference"]["x"]
    assert len(samples) == 4 and all(len(s) == 26 for s in samples)
    assert reference == pytest.approx([formula(3.0, 2.0, t) for t in range(26)], rel=1e-5)
    assert all(s[0] == pytest.approx(reference[0]) for s in samples)  # every sample starts at x(0)
    assert len({tuple(s) for s in samples}) == 4  # different initial states, different trajectories
    assert data["t"] == list(range(26))


def test_sample_is_reproducible_per_seed(runner, runs):
    args = ["--period", "3.0", "--x0", "2.5", "-n", "3"]
    first = json.loads(sample(runner, runs["learned"], *args, "--seed", "7").stdout)
    again = json.loads(sample(runner, runs["learned"], *args, "--seed", "7").stdout)
    other = json.loads(sample(runner, runs["learned"], *args, "--seed", "8").stdout)
    assert first["samples"] == again["samples"] and first["samples"] != other["samples"]


def test_sample_steps_and_mean(runner, runs):
    result = sample(runner, runs["learned"], "--param", "period=2.5", "--param", "x0=3", "--steps", "30", "--mean")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["n"] == 1 and data["sampled"] is False and len(data["samples"]["x"][0]) == 31
    assert "beyond the trained length" in result.stderr  # a warning, not an error
    zero = sample(runner, runs["zero"], "--period", "2.0", "--x0", "3.0", "--mean")
    assert zero.exit_code == 0, zero.stderr


def test_sample_writes_json_and_csv(runner, runs, tmp_path):
    out = tmp_path / "t2.json"
    result = sample(runner, runs["learned"], "--period", "2.0", "--x0", "3.0", "-n", "3", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out) and "samples" not in summary and summary["mse_to_reference"] >= 0
    assert len(json.loads(out.read_text())["samples"]["x"]) == 3
    out_csv = tmp_path / "t2.csv"
    assert sample(runner, runs["learned"], "--period", "2.0", "--x0", "3.0", "-n", "2", "--out", str(out_csv)).exit_code == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert rows[0].keys() == {"kind", "sample", "t", "x"}
    assert sum(r["kind"] == "sample" for r in rows) == 2 * 26 and sum(r["kind"] == "reference" for r in rows) == 26


def test_sample_writes_png(runner, runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs" / "t3.png"
    result = sample(runner, runs["learned"], "--period", "3.0", "--x0", "3.0", "--out", str(out), "--checkpoint", "last")
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_is_a_clear_error(runner, runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    result = sample(runner, runs["learned"], "--period", "2", "--x0", "3", "--out", str(tmp_path / "a.png"))
    assert_one_line_error(result, "pip install 'matplotlib' (crnn's [plot] extra)")
    assert not (tmp_path / "a.png").exists()


def test_extrapolation_warns_but_works(runner, runs):
    result = sample(runner, runs["learned"], "--period", "6.0", "--x0", "5.0", "-n", "2")
    assert result.exit_code == 0, result.stderr
    assert "period 6 is outside the trained range [0.5, 4.5]" in result.stderr
    assert "x0 5 is outside the trained range [2, 4]" in result.stderr
    assert len(json.loads(result.stdout)["warnings"]) == 2


@pytest.mark.parametrize(
    "which, args, fragment",
    [
        ("learned", ["--period", "2", "--x0", "3", "-n", "0"], "-n must be positive, got 0"),
        ("learned", ["--period", "2", "--x0", "3", "-n", "-3"], "-n must be positive"),
        ("learned", ["--period", "2", "--x0", "3", "--steps", "0"], "--steps must be positive"),
        ("learned", ["--period", "2"], "needs --x0"),
        ("learned", ["--period", "2", "--x0", "3", "--param", "speed=1"], "no generation parameter 'speed'"),
        ("learned", ["--param", "period"], "--param expects NAME=VALUE"),
        ("learned", ["--period", "2", "--x0", "3", "--out", "x.txt"], "unsupported file type '.txt'"),
        ("zero", ["--period", "2", "--x0", "3"], "init 'zero'"),
        ("art", ["--period", "2", "--x0", "3"], "task 'art'"),
        # sizes checked against memory before the rollout allocates
        ("learned", ["--period", "2", "--x0", "3", "-n", str(10**13)], "of memory, more than the"),
        ("learned", ["--period", "2", "--x0", "3", "--steps", str(10**13)], "lower -n / --steps"),
        # found by benchmarks/cli_fuzz.py: a malformed --device was exit 1 "internal error"
        ("learned", ["--period", "2", "--x0", "3", "--device", "x=y"], "--device 'x=y' is not a device name"),
        ("learned", ["--period", "2", "--x0", "3", "--device", "meta"], "crnn runs on cpu or cuda, not meta"),
    ],
)
def test_bad_input_is_one_line(runner, runs, which, args, fragment):
    assert_one_line_error(sample(runner, runs[which], *args), fragment)


def test_not_a_run_directory(runner, tmp_path):
    assert_one_line_error(invoke(runner, ["sample", str(tmp_path), "--period", "2", "--x0", "3"]), "not a crnn run directory")
    assert_one_line_error(invoke(runner, ["sample", str(tmp_path / "missing"), "--period", "2", "--x0", "3"]), "not a crnn run directory")


def test_missing_checkpoint_is_one_line(runner, runs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((runs["learned"] / "config.json").read_text())
    assert_one_line_error(sample(runner, broken, "--period", "2", "--x0", "3"), "best.pt is missing")


def test_tasks_without_rollout_say_so():
    task = ARTTask.__new__(ARTTask)
    assert type(task).rollout is Task.rollout and Task.rollout_params == {}
    with pytest.raises(ConfigError, match="task 'art' cannot generate sequences"):
        task.rollout(torch.nn.Linear(1, 1), {}, 1)


def test_sample_output_is_standard_json_for_nan_weights(runner, runs, tmp_path):
    """NaN weights give NaN samples: written as null and named under "nonfinite" (bare NaN, which
    JSON readers refuse, was written before), as metrics.jsonl does."""
    import shutil

    run = tmp_path / "nan"
    shutil.copytree(runs["learned"], run)
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["model"] = {k: torch.full_like(v, float("nan")) for k, v in ckpt["model"].items()}
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    result = sample(runner, run, "--period", "2.0", "--x0", "3.0", "-n", "2", "--steps", "3")
    assert result.exit_code == 0, result.stderr

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    data = json.loads(result.stdout, parse_constant=refuse)
    assert data["samples"]["x"][0][1] is None and data["samples"]["x"][0][0] == pytest.approx(data["reference"]["x"][0])
    assert "samples.x[0][1]" in data["nonfinite"]


def test_out_of_range_checkpoint_counters_are_refused(runner, runs, tmp_path):
    """`crnn sample` printed a tampered checkpoint's epoch of 1e30 as the model's epoch."""
    import shutil

    for field, value in (("epoch", 1e30), ("step", -1), ("epoch", "2"), ("epoch", 10**30)):
        run = tmp_path / f"{field}{value}"
        shutil.copytree(runs["learned"], run)
        ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        ckpt[field] = value
        torch.save(ckpt, run / "checkpoints" / "best.pt")
        result = sample(runner, run, "--period", "2.0", "--x0", "3.0", "-n", "2")
        assert result.exit_code == 2
        reason = "is impossible after" if value == 10**30 else f"'{field}' must be an integer >= 0"
        assert_one_line_error(result, f"best.pt has a missing or invalid field: ")
        assert reason in result.stderr


def test_a_component_from_another_package_is_named(runner, runs, tmp_path):
    """plugins.json says the cell came from another package than the installed one: one warning."""
    import shutil

    run = tmp_path / "moved"
    shutil.copytree(runs["learned"], run)
    recorded = json.loads((run / "plugins.json").read_text())
    recorded["cell"].update(package="crnn-lstm-fork", version="9.1")
    (run / "plugins.json").write_text(json.dumps(recorded))
    result = sample(runner, run, "--period", "2.0", "--x0", "3.0", "-n", "2")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "crnn-lstm-fork" in line]
    assert len(lines) == 1 and "the cell 'lstm' from the package crnn-lstm-fork 9.1; here 'lstm' comes from crnn" in lines[0]
