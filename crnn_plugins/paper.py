"""The paper's experiment grids for ``crnn reproduce``: ``art`` (Figure 4, Table 1) and ``lcd`` (Figure 6).

Registered through ``register_experiments``, as a third-party plugin would register its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from crnn_core import ConfigError, hookimpl
from crnn_core.reproduce import Experiment, GridRun, mean_std
from crnn_core.rundir import is_run_dir, read_metrics

ART_THRESHOLDS = (0.9, 0.99, 1.0)


def _reached(records: list[dict[str, Any]], threshold: float) -> tuple[int, float] | None:
    for r in records:
        if r["metrics"].get("accuracy", 0.0) >= threshold:
            return r["epoch"], r["wall_time"]
    return None


def art_table(runs: list[GridRun], inits: list[str], metrics: tuple[str, ...]) -> str:
    """Markdown: per init, epochs and wall time to 90/99/100% accuracy, best accuracy, final NLL."""
    head = ["init", "seeds"]
    for t in ART_THRESHOLDS:
        head += [f"epochs to {t:.0%}", f"seconds to {t:.0%}"]
    head += ["best accuracy", "final NLL", "epochs run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for init in inits:
        records = [read_metrics(r.path / "metrics.jsonl") for r in runs if r.init == init]
        records = [r for r in records if r]
        row = [init, str(len(records))]
        for t in ART_THRESHOLDS:
            hits = [h for h in (_reached(r, t) for r in records) if h is not None]
            suffix = "" if len(hits) == len(records) else f" ({len(hits)}/{len(records)} reached)"
            row += [mean_std([h[0] for h in hits]) + suffix, mean_std([h[1] for h in hits])]
        row += [
            mean_std([max(x["metrics"]["accuracy"] for x in r) for r in records]),
            mean_std([r[-1]["metrics"]["nll"] for r in records]),
            mean_std([r[-1]["epoch"] for r in records]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def lcd_samples(runs: list[GridRun], out: Path) -> list[str]:
    """Figure 6: samples of the first learned run for T = 2.0 and T = 3.0."""
    learned = [r for r in runs if r.init == "learned" and is_run_dir(r.path)]
    if not learned:
        return []
    paths = []
    for period in (2.0, 3.0):
        path = out / f"lcd_samples_T{period:g}.png"
        proc = subprocess.run([sys.executable, "-m", "crnn_core", "sample", str(learned[0].path), "--period", str(period),
                               "--x0", "3.0", "-n", "10", "--out", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"sampling {learned[0].path} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        paths.append(str(path))
    return paths


ART = Experiment(
    name="art",
    description="associative retrieval with fast weights (H=50): zero vs free vs learned initial state (Figure 4, Table 1)",
    task="art",
    cell="fastweights",
    cell_options=("cell.hidden_size=50",),
    inits={"zero": (), "free": (), "learned": ()},
    epochs=200,
    metrics=("nll", "accuracy"),
    table=art_table,
)
LCD = Experiment(
    name="lcd",
    description="linear cosine decay with an LSTM (H=128): zero vs a learned Normal initial state, sampled (Figure 6)",
    task="lcd",
    cell="lstm",
    cell_options=("cell.hidden_size=128",),
    inits={"zero": (), "learned": ("init.distribution=normal", "init.sigma_init=0.25")},
    epochs=65,
    metrics=("squared_error", "rollout_mse"),
    figures=lcd_samples,
)


@hookimpl
def register_experiments(register) -> None:
    register(ART)
    register(LCD)
