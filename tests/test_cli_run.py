"""`crnn run` end to end on tiny data: the run directory, resume, and bad input."""

import importlib.metadata
import json
import platform

import pytest
import torch

from .conftest import TINY_ART, assert_one_line_error, invoke, metrics_without_wall_time


def run_tiny(runner, out, *extra):
    return invoke(runner, ["run", "--cell", "fastweights", "--init", "learned", "--task", "art", "--epochs", "2",
                           "--out", str(out), "-q", *TINY_ART, "--set", "cell.backend=reference", *extra])


def test_run_writes_the_run_directory(runner, tmp_path):
    out = tmp_path / "run"
    result = run_tiny(runner, out)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 2 and summary["steps"] == 8
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["cell"] == "fastweights" and config["model"]["context"] == "linear"
    assert config["model"]["cell_options"]["lam"] == 0.95 and config["model"]["task_options"]["train_size"] == 256
    assert config["train"]["lr"] == 1e-3 and config["train"]["batch_size"] == 64
    assert (out / "command.txt").read_text().startswith("crnn run")
    plugins = json.loads((out / "plugins.json").read_text())
    assert plugins["cell"]["package"] == "crnn" and plugins["task"]["name"] == "art"
    environment = json.loads((out / "env.json").read_text())
    assert environment["torch"] == torch.__version__ and environment["python"] == platform.python_version()
    assert environment["crnn"] == importlib.metadata.version("crnn") and environment["cell_backend"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"epoch", "step", "split", "loss", "metrics", "wall_time"} <= set(records[0])
    assert {"nll", "accuracy"} == set(records[0]["metrics"])
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(out / "checkpoints" / name, weights_only=True)
        assert ckpt["format"] == "crnn-checkpoint-v1" and "model" in ckpt and "optimizer" in ckpt and "rng" in ckpt


def test_resume_gives_the_same_metrics(runner, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_tiny(runner, whole, "--epochs", "3", "--set", "init.distribution=normal").exit_code == 0
    assert run_tiny(runner, part, "--epochs", "1", "--set", "init.distribution=normal").exit_code == 0
    result = invoke(runner, ["run", "--resume", str(part), "--epochs", "3", "-q"])
    assert result.exit_code == 0, result.stderr

    assert metrics_without_wall_time(whole / "metrics.jsonl") == metrics_without_wall_time(part / "metrics.jsonl")
    assert len((part / "command.txt").read_text().splitlines()) == 2


def test_progress_lines_on_stderr_only(runner, tmp_path):
    result = invoke(runner, ["run", "--epochs", "1", "--out", str(tmp_path / "r"), *TINY_ART, "--init", "zero"])
    assert result.exit_code == 0
    assert "epoch 1/1" in result.stderr and "epoch 1/1" not in result.stdout
    json.loads(result.stdout)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--cell", "fastweight"], "Unknown cell 'fastweight'. Did you mean 'fastweights'? (see: crnn list cells)"),
        (["--init", "learnd"], "Did you mean 'learned'?"),
        (["--task", "nope"], "Unknown task 'nope'"),
        (["--context", "mpl"], "Did you mean 'mlp'?"),
        (["--set", "cell.inner_steps"], "--set expects scope.key=value"),
        (["--set", "cell.nope=1"], "unknown option cell.nope"),
        (["--set", "model.x=1"], "unknown scope 'model'"),
        (["--set", "cell.hidden_size=abc"], "cell.hidden_size: expected an integer"),
        (["--set", "cell.hidden_size=0"], "cell.hidden_size must be >= 1"),
        (["--set", "cell.hidden_size=-4"], "cell.hidden_size must be >= 1"),
        (["--set", "task.train_size=0"], "task.train_size must be >= 1"),
        (["--set", "cell.activation=gelu"], "not one of relu, tanh"),
        (["--epochs", "0"], "epochs must be positive"),
        (["--batch-size", "-1"], "batch_size must be positive"),
        (["--lr", "0"], "lr must be positive"),
        (["--device", "tpu"], "device must be cpu or cuda"),
        (["--init", "zero", "--context", "mlp"], "uses no context"),
        # values the code cannot honour (a libgomp segfault, an overflow after
        # the run directory existed, a silently used default)
        (["--set", "train.threads=100000"], "threads must be between 1 and this machine's"),
        (["--seed", "20000000000000"], "seed must be between 0 and 4294967295"),
        (["--seed", "-1"], "seed must be between 0 and 4294967295"),
        (["--cell", ""], "--cell was given an empty name"),
        (["--task", " "], "--task was given an empty name"),
    ],
)
def test_bad_input_is_one_line(runner, tmp_path, args, fragment):
    result = invoke(runner, ["run", "--out", str(tmp_path / "r"), *TINY_ART, *args])
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "r").exists()  # refused before the first byte


