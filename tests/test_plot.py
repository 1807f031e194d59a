"""`crnn plot`: runs grouped by configuration less the seed, mean and spread over seeds, PNG and JSON."""

import json
import sys

import pytest

from .conftest import assert_one_line_error, invoke


def fake_run(path, init, seed, curve, *, epochs=None, threads=None, extra_metric=None):
    """A run directory as `crnn run` writes it, without training: config.json and metrics.jsonl."""
    path.mkdir(parents=True)
    init_options = {"distribution": "normal", "sigma_init": 0.25, "components": "all"} if init == "learned" else {"value": 0.0}
    config = {
        "model": {"cell": "lstm", "init": init, "task": "lcd", "context": "mlp" if init == "learned" else None,
                  "cell_options": {"hidden_size": 128, "forget_bias": 1.0}, "init_options": init_options,
                  "context_options": {"hidden": 50, "layers": 1} if init == "learned" else {},
                  "task_options": {"train_per_period": 1000, "append_period": init != "learned"}},
        "train": {"seed": seed, "lr": 2e-4, "batch_size": 128, "epochs": epochs or len(curve), "threads": threads,
                  "device": "cpu", "grad_clip": 10.0},
    }
    (path / "config.json").write_text(json.dumps(config))
    lines = []
    for epoch, value in enumerate(curve, 1):
        metrics = {"squared_error": value, **({"rollout_mse": extra_metric} if extra_metric is not None else {})}
        lines.append(json.dumps({"epoch": epoch, "step": epoch * 40, "split": "val", "loss": value, "metrics": metrics,
                                 "train_loss": value / 2, "wall_time": float(epoch)}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def grid(tmp_path):
    root = tmp_path / "grid"
    return [
        fake_run(root / "zero_s0", "zero", 0, [0.4, 0.2, 0.1]),
        fake_run(root / "zero_s1", "zero", 1, [0.6, 0.4, 0.3], threads=1, epochs=65),  # still the same config
        fake_run(root / "learned_s0", "learned", 0, [0.3, 0.1, 0.05]),
        fake_run(root / "learned_s1", "learned", 1, [0.5, 0.3]),  # a run that stopped early
    ]


def test_groups_over_seeds_with_mean_and_spread(runner, grid):
    result = invoke(runner, ["plot", *map(str, grid), "--no-png"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["metric"] == "squared_error"  # the task's best metric by default
    zero, learned = data["groups"]
    assert zero["seeds"] == [0, 1] and learned["seeds"] == [0, 1]
    assert zero["label"].startswith("lstm/zero") and learned["label"].startswith("lstm/learned")
    assert "init.distribution=normal" in learned["label"]
    first = zero["curve"][0]
    assert first["epoch"] == 1 and first["mean"] == pytest.approx(0.5) and first["n"] == 2
    assert first["std"] == pytest.approx(0.1414213, rel=1e-5) and (first["min"], first["max"]) == (0.4, 0.6)
    assert [p["n"] for p in learned["curve"]] == [2, 2, 1]  # epochs not every seed reached
    assert zero["final"]["mean"] == pytest.approx(0.2) and learned["final"]["mean"] == pytest.approx(0.175)
    assert learned["best"]["mean"] == pytest.approx(0.175)


def test_writes_png(runner, grid, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs" / "val.png"
    result = invoke(runner, ["plot", *map(str, grid), "--out", str(out), "--title", "LCD"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["out"] == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_directory_of_runs_and_other_metrics(runner, grid):
    result = invoke(runner, ["plot", str(grid[0].parent), "--metric", "train_loss", "--no-png"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["out"] is None and data["metric"] == "train_loss" and len(data["groups"]) == 2
    zero = next(g for g in data["groups"] if g["label"].startswith("lstm/zero"))
    assert zero["curve"][0]["mean"] == pytest.approx(0.25) and len(zero["runs"]) == 2


def test_single_run_default_output_in_the_run(runner, grid):
    pytest.importorskip("matplotlib")
    result = invoke(runner, ["plot", str(grid[2]), "--spread", "minmax", "--linear"])
    assert result.exit_code == 0, result.stderr
    assert (grid[2] / "plots" / "val_squared_error.png").is_file()
    assert json.loads(result.stdout)["groups"][0]["label"] == "lstm/learned init.distribution=normal"


def test_differing_task_or_train_options_label_the_groups(runner, tmp_path):
    a = fake_run(tmp_path / "a", "zero", 0, [0.3, 0.2])
    b = fake_run(tmp_path / "b", "zero", 0, [0.3, 0.1])
    config = json.loads((b / "config.json").read_text())
    config["train"]["lr"] = 1e-3
    (b / "config.json").write_text(json.dumps(config))
    data = json.loads(invoke(runner, ["plot", str(a), str(b), "--no-png"]).stdout)
    assert [g["label"] for g in data["groups"]] == ["lstm/zero train.lr=0.0002", "lstm/zero train.lr=0.001"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--metric", "accuracy"], "has no metric 'accuracy' (available: loss, squared_error, train_loss)"),
        (["--out", "curves.pdf"], "plots are written as .png"),
    ],
)
def test_bad_input_is_one_line(runner, grid, args, fragment):
    assert_one_line_error(invoke(runner, ["plot", str(grid[0]), *args]), fragment)


def test_not_runs(runner, tmp_path):
    assert_one_line_error(invoke(runner, ["plot"]), "give at least one run directory")
    assert_one_line_error(invoke(runner, ["plot", str(tmp_path)]), "is not a crnn run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model": {"task": "lcd"}, "train": {}}))
    assert_one_line_error(invoke(runner, ["plot", str(empty)]), "model.cell must be a component name")  # as on --resume
    (empty / "config.json").write_text(json.dumps({"model": {"cell": "lstm", "init": "zero", "task": "lcd"}, "train": {}}))
    assert_one_line_error(invoke(runner, ["plot", str(empty)]), "has no validation records yet")


def test_png_without_matplotlib_is_a_clear_error(runner, grid, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert_one_line_error(invoke(runner, ["plot", str(grid[0]), "--out", str(tmp_path / "x.png")]), "pip install 'matplotlib' (crnn's [plot] extra)")
    assert invoke(runner, ["plot", str(grid[0]), "--no-png"]).exit_code == 0
