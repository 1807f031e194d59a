"""``crnn sample``: generate sequences from a trained run (the paper's Figure 6).

The run's model is rebuilt from ``config.json`` and a checkpoint (or from a safetensors file
written by ``crnn export``, see ``weights.py``); the task's
``rollout`` draws ``n`` initial states from the init strategy's distribution
(e.g. ``learned`` with ``distribution=normal``: h0 ~ N(g(context), softplus(sigma)))
and rolls each out autoregressively. Output: JSON (stdout or ``.json``), CSV, or a
PNG of the samples beside the true curve (needs matplotlib: ``pip install 'crnn[plot]'``).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import click

from ..base.errors import ConfigError
from ..plugin_manager.manager import get_plugins
from ..rundirs.loading import load_run
from ..rundirs.rundir import atomic_write_bytes, dumps_json
from ..interfaces.task import Rollout, can_rollout
from ..training.figures import import_pyplot_figure, rollout_figure

OUT_FORMATS = (".json", ".csv", ".png")


class SampleCommand(click.Command):
    """``crnn sample``: its own options plus ``--NAME`` for each generation parameter of the registered tasks.

    The tasks declare their parameters in ``Task.rollout_params``; ``--period 2`` is
    shorthand for ``--param period=2``. A name that clashes with one of the command's own
    options is only reachable through ``--param``.
    """

    @property  # type: ignore[override]
    def params(self) -> list[click.Parameter]:
        # One list per plugin system: click appends to and pops from it (the help option).
        system = get_plugins()
        if self._params_for is not system:
            self._params_for, self._all_params = system, [*self._own_params, *self._task_params()]
        return self._all_params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._own_params = list(value)
        self._params_for: object = None
        self._all_params: list[click.Parameter] = []

    def _task_params(self) -> list[click.Parameter]:
        taken = {name for p in self._own_params for name in (p.name, *p.opts)}
        helps: dict[str, list[str]] = {}
        for entry in get_plugins().registry("tasks"):
            for name, help_text in entry.cls.rollout_params.items():
                helps.setdefault(name, []).append(f"{help_text} ({entry.name})")
        return [
            click.Option([f"--{name.replace('_', '-')}", name], type=float, expose_value=True,
                         help=f"{'; '.join(texts)}; shorthand for --param {name}=VALUE")
            for name, texts in sorted(helps.items())
            if name.isidentifier() and name not in taken and f"--{name.replace('_', '-')}" not in taken
        ]


def parse_params(pairs: tuple[str, ...], shorthands: dict[str, float | None]) -> dict[str, float]:
    """``("period=2", ...)`` plus ``--period``-style shorthands -> ``{"period": 2.0, ...}``."""
    params: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--param expects NAME=VALUE (e.g. period=2.0), got '{pair}'")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--param {pair}: expected a number, got '{value}'") from None
        params[name.strip()] = number
    for name, value in shorthands.items():
        if value is not None:
            params[name] = value
    for name, value in params.items():
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    return params


def rollout_record(result: Rollout) -> dict[str, Any]:
    """Trajectories as plain lists, per feature: ``samples[name][i][t]``, ``reference[name][t]``."""
    samples = {name: result.samples[:, :, d].tolist() for d, name in enumerate(result.names)}
    reference = None
    if result.reference is not None:
        reference = {name: result.reference[:, d].tolist() for d, name in enumerate(result.names)}
    return {"t": list(range(result.samples.shape[1])), "samples": samples, "reference": reference}


def summary_stats(result: Rollout) -> dict[str, float]:
    """Spread of the samples (std over samples, mean over steps) and their error to the reference."""
    stats = {"spread": float(result.samples.std(dim=0, unbiased=False).mean())}
    if result.reference is not None:
        errors = (result.samples - result.reference[None]).pow(2).mean(dim=(1, 2))
        stats["mse_to_reference"] = float(errors.mean())
        stats["mse_to_reference_of_mean"] = float((result.samples.mean(dim=0) - result.reference).pow(2).mean())
    return stats


def write_csv(result: Rollout, path: Path) -> None:
    """Columns ``kind,sample,t,<features>``; the reference rows have kind ``reference`` and no sample."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["kind", "sample", "t", *result.names])
    for i in range(result.samples.shape[0]):
        for t in range(result.samples.shape[1]):
            writer.writerow(["sample", i, t, *(repr(float(v)) for v in result.samples[i, t])])
    if result.reference is not None:
        for t in range(result.reference.shape[0]):
            writer.writerow(["reference", "", t, *(repr(float(v)) for v in result.reference[t])])
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue().encode()))


def write_png(result: Rollout, path: Path, title: str) -> None:
    """:func:`rollout_figure` as a PNG file."""
    fig = rollout_figure(result, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))


SAMPLE_EXAMPLES = """
\b
Examples:
  crnn sample runs/lcd-learned --period 2.0 --x0 3.0 -n 10 --out t2.png
  crnn sample runs/lcd-learned --period 3.0 --x0 3.0 --out t3.json --seed 1
  crnn sample runs/lcd-learned --param period=2.5 --param x0=2.2 --steps 40 --out long.csv
  crnn sample runs/lcd-zero --period 2.0 --x0 3.0 --mean      # deterministic init: one rollout
  crnn sample lcd-learned.safetensors --period 2.0 --x0 3.0    # a file written by crnn export
"""


