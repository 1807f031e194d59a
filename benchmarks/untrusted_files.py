#!/usr/bin/env python
"""Untrusted files (docs/reliability.md): tampered checkpoints, config.json, metrics.jsonl and
plugins.json fed to ``crnn plot``, ``crnn sample``, ``crnn run --resume`` and ``crnn reproduce
--report-only``; forged ``crnn export`` files fed to ``crnn sample``; extreme ``--config`` files and
sizes fed to ``crnn run``. Each case has an expected outcome: refused (exit 2 or 3, one line, no
traceback), or accepted (exit 0, with the warning it must print, and standard JSON on stdout) where
the command does not read what was tampered with or the value is legal. Prints the counts: cases
tried, refused cleanly, accepted correctly, wrong (anything else, listed with the reason).
Not part of the test suite.

    python benchmarks/untrusted_files.py /tmp/untrusted      # ~4 min on 2 idle cores, ~18 under load

Every tampered file is a copy of a finished tiny run (an LCD run that can sample, laid out as a
``crnn reproduce lcd`` grid so that ``--report-only`` reads it too) with one file replaced. No
malicious pickle may run: each one would create a marker file, and the script checks that none exists.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adversary import ENV, PY, TINY, Outcome, run_all, summary  # noqa: E402

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/untrusted").resolve()
MARKER = ROOT / "pwned"
LCD = ["--task", "lcd", "--cell", "lstm", "--init", "learned", "--set", "init.distribution=normal", "--set",
       "task.train_per_period=20", "--set", "task.val_per_period=10", "--set", "train.threads=1", "--epochs", "2",
       "--seed", "0", "-q"]


class Reduce:
    """pickle: GLOBAL + REDUCE (os.mkdir(MARKER)), as torch.save writes it."""

    def __reduce__(self):
        return (os.mkdir, (str(MARKER),))


def pickles() -> dict[str, bytes]:
    """Four kinds of malicious pickle: REDUCE inside torch.save's zip, a bare protocol-2 REDUCE, protocol-0
    INST, and a BUILD/setstate gadget; each would create MARKER."""
    zipped = io.BytesIO()
    torch.save({"format": "crnn-checkpoint-v1", "model": {}, "x": Reduce()}, zipped)
    inst = b"(i" + b"os\nmkdir\n" + b"(S'" + str(MARKER).encode() + b"'\ntb."
    build = b"\x80\x02cos\nmkdir\nq\x00)\x81}b."
    return {"pickle-torch-save-reduce": zipped.getvalue(), "pickle-bare-reduce": pickle.dumps(Reduce(), protocol=2),
            "pickle-inst": inst, "pickle-build": build}


def checkpoint_edits(ckpt: dict, other: dict) -> dict[str, dict]:
    """Tampered copies of a good checkpoint."""
    def edit(**changes):
        return {**ckpt, **changes}

    first = next(iter(ckpt["optimizer"]["state"]))
    bad_opt = {**ckpt["optimizer"], "state": {**ckpt["optimizer"]["state"],
                                              first: {**ckpt["optimizer"]["state"][first], "exp_avg": torch.zeros(3)}}}
    return {"epoch-1e30": edit(epoch=10**30), "epoch-2.7": edit(epoch=2.7), "epoch-negative": edit(epoch=-1),
            "epoch-string": edit(epoch="2"), "nan-epoch-loss": edit(epoch_loss=float("nan")),
            "inf-best": edit(best=float("inf")), "optimizer-wrong-shape": edit(optimizer=bad_opt),
            "optimizer-missing": {k: v for k, v in ckpt.items() if k != "optimizer"},
            "other-model-state-dict": edit(model=other["model"]), "model-a-list": edit(model=[1, 2]),
            "rng-wrong": edit(rng=torch.zeros(3)), "not-a-dict": [1, 2, 3],
            "epoch-1e30-float": edit(epoch=1e30),
            "weights-int64": edit(model={k: v.long() for k, v in ckpt["model"].items()}),
            "weights-bool": edit(model={k: v.bool() for k, v in ckpt["model"].items()}),
            "weights-float64": edit(model={k: v.double() for k, v in ckpt["model"].items()}),
            "weights-float16": edit(model={k: v.half() for k, v in ckpt["model"].items()}),
            "weights-nan": edit(model={k: torch.full_like(v, float("nan")) for k, v in ckpt["model"].items()})}


def config_edits(config: dict) -> dict[str, str]:
    """Tampered config.json texts."""
    def dump(value):
        return json.dumps(value)

    def model(**changes):
        return dump({**config, "model": {**config["model"], **changes}})

    def train(**changes):
        return dump({**config, "train": {**config["train"], **changes}})

    return {"config-not-json": "{oops", "config-a-list": "[1, 2]", "config-empty": "",
            "config-deep-nesting": '{"model": ' + "[" * 100000 + "]" * 100000 + "}",
            "config-cell-int": model(cell=5), "config-cell-unknown": model(cell="nope"),
            "config-options-list": model(cell_options=[1]), "config-hidden-string": model(cell_options={"hidden_size": "x"}),
            "config-hidden-huge": model(cell_options={"hidden_size": 10**12}),
            "config-lr-string": train(lr="fast"), "config-epochs-float": train(epochs=2.5),
            "config-seed-huge": train(seed=10**30), "config-threads-huge": train(threads=10**9),
            "config-train-null": dump({**config, "train": None}), "config-unicode-cell": model(cell="☃"),
            "config-hidden-30000": model(cell_options={**config["model"]["cell_options"], "hidden_size": 30000}),
            "config-duplicate-key": dump(config)[:-1] + ', "train": {}}',
            "config-5000-digits": dump(config).replace('"epochs": 2', '"epochs": ' + "9" * 5000),
            "config-epochs-2**80": train(epochs=2**80)}


def metrics_edits(lines: list[str]) -> dict[str, str]:
    """Tampered metrics.jsonl texts."""
    return {"metrics-array-line": "[1, 2]\n", "metrics-number-line": "3\n", "metrics-string-epoch": '{"epoch": "1"}\n',
            "metrics-null-loss-nan": lines[0].replace('"loss": ', '"loss": NaN, "x": ') + "\n",
            "metrics-not-json": "{oops\n", "metrics-metrics-list": '{"epoch": 1, "step": 4, "metrics": [1]}\n',
            "metrics-deep": "[" * 100000 + "]" * 100000 + "\n", "metrics-binary": "\x00\xff\x00\n"}


def forged_exports(run: Path) -> dict[str, Path]:
    """``crnn export`` of ``run``, and forged copies: a config asking for far more than the weights hold,
    weights of other dtypes or NaN, edited metadata, headers that lie about their size or shapes."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = ROOT / "exports"
    folder.mkdir()
    export = folder / "export.safetensors"
    r = subprocess.run([PY, "-m", "crnn_core", "export", str(run), str(export)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with safe_open(str(export), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    config, plugins, info = (json.loads(meta[k]) for k in ("crnn.config", "crnn.plugins", "crnn.checkpoint"))

    def hidden(n):
        return json.dumps({**config, "model": {**config["model"],
                                              "cell_options": {**config["model"]["cell_options"], "hidden_size": n}}})

    forged: dict[str, tuple[dict, dict] | bytes] = {
        "export-good": (tensors, meta),
        "export-hidden-30000": (tensors, {**meta, "crnn.config": hidden(30000)}),
        "export-hidden-1e6": (tensors, {**meta, "crnn.config": hidden(10**6)}),
        "export-weights-int64": ({k: v.long() for k, v in tensors.items()}, meta),
        "export-weights-bool": ({k: v.bool() for k, v in tensors.items()}, meta),
        "export-weights-float16": ({k: v.half() for k, v in tensors.items()}, meta),
        "export-weights-float64": ({k: v.double() for k, v in tensors.items()}, meta),
        "export-weights-nan": ({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, meta),
        "export-plugins-other-package": (tensors, {**meta, "crnn.plugins": json.dumps(
            {**plugins, "cell": {**plugins["cell"], "package": "crnn-fork", "version": "9.9"}})}),
        "export-epoch-1e30": (tensors, {**meta, "crnn.checkpoint": json.dumps({**info, "epoch": 1e30})}),
        "export-epoch-negative": (tensors, {**meta, "crnn.checkpoint": json.dumps({**info, "epoch": -1})}),
        "export-config-duplicate-key": (tensors, {**meta, "crnn.config": meta["crnn.config"][:-1] + ', "train": {}}'}),
        "export-config-deep": (tensors, {**meta, "crnn.config": "[" * 100000 + "]" * 100000}),
        "export-config-5000-digits": (tensors, {**meta, "crnn.config": meta["crnn.config"].replace(
            '"epochs": 2', '"epochs": ' + "9" * 5000)}),
        "export-header-length-2**62": (2**62).to_bytes(8, "little") + b"{}",
        "export-header-shape-lie": _lying_header(),
        "export-truncated": export.read_bytes()[:export.stat().st_size // 2],
    }
    paths = {}
    for name, content in forged.items():
        path = folder / f"{name}.safetensors"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            save_file(content[0], str(path), metadata=content[1])
        paths[name] = path
    return paths


def _lying_header() -> bytes:
    """A safetensors file whose header declares a 10^5 x 10^5 float32 tensor (40 GB) over 16 bytes of data."""
    header = json.dumps({"__metadata__": {"crnn.format": "crnn-safetensors/1"},
                         "w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4 * 10**10]}}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(16)


def config_files() -> dict[str, tuple[str, str]]:
    """``crnn run --config FILE`` inputs at the extremes: (file suffix, text)."""
    deep = 5000
    return {
        "toml-deep": ("toml", "[train]\nepochs = " + "[" * deep + "]" * deep + "\n"),
        "json-deep": ("json", '{"train": {"epochs": ' + "[" * 100000 + "]" * 100000 + "}}"),
        "toml-5000-digits": ("toml", "[train]\nepochs = " + "9" * 5000 + "\n"),
        "json-5000-digits": ("json", '{"train": {"epochs": ' + "9" * 5000 + "}}"),
        "json-duplicate-key": ("json", '{"train": {"epochs": 1, "epochs": 2}}'),
        "toml-duplicate-key": ("toml", "[train]\nepochs = 1\nepochs = 2\n"),
        "toml-epochs-2**80": ("toml", f"[train]\nepochs = {2**80}\n"),
        "json-epochs-2**80": ("json", f'{{"train": {{"epochs": {2**80}}}}}'),
        "json-batch-size-1e12": ("json", '{"train": {"batch_size": 1000000000000}}'),
        "toml-lstm-hidden-30000": ("toml", '[model]\ncell = "lstm"\n[model.cell_options]\nhidden_size = 30000\n'),
        "toml-head-hidden-1e7": ("toml", '[model]\ntask = "art"\n[model.task_options]\nhead_hidden = 10000000\n'),
        "json-not-an-object": ("json", "[1, 2]"),
        "toml-binary": ("toml", "\x00\xff\x00"),
    }


#: TINY less --epochs and --batch-size, which would override the config file's.
TINY_NO_COUNTS = [a for i, a in enumerate(TINY) if a not in ("--epochs", "--batch-size")
                  and TINY[i - 1] not in ("--epochs", "--batch-size")]

#: Sizes given on the command line that cannot fit in memory: each must be one line before any allocation.
SIZE_SETS = {
    "set-lstm-hidden-30000": ["--cell", "lstm", "--set", "cell.hidden_size=30000"],
    "set-lstm-hidden-1e6": ["--cell", "lstm", "--set", "cell.hidden_size=1000000"],
    "set-fastweights-hidden-30000": ["--cell", "fastweights", "--init", "learned", "--set", "cell.hidden_size=30000"],
    "set-head-hidden-1e7": ["--task", "art", "--set", "task.head_hidden=10000000"],
    "set-embedding-1e7": ["--task", "art", "--set", "task.embedding_size=10000000"],
    "set-context-out-1e9": ["--context", "linear", "--set", "context.out_features=1000000000"],
    "set-epochs-2**80": ["--epochs", str(2**80)],
    "set-epochs-5000-digits": ["--epochs", "9" * 5000],
}

#: The cases that must exit 0, and why; a required stderr fragment where acceptance must warn; the
#: cases where refusing and accepting are both right (``EITHER``). Every other case must be refused. ``reproduce --report-only`` reads no checkpoint, and ``crnn sample``
#: reads only a checkpoint's weights and counters (not its losses, optimizer or RNG state).
WARNS_DTYPE = "loaded as float32"
WARNS_PACKAGE = "crnn-fork"
EITHER = None


def expected_ok(label: str) -> tuple[bool | None, str | None]:
    """(whether ``label`` -- "variant / command" -- must exit 0, or ``EITHER``; the stderr fragment it must print)."""
    name, _, command = label.partition(" / ")
    checkpoint = name.startswith(("pickle-", "epoch-", "nan-", "inf-", "optimizer-", "other-model", "model-a-list",
                                  "rng-", "not-a-dict", "weights-", "no-checkpoints"))
    if command == "reproduce" and checkpoint:
        return True, None  # reads config.json and metrics.jsonl only
    if command == "sample" and name in ("nan-epoch-loss", "inf-best", "optimizer-wrong-shape", "optimizer-missing",
                                        "rng-wrong", "weights-nan", "no-checkpoints", "export-weights-nan"):
        return True, None  # what sample reads is sound (sample reads best.pt; no-checkpoints removes last.pt)
    if name in ("weights-float64", "weights-float16", "export-weights-float64", "export-weights-float16") \
            and command in ("sample", "resume"):
        return True, WARNS_DTYPE
    if name in ("plugins-other-package", "export-plugins-other-package") and command in ("sample", "resume"):
        return True, WARNS_PACKAGE
    if name in ("plugins-other-package", "metrics-null-loss-nan") and command in ("plot", "reproduce"):
        return True, None  # a summary of the runs; NaN losses are read as non-finite values
    if command == "plot" and name.startswith("config-") and name not in (
            "config-not-json", "config-a-list", "config-empty", "config-deep-nesting", "config-train-null",
            "config-duplicate-key", "config-5000-digits"):
        return EITHER, None  # plot reads config.json only to label and group runs: it may refuse a bad value or not
    if name == "config-threads-huge":
        return True, "threads" if command in ("sample", "resume") else None  # lowered to the CPUs, with a warning
    if name == "metrics-null-loss-nan" and command == "resume":
        return True, "has no record of epoch"  # a history with a hole: the run continues, with a warning
    if name == "no-checkpoints" and command == "resume":
        return True, "starts again from its first step"
    if name == "export-good":
        return True, None
    return False, None


def judge(label: str, outcome: Outcome) -> str:
    """"refused" or "accepted" when ``outcome`` is what ``label`` must give, else why it is wrong."""
    ok, warning = expected_ok(label)
    if outcome.kind not in ("ok", "refused"):
        return f"wrong: {outcome.kind}"
    if ok is EITHER and outcome.kind == "refused":
        return "refused"
    if ok is False:
        return "refused" if outcome.kind == "refused" else "wrong: accepted"
    if outcome.kind != "ok":
        return "wrong: refused"
    if warning and warning not in outcome.stderr:
        return f"wrong: no warning containing {warning!r}"
    if outcome.stdout.strip():
        try:
            json.loads(outcome.stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except ValueError as exc:
            return f"wrong: stdout is not standard JSON ({str(exc)[:60]})"
    return "accepted"


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    grid = ROOT / "good"
    good, other = grid / "learned_s0", ROOT / "other"
    for out, extra in ((good, []), (other, ["--set", "cell.hidden_size=20"])):
        r = subprocess.run([PY, "-m", "crnn_core", "run", *LCD, *extra, "--out", str(out)], env=ENV,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    ckpt = torch.load(good / "checkpoints" / "last.pt", weights_only=True)
    other_ckpt = torch.load(other / "checkpoints" / "last.pt", weights_only=True)
    config = json.loads((good / "config.json").read_text())
    metric_lines = (good / "metrics.jsonl").read_text().splitlines()

    variants: dict[str, tuple[str, bytes | None]] = {}
    for name, data in pickles().items():
        variants[name] = ("checkpoints/{which}.pt", data)
    for name, payload in checkpoint_edits(ckpt, other_ckpt).items():
        buf = io.BytesIO()
        torch.save(payload, buf)
        variants[name] = ("checkpoints/{which}.pt", buf.getvalue())
    for name, text in config_edits(config).items():
        variants[name] = ("config.json", text.encode())
    for name, text in metrics_edits(metric_lines).items():
        variants[name] = ("metrics.jsonl", text.encode("utf-8", "surrogateescape"))
    plugins = json.loads((good / "plugins.json").read_text())
    plugins["cell"].update(package="crnn-fork", version="9.9")
    variants["plugins-other-package"] = ("plugins.json", json.dumps(plugins).encode())
    variants["no-checkpoints"] = ("checkpoints/last.pt", None)  # the first-checkpoint window: metrics, no last.pt

    cases, labels = [], []
    for name, (path, data) in variants.items():
        for command in ("plot", "sample", "resume", "reproduce"):
            if path.startswith("checkpoints") and command == "plot":
                continue  # plot reads no checkpoint
            if path == "metrics.jsonl" and command == "sample":
                continue  # sample reads no metrics
            case = ROOT / "cases" / f"{name}-{command}"
            run = case / "learned_s0"
            shutil.copytree(good, run)
            which = "best" if command == "sample" else "last"
            if data is None:
                (run / path.format(which=which)).unlink()
            else:
                (run / path.format(which=which)).write_bytes(data)
            args = {"plot": ["plot", str(run), "--no-png"],
                    "sample": ["sample", str(run), "--period", "2", "--x0", "3", "-n", "2"],
                    "resume": ["run", "--resume", str(run), "--epochs", "3", "-q"],
                    "reproduce": ["reproduce", "lcd", "--report-only", "--out", str(case)]}[command]
            cases.append(args)
            labels.append(f"{name} / {command}")
    for name, path in forged_exports(good).items():
        cases.append(["sample", str(path), "--period", "2", "--x0", "3", "-n", "2"])
        labels.append(f"{name} / sample")
    (ROOT / "configs").mkdir()
    for name, (suffix, text) in config_files().items():
        path = ROOT / "configs" / f"{name}.{suffix}"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        cases.append(["run", "--config", str(path), *TINY_NO_COUNTS, "--out", str(ROOT / "runs" / name)])
        labels.append(f"{name} / run")
    for name, args in SIZE_SETS.items():
        cases.append(["run", *TINY, *args, "--out", str(ROOT / "runs" / name)])
        labels.append(f"{name} / run")
    outcomes = run_all(cases, ROOT, jobs=2, timeout=120)
    verdicts = [judge(label, outcome) for label, outcome in zip(labels, outcomes)]
    result = summary(outcomes)
    result.pop("failures")
    result["cases"] = len(outcomes)
    result["refused_cleanly"] = verdicts.count("refused")
    result["accepted_correctly"] = verdicts.count("accepted")
    result["wrong"] = [f"{label}: {v}: exit {o.code}, {o.peak_gb} GB: {o.last}"
                       for label, v, o in zip(labels, verdicts, outcomes) if v.startswith("wrong")]
    result["accepted"] = [f"{label}: {o.last}" for label, v, o in zip(labels, verdicts, outcomes) if v == "accepted"]
    result["marker_created"] = MARKER.exists()  # a malicious pickle ran code
    print(json.dumps({"command": " ".join(sys.argv), **result}, indent=1))


if __name__ == "__main__":
    main()