def test_a_run_recorded_with_more_threads_than_this_machine_resumes_with_fewer(runner, tmp_path):
    """threads does not change results, so a run made on a bigger machine resumes here (with a warning)."""
    import os

    out = tmp_path / "r"
    assert invoke(runner, ["run", "--out", str(out), *TINY_ART, "--epochs", "1", "-q"]).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    config["train"]["threads"] = (os.cpu_count() or 1) + 7
    (out / "config.json").write_text(json.dumps(config))
    result = invoke(runner, ["run", "--resume", str(out), "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.stderr
    assert f"this machine has {os.cpu_count()} CPUs" in result.stderr


def test_resume_names_a_component_that_plugins_json_records_from_another_package(runner, tmp_path):
    """As crnn sample and load_run do: one warning naming both packages; the run goes on."""
    out = tmp_path / "r"
    assert invoke(runner, ["run", "--out", str(out), *TINY_ART, "--epochs", "1", "-q"]).exit_code == 0
    recorded = json.loads((out / "plugins.json").read_text())
    recorded["cell"].update(package="crnn-fastweights-fork", version="9.1")
    (out / "plugins.json").write_text(json.dumps(recorded))
    result = invoke(runner, ["run", "--resume", str(out), "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "crnn-fastweights-fork" in line]
    assert len(lines) == 1 and "from the package crnn-fastweights-fork 9.1; here 'fastweights' comes from crnn" in lines[0]
    assert [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]


@pytest.mark.parametrize("kept, warning", [
    ([2, 3], "has no record of epoch 1 of the 3 that checkpoints/last.pt has trained"),
    ([1, 3], "has no record of epoch 2 of the 3"),
    ([], "has no record of epochs 1-3 of the 3"),
    ([1, 2, 3], None),
])
def test_resume_names_the_epochs_metrics_jsonl_has_lost(runner, tmp_path, kept, warning):
    """Records cannot be recomputed, so a history with holes is resumed (a refusal would end the run
    for good) with one warning naming the missing epochs; the records that are there stay as they were."""
    out = tmp_path / "r"
    assert invoke(runner, ["run", "--out", str(out), *TINY_ART, "--epochs", "3", "-q"]).exit_code == 0
    metrics = out / "metrics.jsonl"
    lines = {json.loads(line)["epoch"]: line for line in metrics.read_text().splitlines()}
    metrics.write_text("".join(lines[epoch] + "\n" for epoch in kept))
    result = invoke(runner, ["run", "--resume", str(out), "--epochs", "4", "-q"])
    assert result.exit_code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "has no record of" in line]
    assert (warned == []) if warning is None else (len(warned) == 1 and warning in warned[0] and str(metrics) in warned[0])
    after = metrics.read_text().splitlines()
    assert after[:-1] == [lines[epoch] for epoch in kept] and json.loads(after[-1])["epoch"] == 4


def test_missing_epochs_are_named_as_ranges():
    from crnn_core.rundirs.rundir import EPOCH_RANGES_SHOWN, epoch_ranges, missing_epochs

    assert missing_epochs({2, 3, 6}, 8) == [(1, 1), (4, 5), (7, 8)]
    assert epoch_ranges(missing_epochs({2, 3, 6}, 8)) == "1, 4-5, 7-8"
    assert missing_epochs({1, 2, 99, "x", None}, 2) == []
    assert missing_epochs(set(), 10**18) == [(1, 10**18)]  # a tampered epoch: no list of 10^18 numbers
    holes = set(range(1, 200, 2))  # epochs 2, 4, ..., 198 missing: 99 runs
    assert epoch_ranges(missing_epochs(holes, 199)).endswith(", 20, ... (99 epochs in all)")
    assert epoch_ranges(missing_epochs(holes, 199)).count(",") == EPOCH_RANGES_SHOWN


def test_cuda_without_cuda(runner, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert_one_line_error(invoke(runner, ["run", "--out", str(tmp_path / "r"), *TINY_ART, "--device", "cuda"]), "no CUDA device")


def test_existing_run_is_not_overwritten(runner, tmp_path):
    out = tmp_path / "run"
    assert run_tiny(runner, out, "--epochs", "1").exit_code == 0
    before = (out / "metrics.jsonl").read_text()
    assert_one_line_error(run_tiny(runner, out, "--epochs", "1"), "already holds a run")
    assert (out / "metrics.jsonl").read_text() == before
    assert run_tiny(runner, out, "--epochs", "1", "--force").exit_code == 0


def test_resume_errors(runner, tmp_path):
    assert_one_line_error(invoke(runner, ["run", "--resume", str(tmp_path / "missing")]), "not a run directory")
    out = tmp_path / "run"
    assert run_tiny(runner, out, "--epochs", "1").exit_code == 0
    assert_one_line_error(invoke(runner, ["run", "--resume", str(out), "--lr", "0.1"]), "cannot be combined with --resume")
    (out / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(invoke(runner, ["run", "--resume", str(out)]), "corrupt or not a crnn checkpoint")
    (out / "checkpoints" / "last.pt").unlink()  # no checkpoint backs the metrics: the run starts again
    restarted = invoke(runner, ["run", "--resume", str(out), "-q"])
    assert restarted.exit_code == 0 and "the run starts again from its first step" in restarted.stderr


def test_list_and_help(runner):
    result = invoke(runner, ["list"])
    assert result.exit_code == 0
    for name in ("fastweights", "lstm", "zero", "free", "learned", "identity", "linear", "mlp", "art"):
        assert f"  {name} " in result.stdout
    data = json.loads(invoke(runner, ["list", "cells", "--json"]).stdout)
    fw = next(e for e in data["cells"] if e["name"] == "fastweights")
    assert fw["package"] == "crnn" and {o["name"] for o in fw["options"]} >= {"lam", "eta", "inner_steps", "backend"}
    assert "cell: inner_steps=1" in invoke(runner, ["list", "cells", "--options"]).stdout
    for command in (["--help"], ["run", "--help"], ["list", "--help"], ["plugins", "--help"]):
        result = invoke(runner, command)
        assert result.exit_code == 0 and "Example" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where PyTorch sees no CUDA device")
def test_device_cuda_without_cuda_names_the_remedy(runner, tmp_path):
    result = invoke(runner, ["run", "--device", "cuda", "--out", str(tmp_path / "run"), "-q", *TINY_ART])
    remedy = ("install a CUDA build, e.g. pip install torch --index-url https://download.pytorch.org/whl/"
              if torch.version.cuda is None else "check nvidia-smi, the driver and CUDA_VISIBLE_DEVICES")
    assert_one_line_error(result, remedy)
    assert result.exit_code == 2 and not (tmp_path / "run").exists()


def test_the_help_table_matches_each_command():
    """`crnn --help` shows each core command's short help without importing it: the table's text is the command's."""
    import importlib

    from crnn_core.commandline.main import CORE_COMMANDS

    for name, core in CORE_COMMANDS.items():
        command = getattr(importlib.import_module(core.module), core.attribute)
        assert command.name == name and command.get_short_help_str(limit=1000) == core.short_help, name
