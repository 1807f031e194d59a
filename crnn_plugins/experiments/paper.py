"""The paper's experiment grids for ``crnn reproduce``: ``art`` (Figure 4, Table 1) and ``lcd`` (Figure 6).

ART has named variants (``--variant``): ``authors`` (every choice of the authors' code),
``lr-decay`` and ``resample`` (the training recipes of the study in docs/results.md). The tables and
the ART error figure come from :mod:`crnn_plugins.experiments.study`.

Registered through ``register_experiments``, as a third-party plugin would register its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from crnn_core import ConfigError, hookimpl
from crnn_core.experiments.reproduce import Experiment, GridRun
from crnn_core.rundirs.rundir import is_run_dir

from .study import art_error_figure, art_study_table, lcd_study_table

#: The paper authors' choices (fomorians/contextual_rnn) where crnn's defaults differ, as one
#: preset: ``crnn reproduce art --variant authors``. docs/results.md lists every difference.
AUTHORS_ART = ("cell.a_update=preliminary", "cell.ln_eps=1e-12", "cell.bias_init=glorot_uniform",
               "task.key_letters=25", "task.embedding_init=zeros", "task.head_init=variance_scaling")
#: The training recipes of the study in docs/results.md: a step decay of the learning
#: rate (1e-3, then 1e-4 after epoch 10 and 1e-5 after epoch 30), and a fresh training set each epoch.
LR_DECAY = ("train.lr_decay_at=10,30", "train.lr_decay_factor=0.1")
RESAMPLE = ("task.resample_train=true",)

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
    table=art_study_table,
    figures=art_error_figure,
    variants={"authors": AUTHORS_ART, "lr-decay": LR_DECAY, "resample": RESAMPLE},
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
    table=lcd_study_table,
    figures=lcd_samples,
)


@hookimpl
def register_experiments(register) -> None:
    register(ART)
    register(LCD)
