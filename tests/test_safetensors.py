"""`crnn export RUN_DIR OUT.safetensors`, and loading such a file (`crnn sample`, `load_run`) without pickle."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

from crnn_core import load_run
from crnn_core.rundirs.weights import FORMAT, read_safetensors

from .conftest import assert_one_line_error, invoke

pytestmark = pytest.mark.usefixtures("thread_count_kept")
needs_safetensors = pytest.mark.skipif(
    importlib.util.find_spec("safetensors") is None,
    reason="safetensors is not installed (pip install -e '.[safetensors]'; .ci/run installs it)")

SAMPLE = ["--period", "2.0", "--x0", "3.0", "-n", "4", "--seed", "5"]


@pytest.fixture(scope="module")
def lcd_run(tmp_path_factory) -> Path:
    """A tiny LCD run with a sampled (normal) learned initial state, two epochs."""
    from click.testing import CliRunner

    run = tmp_path_factory.mktemp("st") / "lcd"
    result = invoke(CliRunner(), ["run", "--cell", "lstm", "--init", "learned", "--task", "lcd", "--epochs", "2",
                                  "--set", "init.distribution=normal", "--set", "cell.hidden_size=16",
                                  "--set", "task.train_per_period=20", "--set", "task.val_per_period=10",
                                  "--set", "train.threads=1", "-q", "--out", str(run)])
    assert result.exit_code == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def exported(lcd_run) -> Path:
    from click.testing import CliRunner

    out = lcd_run.parent / "lcd.safetensors"
    result = invoke(CliRunner(), ["export", str(lcd_run), str(out)])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out) and summary["checkpoint"] == "best" and summary["bytes"] == out.stat().st_size
    return out


def sampled(runner, source: Path) -> dict:
    result = invoke(runner, ["sample", str(source), *SAMPLE])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@needs_safetensors
def test_sampling_from_the_export_equals_sampling_from_the_run(runner, lcd_run, exported):
    from_run, from_file = sampled(runner, lcd_run), sampled(runner, exported)
    assert from_file["samples"] == from_run["samples"] and from_file["reference"] == from_run["reference"]
    assert from_file["epoch"] == from_run["epoch"] == 2 and from_file["checkpoint"] == "best"
    assert from_file["spread"] > 0  # sampled initial states: the rollouts differ


@needs_safetensors
def test_metadata_reads_back(lcd_run, exported):
    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as f:
        raw = f.metadata()
    assert set(raw) == {"crnn.format", "crnn.config", "crnn.plugins", "crnn.checkpoint"}
    assert all(isinstance(v, str) for v in raw.values()) and raw["crnn.format"] == FORMAT
    tensors, documents = read_safetensors(exported)
    assert documents["crnn.config"] == json.loads((lcd_run / "config.json").read_text())
    recorded = json.loads((lcd_run / "plugins.json").read_text())
    assert documents["crnn.plugins"] == recorded  # package and version behind each component
    assert documents["crnn.plugins"]["cell"]["version"] and documents["crnn.plugins"]["cell"]["name"] == "lstm"
    best = torch.load(lcd_run / "checkpoints" / "best.pt", weights_only=True)
    assert documents["crnn.checkpoint"] == {"checkpoint": "best", "epoch": best["epoch"], "step": best["step"]}
    assert tensors.keys() == best["model"].keys() and all(torch.equal(tensors[k], best["model"][k]) for k in tensors)


@needs_safetensors
def test_export_of_the_last_checkpoint_and_load_run(runner, lcd_run, tmp_path):
    out = tmp_path / "last.safetensors"
    assert invoke(runner, ["export", str(lcd_run), str(out), "--checkpoint", "last"]).exit_code == 0
    built, info = load_run(out)
    run_built, ckpt = load_run(lcd_run, checkpoint="last")
    assert info["checkpoint"] == "last" and info["epoch"] == ckpt["epoch"] and not built.model.training
    assert built.spec == run_built.spec
    theirs = run_built.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in built.model.state_dict().items())


@needs_safetensors
def test_loading_never_unpickles(runner, exported, monkeypatch):
    """pickle and torch.load raise while a model is loaded from the file and sampled from."""
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling while loading a safetensors file")

    class NoUnpickler:
        def __init__(self, *args, **kwargs):
            forbidden()

    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    built, info = load_run(exported)
    assert info["epoch"] == 2 and built.spec.cell == "lstm"
    assert sampled(runner, exported)["n"] == 4
    with pytest.raises(AssertionError, match="unpickling"):  # the guard itself works
        torch.load(exported)


def rewritten(source: Path, out: Path, **metadata: str | None) -> Path:
    """``source`` with its metadata changed (a None value removes the key)."""
    from safetensors.torch import save_file

    from safetensors import safe_open

    tensors, _ = read_safetensors(source)
    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata())
    for key, value in metadata.items():
        key = key.replace("_", ".", 1)
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    save_file(tensors, str(out), metadata=meta)
    return out


@needs_safetensors
def test_malformed_files_are_refused(runner, exported, tmp_path):
    from safetensors.torch import save_file

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    plugins = read_safetensors(exported)[1]["crnn.plugins"]
    plugins["cell"].update(name="gru", package="crnn-gru", version="0.3")
    config = read_safetensors(exported)[1]["crnn.config"]
    config["model"]["cell"] = "gru"
    missing = rewritten(exported, tmp_path / "gru.safetensors", crnn_config=json.dumps(config), crnn_plugins=json.dumps(plugins))
    config = read_safetensors(exported)[1]["crnn.config"]
    config["model"]["cell_options"]["hidden_size"] = 8
    misfit = rewritten(exported, tmp_path / "misfit.safetensors", crnn_config=json.dumps(config))
    cases = [
        (junk, "is not a safetensors file"),
        (plain, "is a safetensors file with no crnn metadata"),
        (rewritten(exported, tmp_path / "nocfg.safetensors", crnn_config=None), "lacks a valid 'crnn.config'"),
        (rewritten(exported, tmp_path / "badjson.safetensors", crnn_config="{"), "lacks a valid 'crnn.config'"),
        (rewritten(exported, tmp_path / "badcfg.safetensors", crnn_config="[]"), "is not a valid crnn run config"),
        (rewritten(exported, tmp_path / "v2.safetensors", crnn_format="crnn-safetensors/2"), "format 'crnn-safetensors/2'"),
        (missing, "needs the cell 'gru' from the package crnn-gru 0.3, which is not installed"),
        (misfit, "does not fit this model"),
        (tmp_path / "run-dir-missing", "is not a crnn run directory"),
    ]
    for path, fragment in cases:
        result = invoke(runner, ["sample", str(path), *SAMPLE])
        assert result.exit_code == 2, (path, result.stderr)
        assert_one_line_error(result, fragment)


@needs_safetensors
def test_export_refusals(runner, lcd_run, exported, tmp_path):
    assert_one_line_error(invoke(runner, ["export", str(lcd_run), str(lcd_run / "config.json")]),
                          "must end in .safetensors")
    assert json.loads((lcd_run / "config.json").read_text())["model"]["task"] == "lcd"  # untouched
    assert_one_line_error(invoke(runner, ["export", str(tmp_path / "nope"), str(tmp_path / "x.safetensors")]),
                          "is not a crnn run directory")
    assert_one_line_error(invoke(runner, ["export", str(exported), str(tmp_path / "x.safetensors")]),
                          "crnn export takes a run directory")
    assert not (tmp_path / "x.safetensors").exists()


def test_without_safetensors_one_line_names_the_extra(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    (tmp_path / "w.safetensors").write_bytes(b"x")
    for args in (["sample", str(tmp_path / "w.safetensors"), *SAMPLE],
                 ["export", str(tmp_path), str(tmp_path / "o.safetensors")]):
        result = invoke(runner, args)
        assert result.exit_code == 2
        assert_one_line_error(result, "pip install 'safetensors>=0.4' (crnn's [safetensors] extra)")


@needs_safetensors
def test_sizes_in_the_metadata_are_checked_against_the_header_before_anything_is_built(
        runner, lcd_run, exported, tmp_path, monkeypatch):
    """A file whose config asks for a far larger model than its tensors (a 30000-unit fastweights
    cell next to 16-unit weights built that model, 14 GB, before refusing it) is refused from the
    shapes in its header: the real model is never built and no tensor is read."""
    import crnn_core.layers.model
    import crnn_core.rundirs.loading
    import crnn_core.rundirs.weights

    config = read_safetensors(exported)[1]["crnn.config"]
    config["model"]["cell_options"]["hidden_size"] = 2000
    forged = rewritten(exported, tmp_path / "forged.safetensors", crnn_config=json.dumps(config))
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "checkpoints").mkdir()
    (edited / "checkpoints" / "best.pt").write_bytes((lcd_run / "checkpoints" / "best.pt").read_bytes())
    (edited / "config.json").write_text(json.dumps({**json.loads((lcd_run / "config.json").read_text()),
                                                    "model": config["model"]}))

    def never(*args, **kwargs):
        raise AssertionError("the model was built before its weights were checked")

    monkeypatch.setattr(crnn_core.rundirs.weights, "build_model", never)
    monkeypatch.setattr(crnn_core.rundirs.weights, "_read_tensors", never)
    monkeypatch.setattr(crnn_core.rundirs.loading, "build_model", never)
    for source in (forged, edited):
        result = invoke(runner, ["sample", str(source), *SAMPLE])
        assert result.exit_code == 2, result.stderr
        assert_one_line_error(result, "does not fit this model: 11 shapes differ (task_module.out.weight: "
                                      "checkpoint [1, 16], model [1, 2000]")
    monkeypatch.undo()
    assert load_run(exported)[0].spec.cell_options["hidden_size"] == 16  # the check passes a file that fits


@needs_safetensors
def test_weights_of_another_dtype_are_refused_or_warned_about(runner, lcd_run, exported, tmp_path):
    """Integers and booleans are no weights: refused. float64 / float16 are loaded as float32 with
    one warning (both were cast without a word)."""
    from safetensors.torch import save_file

    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = read_safetensors(exported)[0]
    for dtype, fragment in ((torch.int64, "is stored as torch.int64, not a floating-point type"),
                            (torch.bool, "is stored as torch.bool, not a floating-point type")):
        path = tmp_path / f"{dtype}.safetensors".replace("torch.", "")
        save_file({k: v.to(dtype) for k, v in tensors.items()}, str(path), metadata=meta)
        assert_one_line_error(invoke(runner, ["sample", str(path), *SAMPLE]), fragment)
        run = tmp_path / f"run-{dtype}".replace("torch.", "")
        run.mkdir()
        (run / "checkpoints").mkdir()
        (run / "config.json").write_bytes((lcd_run / "config.json").read_bytes())
        ckpt = torch.load(lcd_run / "checkpoints" / "best.pt", weights_only=True)
        ckpt["model"] = {k: v.to(dtype) for k, v in ckpt["model"].items()}
        torch.save(ckpt, run / "checkpoints" / "best.pt")
        assert_one_line_error(invoke(runner, ["sample", str(run), *SAMPLE]), fragment)
        (run / "checkpoints" / "last.pt").write_bytes((run / "checkpoints" / "best.pt").read_bytes())
        assert_one_line_error(invoke(runner, ["run", "--resume", str(run), "--epochs", "3", "-q"]), fragment)
    path = tmp_path / "f64.safetensors"
    save_file({k: v.double() for k, v in tensors.items()}, str(path), metadata=meta)
    result = invoke(runner, ["sample", str(path), *SAMPLE])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "loaded as float32" in line]
    assert len(warnings) == 1 and "tensor(s) stored as torch.float64" in warnings[0]
    assert json.loads(result.stdout)["samples"] == sampled(runner, exported)["samples"]  # the same weights
