"""Reports of the paper's grids with intervals and rank tests: ART and LCD tables, the ART error figure.

ART, per init: epochs and steps to 99% and 100% validation accuracy (mean and 95%
bootstrap interval over the seeds that reached it), the fraction of runs that reached
it, and two-sided Mann-Whitney U tests of learned vs zero and learned vs free on the
epochs to each threshold, a run that never reached it counting as infinitely slow (it
ranks last, tied with the others that never did). The figure draws the validation
error rate 1 - accuracy on a log scale, mean and 95% bootstrap band over seeds; a run
that stopped early (at 100%) keeps its last value, and an error rate of zero is drawn at
half an error (0.5 / validation size) so that the log scale can show it.

LCD, per init: final validation error and rollout error with 95% bootstrap intervals,
and, for every run that can generate, ``SAMPLES`` sampled trajectories per requested
period: their spread (the standard deviation across samples, averaged over time) and the
period fidelity, |dominant period - requested period|, the dominant period found by a
least-squares periodogram (:func:`dominant_period`); the same measure on the true curve
is shown as the method's own floor (zero up to the grid step).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from crnn_core import ConfigError
from crnn_core.base.env import install_command
from crnn_core.experiments.reproduce import GridRun, parse_run_name
from crnn_core.rundirs.rundir import read_metrics
from crnn_core.experiments.stats import bootstrap_ci, format_ci, mann_whitney_u

STUDY_THRESHOLDS = (0.99, 1.0)
#: Samples per requested period for the LCD diversity and period measures, and the periods/x0 asked for.
SAMPLES = 20
LCD_PERIODS = (2.0, 3.0)
LCD_X0 = 3.0


def reached(records: list[dict[str, Any]], threshold: float) -> tuple[int, int] | None:
    """(epoch, step) of the first validation record with accuracy >= threshold, or None."""
    for r in records:
        if r["metrics"].get("accuracy", 0.0) >= threshold:
            return int(r["epoch"]), int(r["step"])
    return None


def _records_by_init(runs: list[GridRun], inits: list[str]) -> dict[str, list[list[dict[str, Any]]]]:
    out = {}
    for init in inits:
        records = [read_metrics(r.path / "metrics.jsonl") for r in runs if r.init == init]
        out[init] = [r for r in records if r]
    return out


def _p_value(a: list[float], b: list[float]) -> str:
    if not a or not b:
        return "—"
    test = mann_whitney_u(a, b)
    return f"{test.p:.3g} (U={test.u:g}, {test.method})"


def art_study_table(runs: list[GridRun], inits: list[str], metrics: tuple[str, ...]) -> str:
    """Markdown: the per-init table with intervals, then the rank tests of learned against the others."""
    by_init = _records_by_init(runs, inits)
    head = ["init", "seeds"]
    for t in STUDY_THRESHOLDS:
        head += [f"reached {t:.0%}", f"epochs to {t:.0%}", f"steps to {t:.0%}"]
    head += ["best accuracy", "final NLL", "epochs run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for init in inits:
        records = by_init[init]
        row = [init, str(len(records))]
        for t in STUDY_THRESHOLDS:
            hits = [h for h in (reached(r, t) for r in records) if h is not None]
            row += [f"{len(hits)}/{len(records)}", format_ci([h[0] for h in hits]),
                    format_ci([h[1] for h in hits], digits=6)]
        row += [format_ci([max(x["metrics"]["accuracy"] for x in r) for r in records], digits=5),
                format_ci([r[-1]["metrics"]["nll"] for r in records]),
                format_ci([r[-1]["epoch"] for r in records])]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Mann-Whitney U, two-sided, on the epochs to each threshold (never reached = slowest):", ""]
    others = [i for i in ("zero", "free") if i in by_init]
    if "learned" in by_init and others:
        head = ["threshold", *[f"learned vs {o}: p" for o in others]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for t in STUDY_THRESHOLDS:
            def epochs(init: str) -> list[float]:
                return [float(h[0]) if (h := reached(r, t)) else math.inf for r in by_init[init]]

            lines.append("| " + " | ".join([f"{t:.0%}", *[_p_value(epochs("learned"), epochs(o)) for o in others]]) + " |")
    else:
        lines.append("(needs the learned init and zero or free)")
    return "\n".join(lines) + "\n"


def error_curves(records: list[list[dict[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
    """Epochs 1..E and the error-rate matrix [seeds, E]; a run that ended early keeps its last value."""
    last = max(r[-1]["epoch"] for r in records)
    epochs = np.arange(1, last + 1)
    curves = np.empty((len(records), last))
    for i, r in enumerate(records):
        by_epoch = {int(x["epoch"]): 1.0 - x["metrics"]["accuracy"] for x in r}
        value = math.nan
        for j, e in enumerate(epochs):
            value = by_epoch.get(int(e), value)
            curves[i, j] = value
    return epochs, curves


def _draw_error_bands(ax: Any, runs: list[GridRun], floor: float) -> bool:
    """Per init, the mean validation error rate and its 95% bootstrap band on ``ax``; False if nothing to draw."""
    inits = list(dict.fromkeys(r.init for r in runs))
    by_init = _records_by_init(runs, inits)
    drawn = False
    for i, init in enumerate(inits):
        if not by_init[init]:
            continue
        epochs, curves = error_curves(by_init[init])
        curves = np.maximum(curves, floor)
        mean = np.nanmean(curves, axis=0)
        bands = [bootstrap_ci(c[~np.isnan(c)].tolist(), n_boot=2000) for c in curves.T]
        low = [b[0] if b else m for b, m in zip(bands, mean)]
        high = [b[1] if b else m for b, m in zip(bands, mean)]
        color = f"C{i % 10}"
        ax.plot(epochs, mean, color=color, linewidth=1.6, label=f"{init} ({curves.shape[0]} seeds)")
        ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.axhline(floor, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation error rate (1 - accuracy)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize="small")
    return drawn


def _figure(size: tuple[float, float], panels: int = 1) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"drawing needs matplotlib, an optional extra: {install_command('plot')}") from None
    fig = Figure(figsize=size, dpi=120, layout="constrained")
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def art_error_figure(runs: list[GridRun], out: Path) -> list[str]:
    """The validation error rate on a log scale, mean and 95% bootstrap band over seeds, per init."""
    val_size = _val_size(runs)
    fig, (ax,) = _figure((7.0, 4.2))
    if not _draw_error_bands(ax, runs, 0.5 / val_size if val_size else 1e-6):
        return []
    ax.set_title("ART: validation error rate (mean, 95% bootstrap band over seeds; dotted: 0 errors)", fontsize="medium")
    path = out / "art_val_error_rate.png"
    fig.savefig(path, format="png")
    return [str(path)]


def grid_runs(grid: Path) -> list[GridRun]:
    """The runs of a grid directory, from their ``<init>_s<seed>`` names (in seed, then init order)."""
    runs = []
    for path in sorted(grid.glob("*_s*")):
        parsed = parse_run_name(path.name)
        if parsed and path.is_dir() and (path / "metrics.jsonl").is_file():
            runs.append(GridRun(*parsed, path, []))
    order = {init: i for i, init in enumerate(("zero", "free", "learned"))}
    return sorted(runs, key=lambda r: (r.seed, order.get(r.init, len(order)), r.init))


def arms_table(arms: dict[str, Path]) -> str:
    """Markdown: one row per arm and init (fraction reaching 99% / 100%, epochs and steps to them with
    95% bootstrap intervals), then the Mann-Whitney p-values of learned against zero and free per arm."""
    head = ["arm", "init", "runs", "reached 99%", "epochs to 99%", "reached 100%", "epochs to 100%",
            "steps to 100%", "best accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    tests = ["| arm | threshold | learned vs zero: p | learned vs free: p |", "|---|---|---|---|"]
    for arm, grid in arms.items():
        runs = grid_runs(grid)
        inits = list(dict.fromkeys(r.init for r in runs))
        by_init = _records_by_init(runs, inits)
        for init in inits:
            records = by_init[init]
            hits = {t: [h for h in (reached(r, t) for r in records) if h is not None] for t in STUDY_THRESHOLDS}
            lines.append("| " + " | ".join([
                arm, init, str(len(records)),
                f"{len(hits[0.99])}/{len(records)}", format_ci([h[0] for h in hits[0.99]]),
                f"{len(hits[1.0])}/{len(records)}", format_ci([h[0] for h in hits[1.0]]),
                format_ci([h[1] for h in hits[1.0]], digits=6),
                format_ci([max(x["metrics"]["accuracy"] for x in r) for r in records], digits=5)]) + " |")
        for t in STUDY_THRESHOLDS:
            def epochs(init: str) -> list[float]:
                return [float(h[0]) if (h := reached(r, t)) else math.inf for r in by_init.get(init, [])]

            tests.append(f"| {arm} | {t:.0%} | {_p_value(epochs('learned'), epochs('zero'))} | "
                         f"{_p_value(epochs('learned'), epochs('free'))} |")
    return "\n".join(lines) + "\n\nMann-Whitney U, two-sided, on the epochs to each threshold " \
        "(never reached = slowest):\n\n" + "\n".join(tests) + "\n"


def arms_figure(arms: dict[str, Path], path: Path) -> str:
    """One panel per arm: the validation error rate per init (log scale, mean and 95% bootstrap band)."""
    fig, axes = _figure((4.2 * len(arms), 4.0), panels=len(arms))
    for ax, (arm, grid) in zip(axes, arms.items()):
        runs = grid_runs(grid)
        val_size = _val_size(runs)
        _draw_error_bands(ax, runs, 0.5 / val_size if val_size else 1e-6)
        ax.set_title(arm, fontsize="medium")
    fig.suptitle("ART validation error rate per arm (mean, 95% bootstrap band over seeds; dotted: 0 errors)",
                 fontsize="medium")
    fig.savefig(path, format="png")
    return str(path)


def main(argv: list[str] | None = None) -> None:
    """``python -m crnn_plugins.experiments.study OUT.png ARM=GRID_DIR ...``: the four-arm table (stdout) and figure."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or any("=" not in a for a in args[1:]):
        raise SystemExit("usage: python -m crnn_plugins.experiments.study OUT.png ARM=GRID_DIR [ARM=GRID_DIR ...]")
    arms = {name: Path(grid) for name, grid in (a.split("=", 1) for a in args[1:])}
    missing = [str(g) for g in arms.values() if not grid_runs(g)]
    if missing:
        raise SystemExit(f"no runs with metrics in {', '.join(missing)}")
    sys.stdout.write(arms_table(arms) + "\n" + arms_figure(arms, Path(args[0])) + "\n")


