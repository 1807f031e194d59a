"""The study pipeline on a tiny grid: `crnn reproduce art --variant`, grid.json and --resume,
the ART table with intervals and rank tests, the log-scale error figure, and the LCD sample measures."""

from __future__ import annotations

import json

from crnn_core.experiments.reproduce import GridRun
from crnn_plugins.experiments.paper import AUTHORS_ART
from crnn_plugins.experiments.study import lcd_sample_measures, lcd_study_table

from .conftest import assert_one_line_error, invoke
from .test_lcd import TINY_LCD
from .test_reproduce import TINY


def test_authors_variant_grid_resumes_and_reports(runner, tmp_path):
    out = tmp_path / "authors"
    args = ["reproduce", "art", "--seeds", "2", "--inits", "zero,learned", "--jobs", "2", "--out", str(out)]
    result = invoke(runner, [*args, "--variant", "authors", "--early-stop", "--epochs", "1", *TINY,
                             "--set", "train.report_train_metrics=true"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert any(p.endswith("art_val_error_rate.png") for p in summary["figures"])
    for path in summary["figures"]:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "learned_s1" / "config.json").read_text())
    for item in AUTHORS_ART:  # every choice of the preset reached the run
        scope, _, kv = item.partition(".")
        key, _, value = kv.partition("=")
        assert str(config["model"][f"{scope}_options"][key]).lower() == value.lower() or \
            config["model"][f"{scope}_options"][key] == float(value), item
    assert config["train"]["report_train_metrics"] is True
    record = json.loads((out / "zero_s0" / "metrics.jsonl").read_text().splitlines()[0])
    assert "accuracy" in record["train_metrics"]
    table = (out / "results.md").read_text()
    assert "| zero | 2 | 0/2 |" in table and "| learned | 2 |" in table
    assert "learned vs zero: p" in table and "steps to 100%" in table

    # the same directory with other settings is refused; --resume continues it as recorded
    assert_one_line_error(invoke(runner, [*args, "--epochs", "2", *TINY]), "holds a grid with other settings")
    assert_one_line_error(invoke(runner, [*args, "--resume", "--variant", "authors"]), "give none of them")
    resumed = invoke(runner, ["reproduce", "art", "--seeds", "1", "--inits", "learned", "--out", str(out), "--resume",
                              "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.stderr
    lines = (out / "learned_s0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "--resume" in (out / "learned_s0" / "command.txt").read_text()


def test_reproduce_variant_and_resume_errors(runner, tmp_path):
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--variant", "nope", "--out", str(tmp_path)]),
                          "'nope' is not a variant of art (choose from authors, lr-decay, resample)")
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--resume", "--out", str(tmp_path / "none")]),
                          "holds no grid to continue")
    listing = json.loads(invoke(runner, ["reproduce", "--list"]).stdout)
    assert listing["art"]["variants"]["authors"] == list(AUTHORS_ART)


def test_lcd_table_has_intervals_and_sample_measures(runner, tmp_path):
    runs = []
    for seed in (0, 1):
        path = tmp_path / f"learned_s{seed}"
        result = invoke(runner, ["run", "--task", "lcd", "--cell", "lstm", "--init", "learned", "--set",
                                 "init.distribution=normal", *TINY_LCD, "--epochs", "1", "--seed", str(seed), "-q",
                                 "--out", str(path)])
        assert result.exit_code == 0, result.stderr
        runs.append(GridRun("learned", seed, path, []))
    measures = lcd_sample_measures(runs[0].path)
    assert measures["spread"] > 0, "a learned Normal initial state gives different samples"
    assert measures["reference_period_error"] < 0.01 and measures["period_error"] >= 0
    table = lcd_study_table(runs, ["learned"], ("squared_error", "rollout_mse"))
    row = next(line for line in table.splitlines() if line.startswith("| learned | 2 |"))
    assert row.count("[") == 5, row  # intervals on both errors and the three sample measures


def _fake_run(path, accuracies):
    """A run directory with only a metrics.jsonl: validation accuracy per epoch, 100 steps per epoch."""
    path.mkdir(parents=True)
    lines = [json.dumps({"epoch": e, "step": 100 * e, "split": "val", "loss": 1.0 - a,
                         "metrics": {"nll": 1.0 - a, "accuracy": a}, "wall_time": float(e)})
             for e, a in enumerate(accuracies, 1)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_the_arms_table_and_figure_compare_grids(tmp_path):
    from crnn_core.experiments.stats import mann_whitney_u
    from crnn_plugins.experiments.study import arms_figure, arms_table, grid_runs

    arm = tmp_path / "arm"
    _fake_run(arm / "zero_s0", [0.5, 0.995, 1.0])
    _fake_run(arm / "zero_s1", [0.5, 0.9, 0.995, 1.0])
    _fake_run(arm / "free_s0", [0.5, 0.995, 0.998])
    _fake_run(arm / "learned_s0", [0.995, 1.0])
    _fake_run(arm / "learned_s1", [0.5, 1.0])
    (arm / "learned_s2").mkdir()  # started, no metrics yet: not counted
    assert [(r.init, r.seed) for r in grid_runs(arm)] == [("zero", 0), ("free", 0), ("learned", 0), ("zero", 1),
                                                          ("learned", 1)]
    table = arms_table({"defaults": arm, "again": arm})
    assert "| defaults | zero | 2 | 2/2 | 2.5 [2, 3] | 2/2 | 3.5 [3, 4] | 350 [300, 400] |" in table
    assert "| defaults | free | 1 | 1/1 | 2 | 0/1 | — | — |" in table
    assert "| again | learned | 2 | 2/2 | 1.5 [1, 2] | 2/2 | 2 [2, 2] | 200 [200, 200] |" in table
    expected = mann_whitney_u([2.0, 2.0], [3.0, 4.0])  # epochs to 100%, learned vs zero
    assert f"| defaults | 100% | {expected.p:.3g} (U={expected.u:g}, {expected.method}) |" in table
    never = mann_whitney_u([2.0, 2.0], [float("inf")])  # free never reached 100%: it ranks last
    assert f"{never.p:.3g} (U={never.u:g}, {never.method}) |" in table.split("| defaults | 100% |")[1].splitlines()[0]
    path = arms_figure({"defaults": arm, "again": arm}, tmp_path / "arms.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
