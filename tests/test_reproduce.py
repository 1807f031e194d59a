"""`crnn reproduce`: a tiny ART grid runs in parallel jobs, resumes, and writes its figures and table."""

import json

from .conftest import assert_one_line_error, invoke

TINY = ["--set", "task.train_size=256", "--set", "task.val_size=128", "--set", "cell.backend=reference",
        "--set", "train.batch_size=64"]


def test_art_grid_runs_resumes_and_reports(runner, tmp_path):
    out = tmp_path / "grid"
    args = ["reproduce", "art", "--seeds", "1", "--inits", "zero,learned", "--jobs", "2", "--out", str(out), *TINY]
    result = invoke(runner, [*args, "--epochs", "1"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(p.rsplit("/", 1)[1] for p in summary["figures"]) == ["art_val_accuracy.png", "art_val_error_rate.png",
                                                                       "art_val_nll.png"]
    for path in summary["figures"]:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert "| zero | 1 |" in table and "| learned | 1 |" in table and "epochs to 100%" in table
    config = json.loads((out / "learned_s0" / "config.json").read_text())
    assert config["model"]["cell"] == "fastweights" and config["model"]["cell_options"]["hidden_size"] == 50

    # the same grid again: nothing to do
    again = invoke(runner, [*args, "--epochs", "1"])
    assert "2 of 2 runs already finished" in again.stderr
    # more epochs: the runs are resumed from last.pt, not restarted
    longer = invoke(runner, [*args, "--epochs", "2"])
    assert longer.exit_code == 0, longer.stderr
    lines = (out / "zero_s0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "--resume" in (out / "zero_s0" / "command.txt").read_text()


def test_reproduce_bad_input(runner, tmp_path):
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--inits", "zero,nope", "--out", str(tmp_path)]),
                          "'nope' is not an arm of art")
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--seeds", "0", "--out", str(tmp_path)]), "must be positive")
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--report-only", "--out", str(tmp_path / "empty")]),
                          "no finished epochs")