def _val_size(runs: list[GridRun]) -> int | None:
    from crnn_core.rundirs.run import RunConfig

    for r in runs:
        try:
            return int(RunConfig.load(r.path).model.task_options.get("val_size"))
        except (ConfigError, TypeError, ValueError):
            continue
    return None


#: Candidate periods of the periodogram (cycles per t_f): the training range 0.5..4.5 with margin.
PERIOD_GRID = np.arange(0.1, 8.0 + 1e-9, 0.005)


@functools.lru_cache(maxsize=8)
def _residual_projections(length: int, tf: float) -> np.ndarray:
    """[len(PERIOD_GRID), L, L]: I - B B^+ for the periodogram basis B of each candidate period."""
    t = np.arange(length, dtype=float)
    w = 2.0 * math.pi * PERIOD_GRID[:, None] * t[None, :] / tf  # [G, L]
    c, s = np.cos(w), np.sin(w)
    ones = np.ones_like(c)
    basis = np.stack([ones, ones * t, c, s, t * c, t * s], axis=2)  # [G, L, 6]
    return np.eye(length)[None] - basis @ np.linalg.pinv(basis)


def dominant_periods(xs: np.ndarray, tf: float) -> np.ndarray:
    """The dominant LCD period (cycles per ``tf`` steps) of each trajectory ``xs [n, L]`` (t = 0, 1, ...).

    A least-squares periodogram: for each candidate period T of ``PERIOD_GRID``, x is fitted
    by [1, t, cos, sin, t cos, t sin] of 2 pi T t / tf (a trend plus a linearly decaying
    oscillation, the shape of the LCD formula), and the T with the smallest residual wins.
    The plain FFT peak of 26 samples is too coarse for this (off by up to 0.6 at T <= 1);
    this fit recovers the period of the true curve exactly (to the grid step).
    """
    xs = np.atleast_2d(np.asarray(xs, dtype=float))
    proj = _residual_projections(xs.shape[1], float(tf))
    resid = np.einsum("gij,nj->gni", proj, xs)
    rss = (resid**2).sum(axis=2)  # [G, n]
    return PERIOD_GRID[np.argmin(rss, axis=0)]


