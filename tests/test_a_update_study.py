"""benchmarks/a_update_study.py: its key-presence data, its task trained through fit, its JSONL and table."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from crnn_core.base.errors import ConfigError
from crnn_core.interfaces.options import build_options

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "a_update_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("a_update_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_key_presence_data_is_what_the_docstring_says(study):
    data = study.generate_key_presence(4000, 14, 32, seed=3)
    tokens, target = data["tokens"], data["target"]
    assert tokens.shape == (4000, 16) and tokens.dtype == torch.long
    body, mark, query = tokens[:, :14], tokens[:, 14], tokens[:, 15]
    assert bool((mark == 32).all()) and int(body.min()) >= 0 and int(body.max()) < 32 and int(query.max()) < 32
    assert all(len(set(row.tolist())) == 14 for row in body)  # distinct
    present = (body == query[:, None]).any(dim=1).long()
    assert torch.equal(present, target)
    assert 0.45 < target.float().mean().item() < 0.55  # balanced
    hits = body.gather(1, (body == query[:, None]).long().argmax(1, keepdim=True))[target == 1]
    positions = (body == query[:, None]).long().argmax(1)[target == 1]
    assert torch.equal(hits.squeeze(1), query[target == 1]) and len(positions.unique()) == 14  # any position


def test_key_presence_data_is_deterministic_per_seed(study):
    a = study.generate_key_presence(64, 5, 9, seed=1)
    assert torch.equal(a["tokens"], study.generate_key_presence(64, 5, 9, seed=1)["tokens"])
    assert not torch.equal(a["tokens"], study.generate_key_presence(64, 5, 9, seed=2)["tokens"])


def test_key_presence_options_are_checked(study):
    with pytest.raises(ConfigError, match="distinct must be below vocab"):
        build_options(study.KeyPresenceOptions, {"distinct": "14", "vocab": "14"}, "task")
    with pytest.raises(ConfigError, match="train_size"):
        build_options(study.KeyPresenceOptions, {"train_size": "0"}, "task")


def test_first_epoch(study):
    assert study.first_epoch([0.5, 0.91, 0.995], 0.9) == 2
    assert study.first_epoch([0.5, 0.91, 0.995], 0.99) == 3
    assert study.first_epoch([0.5, 0.6], 0.9) is None


def test_keys_runs_through_fit_and_the_summary_reads_them(study, fresh_plugins, tmp_path, capsys):
    out = tmp_path / "out"
    study.main(["--task", "keys", "--seeds", "2", "--epochs", "2", "--hidden", "8", "--out", str(out),
                "--keys-set", "train_size=128", "--keys-set", "val_size=64", "--keys-set", "distinct=4",
                "--keys-set", "vocab=8"])
    runs = [json.loads(line) for line in (out / "keys.jsonl").read_text().splitlines()]
    assert [(r["a_update"], r["seed"]) for r in runs] == [("previous", 0), ("preliminary", 0),
                                                         ("previous", 1), ("preliminary", 1)]
    assert all(len(r["val_accuracy"]) == 2 and all(0 <= v <= 1 for v in r["val_accuracy"]) for r in runs)
    assert runs[0]["val_accuracy"] != runs[1]["val_accuracy"]  # the two updates train different models
    assert "key_presence" in fresh_plugins.registry("tasks").names()
    capsys.readouterr()
    study.main(["--summary", "--out", str(out)])
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 4 and table[2].startswith("| keys | previous | 0, 1 | 2 |")
    assert table[3].startswith("| keys | preliminary | 0, 1 | 2 |")
