#!/usr/bin/env python
"""Untrusted files (docs/reliability.md): tampered checkpoints, config.json and
metrics.jsonl fed to ``crnn plot``, ``crnn sample``, ``crnn run --resume`` and ``crnn reproduce
--report-only``; counts how many are refused cleanly (exit 2, one line, no traceback) and lists the
rest. Not part of the test suite (a few minutes).

    python benchmarks/untrusted_files.py /tmp/untrusted      # ~4 min on 2 cores

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
from adversary import ENV, PY, run_all, summary  # noqa: E402

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
            "weights-float64": edit(model={k: v.double() for k, v in ckpt["model"].items()})}


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


def forged_export(run: Path) -> Path:
    """``crnn export`` of ``run`` whose metadata config asks for a 30000-unit cell beside its 16-unit weights."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    export = ROOT / "export.safetensors"
    r = subprocess.run([PY, "-m", "crnn_core", "export", str(run), str(export)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with safe_open(str(export), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["crnn.config"])
    config["model"]["cell_options"]["hidden_size"] = 30000
    forged = ROOT / "forged.safetensors"
    save_file(tensors, str(forged), metadata={**meta, "crnn.config": json.dumps(config)})
    return forged


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
    cases.append(["sample", str(forged_export(good)), "--period", "2", "--x0", "3", "-n", "2"])
    labels.append("safetensors-hidden-30000 / sample")
    outcomes = run_all(cases, ROOT, jobs=2, timeout=120)
    for label, outcome in zip(labels, outcomes):
        outcome.extra["case"] = label
    result = summary(outcomes)
    result["not_refused"] = [f"{o.extra['case']}: {o.kind} exit {o.code}: {o.last}" for o in outcomes if o.kind != "refused"]
    result.pop("failures")
    result["marker_created"] = MARKER.exists()  # a malicious pickle ran code
    print(json.dumps({"command": " ".join(sys.argv), **result}, indent=1))


if __name__ == "__main__":
    main()