def dominant_period(x: np.ndarray, tf: float) -> float:
    """:func:`dominant_periods` of one trajectory."""
    return float(dominant_periods(np.asarray(x)[None], tf)[0])


def lcd_sample_measures(run_dir: Path, periods: tuple[float, ...] = LCD_PERIODS, n: int = SAMPLES) -> dict[str, float]:
    """Spread and period error of ``n`` samples per period from a run's best checkpoint (see the module docstring)."""
    import torch

    from crnn_core.rundirs.loading import load_run

    built, _ = load_run(run_dir)
    tf = float(built.task.options.tf)
    spread, err, ref_err = [], [], []
    torch.manual_seed(0)
    for period in periods:
        result = built.task.rollout(built.model, {"period": period, "x0": LCD_X0}, n,
                                    sample=built.model.init.can_sample)  # the mean n times for an init with no distribution
        samples = result.samples[..., 0].double().numpy()
        spread.append(float(samples.std(axis=0).mean()))
        err += np.abs(dominant_periods(samples, tf) - period).tolist()
        ref_err.append(abs(dominant_period(result.reference[:, 0].double().numpy(), tf) - period))
    return {"spread": float(np.mean(spread)), "period_error": float(np.mean(err)),
            "reference_period_error": float(np.mean(ref_err))}


def lcd_study_table(runs: list[GridRun], inits: list[str], metrics: tuple[str, ...]) -> str:
    """Markdown: per init, final errors with 95% bootstrap intervals and the sample measures."""
    from crnn_core.rundirs.rundir import is_run_dir

    head = ["init", "seeds", *[f"final {m}" for m in metrics], "sample spread", "period error", "true-curve period error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for init in inits:
        done = [g for g in runs if g.init == init and is_run_dir(g.path) and read_metrics(g.path / "metrics.jsonl")]
        records = [read_metrics(g.path / "metrics.jsonl") for g in done]
        row = [init, str(len(records))]
        row += [format_ci([r[-1]["metrics"][m] for r in records if m in r[-1]["metrics"]]) for m in metrics]
        measures = [lcd_sample_measures(g.path) for g in done if (g.path / "checkpoints" / "best.pt").is_file()]
        row += [format_ci([m[k] for m in measures]) for k in ("spread", "period_error", "reference_period_error")]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Sample measures: {SAMPLES} samples per period {', '.join(f'{p:g}' for p in LCD_PERIODS)} "
              f"at x0 = {LCD_X0:g}; period error = |dominant period - requested| (cycles per t_f, "
              "least-squares periodogram)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
