"""``crnn plot``: validation curves of one or several runs, grouped over seeds.

Runs whose configurations agree except for the seed (and settings that do not change
results: epochs, device, threads, eval batch size, early stop) form one group; each
group is drawn as the mean over its seeds with a shaded spread (one standard
deviation by default, or min-max). The curves are also printed as JSON on stdout.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import click

from ..base.env import install_command
from ..base.errors import ConfigError
from ..interfaces.kinds import KINDS
from ..rundirs.run import RESUMABLE_CHANGES, RunConfig, component_defaults
from .stats import summary
from ..rundirs.rundir import atomic_write_bytes, dumps_json, is_run_dir, read_metrics

#: TrainConfig fields that do not define a configuration for grouping: the seed, and those a resume may change.
NOT_CONFIG = ("seed", *RESUMABLE_CHANGES)


def expand_runs(paths: tuple[Path, ...]) -> list[Path]:
    """Run directories from the arguments; a directory of runs stands for the runs inside it."""
    if not paths:
        raise ConfigError("give at least one run directory (e.g. crnn plot runs/a runs/b)")
    runs: list[Path] = []
    for path in paths:
        if is_run_dir(path):
            runs.append(path)
            continue
        inner = sorted(p for p in path.iterdir() if is_run_dir(p)) if path.is_dir() else []
        if not inner:
            raise ConfigError(f"{path} is not a crnn run directory (no config.json) and holds no runs")
        runs.extend(inner)
    return runs


def group_key(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration a run belongs to: its model and training options less the seed."""
    train = {k: v for k, v in config.get("train", {}).items() if k not in NOT_CONFIG}
    return {"model": config.get("model", {}), "train": train}


def _flatten(key: dict[str, Any]) -> dict[str, Any]:
    model, flat = key["model"], {}
    for kind in KINDS:
        if kind.scope != "task":
            flat[kind.scope] = model.get(kind.scope)
    for kind in KINDS:
        scope = kind.scope
        for name, value in (model.get(f"{scope}_options") or {}).items():
            flat[f"{scope}.{name}"] = value
    for name, value in key["train"].items():
        flat[f"train.{name}"] = value
    return flat


