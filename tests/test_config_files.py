"""Config files: `crnn run --config FILE` (TOML, JSON, a run's own config.json) and `--print-config`."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from crnn_core.commandline.configfile import json_key_lines, toml_key_lines

from .conftest import TINY_ART, assert_one_line_error, invoke, metrics_without_wall_time
from .test_doc_commands import SHRINK, config_task

pytestmark = pytest.mark.usefixtures("thread_count_kept")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples" / "configs").glob("*.toml"))


def printed(runner, *args: str) -> str:
    result = invoke(runner, ["run", *args])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_print_config_round_trip_toml_and_json(runner, tmp_path, monkeypatch):
    """print-config -> --config -> print-config gives the same text, in TOML and in JSON; nothing is written."""
    monkeypatch.chdir(tmp_path)
    flags = ["--cell", "lstm", "--task", "lcd", "--epochs", "4", "--set", "cell.hidden_size=16",
             "--set", "init.distribution=normal", "--set", "train.grad_clip=none"]
    toml_text = printed(runner, *flags, "--print-config")
    assert 'hidden_size = 16' in toml_text and 'grad_clip = "none"' in toml_text and "epochs = 4" in toml_text
    (tmp_path / "a.toml").write_text(toml_text)
    assert printed(runner, "--config", "a.toml", "--print-config") == toml_text
    json_text = printed(runner, "--config", "a.toml", "--print-config", "json")
    document = json.loads(json_text)
    assert document["train"]["grad_clip"] is None and document["model"]["cell_options"]["hidden_size"] == 16
    (tmp_path / "a.json").write_text(json_text)
    assert printed(runner, "--config", "a.json", "--print-config") == json_text  # JSON in, JSON out
    assert printed(runner, "--config", "a.json", "--print-config", "toml") == toml_text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.toml"]  # no run directory


def test_config_json_replays_the_run_bit_identically(runner, tmp_path):
    """A run's config.json as --config gives the same metrics and the same weights as the flags did."""
    first, again = tmp_path / "flags", tmp_path / "replay"
    result = invoke(runner, ["run", "--epochs", "2", "--seed", "3", "--set", "cell.inner_steps=2", "--set", "train.threads=1",
                             "-q", *TINY_ART, "--out", str(first)])
    assert result.exit_code == 0, result.stderr
    result = invoke(runner, ["run", "--config", str(first / "config.json"), "-q", "--out", str(again)])
    assert result.exit_code == 0, result.stderr
    original, replay = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert {k: original[k] for k in ("model", "train")} == {k: replay[k] for k in ("model", "train")}
    assert metrics_without_wall_time(first / "metrics.jsonl") == metrics_without_wall_time(again / "metrics.jsonl")
    for name in ("best", "last"):
        a, b = (torch.load(d / "checkpoints" / f"{name}.pt", weights_only=True)["model"] for d in (first, again))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flags_and_set_override_the_file(runner, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('[model]\ncell = "fastweights"\ninit = "learned"\n\n[model.cell_options]\ninner_steps = 2\n'
                      'lam = 0.9\n\n[train]\nepochs = 5\nlr = 0.01\nseed = 7\n')
    document = json.loads(printed(runner, "--config", str(config), "--epochs", "2", "--set", "cell.inner_steps=3",
                                  "--set", "train.seed=8", "--print-config", "json"))
    assert document["train"]["epochs"] == 2 and document["train"]["seed"] == 8  # flag, --set
    assert document["train"]["lr"] == 0.01 and document["model"]["cell_options"]["lam"] == 0.9  # the file
    assert document["model"]["cell_options"]["inner_steps"] == 3


def test_a_flag_that_changes_a_component_drops_the_files_options_for_it(runner, tmp_path):
    """--init zero over a file's learned init (with its options and context network): zero, no context."""
    config = tmp_path / "lcd.toml"
    config.write_text('[model]\ncell = "lstm"\ninit = "learned"\ntask = "lcd"\ncontext = "mlp"\n'
                      '[model.init_options]\ndistribution = "normal"\n[model.context_options]\nhidden = 20\n')
    document = json.loads(printed(runner, "--config", str(config), "--init", "zero", "--print-config", "json"))
    assert document["model"]["init"] == "zero" and document["model"]["context"] is None
    assert document["model"]["init_options"] == {"value": 0.0} and document["model"]["context_options"] == {}
    kept = json.loads(printed(runner, "--config", str(config), "--print-config", "json"))
    assert kept["model"]["init_options"]["distribution"] == "normal" and kept["model"]["context_options"]["hidden"] == 20


def test_a_flag_naming_the_component_the_file_configures_keeps_its_options(runner, tmp_path):
    """The file names no cell (so: fastweights); `--cell fastweights` is the same cell, `--cell lstm` another."""
    config = tmp_path / "exp.toml"
    config.write_text("[model.cell_options]\ninner_steps = 2\n")
    same = json.loads(printed(runner, "--config", str(config), "--cell", "fastweights", "--print-config", "json"))
    assert same["model"]["cell_options"]["inner_steps"] == 2
    other = json.loads(printed(runner, "--config", str(config), "--cell", "lstm", "--print-config", "json"))
    assert other["model"]["cell"] == "lstm" and "inner_steps" not in other["model"]["cell_options"]


def test_a_recorded_thread_count_above_this_machines_cpus_is_lowered(runner, tmp_path):
    """threads does not change results: a config.json from a bigger machine replays here, with a warning."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"cell": "fastweights"}, "train": {"threads": 100000}}))
    result = invoke(runner, ["run", "--config", str(config), "--print-config"])
    assert result.exit_code == 0, result.stderr
    assert "asks for 100000 threads" in result.stderr and "threads = 100000" not in result.stdout


#: (file name, text, fragments of the one error line: file, line, key, reason)
REFUSED = [
    ("unknown.toml", '[model]\ncell = "fastweights"\n\n[model.cell_options]\ninner_stepz = 2\n',
     ["unknown.toml, line 5: model.cell_options.inner_stepz: unknown key", "inner_steps"]),
    ("unknown.json", '{"model": {"cell": "lstm"},\n "trian": {"epochs": 2}}\n',
     ["unknown.json, line 2: trian: unknown key"]),
    ("dotted.toml", 'train.epochs = 2\ntrain.seeed = 1\n', ["dotted.toml, line 2: train.seeed: unknown key"]),
    ("type.toml", '[train]\nepochs = "3"\n', ['type.toml, line 2: train.epochs: expected int, got "3" (a string)']),
    ("type.json", '{"train": {"epochs": 3,\n  "early_stop": 1}}\n',
     ["type.json, line 2: train.early_stop: expected bool, got 1 (an integer)"]),
    ("inline.toml", '[model]\ncell = "fastweights"\ncell_options = {inner_steps = 2, lam = "high"}\n',
     ["inline.toml, line 3: model.cell_options.lam: expected float"]),
    ("literal.toml", '[train]\non_nonfinite = "retry"\n', ["line 2: train.on_nonfinite: expected one of 'stop', 'skip'"]),
    ("range.toml", '[train]\nepochs = 1\nlr = -1.0\n', ["range.toml, line 3: train.lr: lr must be positive"]),
    ("name.toml", '[model]\ntask = "art"\ncell = "gru"\n', ["name.toml, line 3: model.cell: Unknown cell 'gru'"]),
    ("context.toml", '[model]\ninit = "zero"\ncontext = "mlp"\n',
     ["context.toml, line 3: model.context: init 'zero' uses no context network"]),
    ("syntax.toml", '[train]\nepochs = 3x\n', ["syntax.toml, line 2 (train.epochs): invalid TOML"]),
    ("syntax.json", '{"train": {"epochs": 3,\n  "lr": 0.1,}}\n', ["syntax.json, line 2 (train.lr): invalid JSON"]),
    ("list.json", '[1, 2]\n', ["list.json: a config file is an object"]),
    ("config.yaml", 'train: {}\n', ["unknown file type '.yaml'"]),
    # extreme values: each was exit 1 (a RecursionError, Python's 4300-digit limit) or accepted
    ("deep.toml", "[train]\nlr_decay_at = " + "[" * 5000 + "]" * 5000 + "\n", ["deep.toml: invalid TOML: nested too deeply"]),
    ("deep.json", '{"train": {"lr_decay_at": ' + "[" * 100000 + "]" * 100000 + "}}\n",
     ["deep.json: invalid JSON: nested too deeply"]),
    ("huge.json", '{"train": {"lr": 0.1,\n  "epochs": ' + "9" * 5000 + "}}\n",
     ["huge.json, line 2 (train.epochs): invalid JSON: an integer of 5000 digits (at most 40)"]),
    ("huge.toml", "[train]\nepochs = " + "9" * 5000 + "\n",
     ["huge.toml: invalid TOML: an integer of 5000 digits (Python reads at most 4300)"]),
    ("twice.json", '{"train": {"epochs": 2,\n  "epochs": 3}}\n',
     ["twice.json, line 2 (train.epochs): invalid JSON: duplicate key 'epochs'"]),
    ("epochs.toml", f"[train]\nepochs = {2**80}\n", ["epochs.toml, line 2: train.epochs: must be <= 1000000000, got 1208925819614629174706176"]),
    ("epochs.json", f'{{"train": {{"epochs": {2**62}}}}}\n', ["epochs.json, line 1: train.epochs: must be <= 1000000000"]),
    ("batch.toml", f"[train]\nbatch_size = {10**12}\n", ["batch.toml, line 2: train.batch_size: must be <= 1000000000"]),
    ("big.toml", f"[model]\ncell = \"lstm\"\n[model.cell_options]\nhidden_size = {2**64}\n",
     ["big.toml, line 4: model.cell_options.hidden_size: must fit in a 64-bit integer, got a number of 20 digits"]),
]


@pytest.mark.parametrize("name,text,fragments", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_config_files_are_refused_with_file_line_and_key(runner, tmp_path, monkeypatch, name, text, fragments):
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(text)
    result = invoke(runner, ["run", "--config", name, *TINY_ART])
    assert result.exit_code == 2
    for fragment in fragments:
        assert_one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written


def test_missing_config_file_and_config_with_resume_are_refused(runner, tmp_path):
    assert_one_line_error(invoke(runner, ["run", "--config", str(tmp_path / "none.toml")]), "no such file")
    result = invoke(runner, ["run", "--resume", str(tmp_path), "--config", str(tmp_path / "x.toml")])
    assert result.exit_code == 2
    assert_one_line_error(result, "--config cannot be combined with --resume")


def test_toml_without_tomllib_or_tomli_names_the_extra(runner, tmp_path, monkeypatch):
    """Python 3.10 without tomli: one line naming the extra (JSON still works)."""
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    (tmp_path / "a.toml").write_text("[train]\nepochs = 2\n")
    result = invoke(runner, ["run", "--config", str(tmp_path / "a.toml"), "--print-config"])
    assert result.exit_code == 2
    assert_one_line_error(result, "pip install 'tomli>=1.1' (crnn's [toml] extra)")
    (tmp_path / "a.json").write_text('{"train": {"epochs": 2}}')
    assert json.loads(printed(runner, "--config", str(tmp_path / "a.json"), "--print-config"))["train"]["epochs"] == 2


def test_key_line_scans():
    toml = ('# c\n[model]\ncell = "x"\ncell_options = {inner_steps = 2, "lam" = 0.5}\n'
            '[model.task_options]\nsize = 1\n[train]\nlr.x = 2\n')
    lines = toml_key_lines(toml)
    assert lines[("model",)] == 2 and lines[("model", "cell")] == 3
    assert lines[("model", "cell_options", "inner_steps")] == 4 and lines[("model", "cell_options", "lam")] == 4
    assert lines[("model", "task_options", "size")] == 6 and lines[("train", "lr", "x")] == 8
    text = '{\n "model": {"cell": "a:b",\n  "opts": {"k": [1, {"z": 2}],\n   "j\\"q": 3}},\n "train": {}\n}'
    lines = json_key_lines(text)
    assert lines[("model",)] == 2 and lines[("model", "cell")] == 2 and lines[("model", "opts", "k")] == 3
    assert lines[("model", "opts", 'j"q')] == 4 and lines[("train",)] == 5
    assert ("model", "cell", "a") not in lines and ("model", "opts", "k", "z") in lines


# -- examples/configs ---------------------------------------------------------------------------
def documented_equivalent(path: Path) -> list[str]:
    """The flags command an example file says it is the same as (`# same as: crnn run ...`)."""
    found = re.search(r"^# same as: crnn (run .*)$", path.read_text(), flags=re.M)
    assert found, f"{path.name} has no '# same as: crnn run ...' line"
    return shlex.split(found[1])


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"art-quickstart.toml", "art-learned.toml", "lcd-learned.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_is_its_documented_command_and_runs(runner, tmp_path, path):
    """Each example resolves to what its documented flags resolve to, and runs (shrunk like the docs' commands)."""
    assert printed(runner, "--config", str(path), "--print-config") == printed(runner, *documented_equivalent(path)[1:],
                                                                                 "--print-config")
    shrink = ["--epochs", "1", "--set", "train.threads=1", *SHRINK[config_task(path)]]
    result = invoke(runner, ["run", "--config", str(path), *shrink, "-q", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.stderr
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["model"]["task"] == config_task(path) and recorded["train"]["epochs"] == 1