@click.command(cls=SampleCommand, epilog=SAMPLE_EXAMPLES)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="a generation parameter of the run's task")
@click.option("-n", "--num-samples", "n", type=int, default=10, show_default=True, help="initial states to sample")
@click.option("--steps", type=int, help="steps to generate  [default: the task's sequence length]")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the sampled initial states")
@click.option("--out", type=click.Path(path_type=Path), help="write .json, .csv or .png (default: JSON on stdout)")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True, help="which checkpoint")
@click.option("--mean", "use_mean", is_flag=True, help="one rollout from the mean initial state instead (any init strategy)")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
def sample_command(
    run_dir: Path,
    params: tuple[str, ...],
    n: int,
    steps: int | None,
    seed: int,
    out: Path | None,
    checkpoint: str,
    use_mean: bool,
    device: str,
    **shorthands: float | None,
) -> None:
    """Sample initial states from a trained run and roll them out autoregressively.

    RUN_DIR is a run directory, or a .safetensors file written by `crnn export` (loaded
    without unpickling anything; --checkpoint is then the one it was exported from).

    The generation parameters are the task's (--param NAME=VALUE, or --NAME VALUE). For
    `lcd`, each sample starts at x(0) for the given --x0 and --period; its initial
    hidden state is drawn from the learned distribution, and each step feeds the
    previous value plus the predicted change. Values outside the trained range warn
    (extrapolation) but work. Prints JSON on stdout (the trajectories, or a summary
    when --out is given).
    """
    _check_request(n, steps, out)
    values = parse_params(params, shorthands)
    built, ckpt = load_run(run_dir, checkpoint, device)
    task, model = built.task, built.model
    if not can_rollout(task):
        raise ConfigError(f"task '{built.spec.task}' of {run_dir} cannot generate sequences (it does not implement Task.rollout)")
    if use_mean:
        n = 1
    elif not model.init.can_sample:
        raise ConfigError(
            f"init '{built.spec.init}' of {run_dir} cannot sample initial states: train with "
            f"--init learned --set init.distribution=normal, or pass --mean for one deterministic rollout"
        )
    _check_rollout_memory(model, n, steps)
    import torch

    torch.manual_seed(seed)
    result = task.rollout(model, values, n, steps, sample=not use_mean)
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    meta: dict[str, Any] = {
        "run_dir": str(run_dir),
        "checkpoint": ckpt.get("checkpoint", checkpoint),
        "epoch": ckpt.get("epoch"),
        "task": built.spec.task,
        "init": built.spec.init,
        "params": result.params,
        "n": result.samples.shape[0],
        "steps": result.samples.shape[1] - 1,
        "seed": seed,
        "sampled": not use_mean,
        "names": result.names,
        "warnings": result.warnings,
        **summary_stats(result),
    }
    if out is None:
        click.echo(dumps_json({**meta, **rollout_record(result)}))
        return
    shown = ", ".join(f"{k} = {v:g}" for k, v in result.params.items())
    what = f"{meta['n']} sampled initial states" if not use_mean else "mean initial state"
    write_result(result, meta, out, f"{built.spec.cell} + {built.spec.init} on {built.spec.task}: {shown} ({what})")
    click.echo(dumps_json({"out": str(out), **meta}))


def _check_request(n: int, steps: int | None, out: Path | None) -> None:
    """One-line errors for impossible requests, before any work (a PNG needs matplotlib)."""
    if n <= 0:
        raise ConfigError(f"-n must be positive, got {n}")
    if steps is not None and steps <= 0:
        raise ConfigError(f"--steps must be positive, got {steps}")
    if out is not None and out.suffix.lower() not in OUT_FORMATS:
        raise ConfigError(f"--out {out}: unsupported file type '{out.suffix}' (use {', '.join(OUT_FORMATS)})")
    if out is not None and out.suffix.lower() == ".png":
        import_pyplot_figure()


#: Bytes per generated value: the float tensors a rollout keeps and the value written out as JSON text.
BYTES_PER_VALUE = 64
#: Steps assumed when --steps is not given (the task's own sequence length; LCD's is 25).
DEFAULT_STEPS_ESTIMATE = 100


def _check_rollout_memory(model: Any, n: int, steps: int | None) -> None:
    """Refuse ``-n`` / ``--steps`` that cannot fit in memory, before the rollout allocates:
    each sample carries the cell's state (a few copies) and ``steps + 1`` values."""
    from ..base.resources import FLOAT32, check_memory

    state = sum(math.prod(shape) for shape in model.cell.state_spec().values())
    values = (steps if steps is not None else DEFAULT_STEPS_ESTIMATE) + 1
    check_memory(n * (4 * FLOAT32 * state + BYTES_PER_VALUE * values), f"sampling {n} sequences", "-n / --steps")


def write_result(result: Rollout, meta: dict[str, Any], out: Path, title: str) -> None:
    """Write the rollout to ``out``: JSON (``meta`` and the trajectories), CSV, or a PNG titled ``title``."""
    suffix = out.suffix.lower()
    if suffix == ".json":
        text = dumps_json({**meta, **rollout_record(result)}, indent=1) + "\n"
        atomic_write_bytes(out, lambda f: f.write(text.encode()))
    elif suffix == ".csv":
        write_csv(result, out)
    else:
        write_png(result, out, title)