def labels_for(keys: list[dict[str, Any]]) -> list[str]:
    """Short labels: cell/init, options of cell/init/context changed from their defaults, and
    task/train options that differ between the groups."""
    flats = [_flatten(k) for k in keys]
    shared = set.intersection(*(set(f) for f in flats)) if flats else set()
    differing = sorted(k for k in shared if len({json.dumps(f[k]) for f in flats}) > 1)
    labels = []
    for key, flat in zip(keys, flats):
        parts = [f"{flat['cell']}/{flat['init']}"]
        model = key["model"]
        for scope in (k.scope for k in KINDS if k.scope != "task"):  # the task is in the title, not the label
            defaults = component_defaults(scope, model.get(scope))
            for name, value in sorted((model.get(f"{scope}_options") or {}).items()):
                if name in defaults and defaults[name] != value:
                    parts.append(f"{scope}.{name}={value}")
        for name in differing:
            if name.startswith(("task.", "train.")):
                parts.append(f"{name}={flat[name]}")
        labels.append(" ".join(parts))
    return labels


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    if metric in ("loss", "train_loss"):
        value = record.get(metric)
    else:
        value = (record.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def task_class(config: dict[str, Any]) -> type | None:
    """The registered class of a run's task (None if it cannot be looked up)."""
    try:
        from ..plugin_manager.manager import get_plugins

        return get_plugins().registry("tasks").get(config["model"]["task"]).cls
    except Exception:  # noqa: BLE001 - an uninstalled plugin: fall back to the loss, lower is better
        return None


def collect(runs: list[Path], metric: str | None) -> tuple[str, list[dict[str, Any]], bool]:
    """Group the runs and aggregate their validation curves: (metric, groups, higher_is_better)."""
    configs = {run: RunConfig.load(run).to_json() for run in runs}
    task = task_class(configs[runs[0]])
    metric = metric or (task.best_metric if task is not None else "loss")
    higher = task is not None and task.is_higher_better(metric)
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = group_key(configs[run])
        records = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split", "val") == "val"]
        series = {int(r["epoch"]): v for r in records if (v := metric_value(r, metric)) is not None and "epoch" in r}
        if not series:
            available = sorted({"loss", "train_loss", *(k for r in records for k in (r.get("metrics") or {}))})
            if not records:
                raise ConfigError(f"{run} has no validation records yet (metrics.jsonl is empty or missing)")
            raise ConfigError(f"{run} has no metric '{metric}' (available: {', '.join(available)})")
        group = groups.setdefault(json.dumps(key, sort_keys=True), {"key": key, "runs": [], "seeds": [], "series": []})
        group["runs"].append(str(run))
        group["seeds"].append(configs[run].get("train", {}).get("seed"))
        group["series"].append(series)
    out = []
    for label, group in zip(labels_for([g["key"] for g in groups.values()]), groups.values()):
        epochs = sorted(set().union(*group["series"]))
        points = [{"epoch": e, **summary([s[e] for s in group["series"] if e in s])} for e in epochs]
        finals = [s[max(s)] for s in group["series"]]
        bests = [max(s.values()) if higher else min(s.values()) for s in group["series"]]
        out.append({
            "label": label,
            "runs": group["runs"],
            "seeds": group["seeds"],
            "final": summary(finals),
            "best": summary(bests),
            "curve": points,
        })
    return metric, out, higher


def default_logy(groups: list[dict[str, Any]], higher: bool) -> bool:
    """A log y axis for a lower-is-better metric whose every point is positive (losses, errors)."""
    return not higher and all(p["min"] > 0 for g in groups for p in g["curve"])


def draw(metric: str, groups: list[dict[str, Any]], out: Path, spread: str, logy: bool, title: str | None) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"drawing needs matplotlib, an optional extra: {install_command('plot')}, "
                          f"or --no-png for JSON only") from None
    fig = Figure(figsize=(7.0, 4.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    for i, group in enumerate(groups):
        color = f"C{i % 10}"
        epochs = [p["epoch"] for p in group["curve"]]
        mean = [p["mean"] for p in group["curve"]]
        seeds = len(group["runs"])
        ax.plot(epochs, mean, color=color, linewidth=1.6, label=f"{group['label']} ({seeds} seed{'s' if seeds != 1 else ''})")
        if spread != "none" and seeds > 1:
            if spread == "std":
                low = [p["mean"] - p["std"] for p in group["curve"]]
                high = [p["mean"] + p["std"] for p in group["curve"]]
                if logy:
                    low = [max(v, p["min"]) for v, p in zip(low, group["curve"])]
            else:
                low = [p["min"] for p in group["curve"]]
                high = [p["max"] for p in group["curve"]]
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize="small")
    band = {"std": "mean ± 1 std over seeds", "minmax": "mean and min-max over seeds", "none": "mean over seeds"}[spread]
    ax.set_title(title or f"validation {metric} ({band})", fontsize="medium")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(out, lambda f: f.write(buffer.getvalue()))


PLOT_EXAMPLES = """
\b
Examples:
  crnn plot runs/lcd-zero runs/lcd-learned --out lcd.png
  crnn plot runs/art-grid/ --metric accuracy --spread minmax --out art.png
  crnn plot runs/one-run                       # writes runs/one-run/plots/val_<metric>.png
  crnn plot runs/a runs/b --no-png             # the aggregated curves as JSON only
"""


@click.command(epilog=PLOT_EXAMPLES)
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--metric", help="validation metric: loss, train_loss or a metric name  [default: the task's best metric]")
@click.option("--out", type=click.Path(path_type=Path), help="PNG file  [default: RUN/plots/val_<metric>.png for one run, ./val_<metric>.png for several]")
@click.option("--spread", type=click.Choice(["std", "minmax", "none"]), default="std", show_default=True, help="band drawn around the mean over seeds")
@click.option("--logy/--linear", default=None, help="log or linear y axis  [default: log for metrics where lower is better]")
@click.option("--title", help="figure title")
@click.option("--no-png", is_flag=True, help="only print the curves as JSON; draw nothing")
def plot_command(
    run_dirs: tuple[Path, ...],
    metric: str | None,
    out: Path | None,
    spread: str,
    logy: bool | None,
    title: str | None,
    no_png: bool,
) -> None:
    """Plot validation curves from metrics.jsonl of one or several runs.

    Runs with the same configuration except the seed are one curve: the mean over
    seeds with a shaded spread. Prints the aggregated curves as JSON on stdout.
    """
    if out is not None and out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: plots are written as .png")
    runs = expand_runs(run_dirs)
    metric, groups, higher = collect(runs, metric)
    if logy is None:
        logy = default_logy(groups, higher)
    if out is None and not no_png:
        out = (runs[0] / "plots" if len(runs) == 1 else Path(".")) / f"val_{metric}.png"
    if not no_png:
        assert out is not None
        draw(metric, groups, out, spread, logy, title)
    click.echo(dumps_json({"out": None if no_png else str(out), "metric": metric, "groups": groups}))
