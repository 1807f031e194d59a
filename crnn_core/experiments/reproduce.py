"""``crnn reproduce <experiment>``: experiment grids (the paper's, from plugins), their figures and tables.

An :class:`Experiment` is registered by a plugin's ``register_experiments`` hook (the
built-in ``art`` and ``lcd`` grids live in a plugin like any other).

Each run of a grid is a ``crnn run`` subprocess writing ``<out>/<init>_s<seed>/`` (:func:`crnn_core.experiments.local.execute`);
with ``--jobs J`` up to J run at once, each pinned to its share of the CPU cores (and as many
torch threads); with ``--executor ray`` each is a Ray task (crnn_core/experiments/ray_grid.py). Re-running the same command skips finished runs and resumes the
interrupted ones from their ``last.pt``. Figures and a markdown table are written to
``<out>/`` at the end (or alone with ``--report-only``).
"""

from __future__ import annotations

import json
import queue
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

import click

from ..base.errors import ConfigError
from ..interfaces.kinds import parse_overrides
from ..interfaces.experiment import Experiment
from .local import Children, GridRun, GridStopped, core_groups, execute
from .plot import collect, default_logy, draw
from .stats import summary
from ..plugin_manager.manager import get_plugins
from ..rundirs.rundir import dumps_json, is_run_dir, read_json, read_metrics, write_json
from ..base.signals import SignalInterrupt
from ..training.train import Interrupted


def plan(exp: Experiment, inits: list[str], seeds: int, epochs: int, out: Path, early_stop: bool,
         extra: tuple[str, ...]) -> list[GridRun]:
    runs = []
    for seed in range(seeds):
        for init in inits:
            path = out / f"{init}_s{seed}"
            sets = [*exp.cell_options, *exp.inits[init], *extra]
            args = ["run", "--cell", exp.cell, "--init", init, "--task", exp.task, "--seed", str(seed),
                    "--epochs", str(epochs), "--out", str(path), "-q",
                    "--early-stop" if early_stop else "--no-early-stop"]
            for item in sets:
                args += ["--set", item]
            runs.append(GridRun(init, seed, path, args))
    return runs


def is_finished(run: GridRun, epochs: int) -> bool:
    summary = run.path / "summary.json"
    if not summary.is_file():
        return False
    data = read_json(summary)
    return data.get("epochs", 0) >= epochs or bool(data.get("stopped_early"))


def _announce(runs: list[GridRun], todo: list[GridRun], how: str) -> None:
    click.echo(f"crnn reproduce: {len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to go {how}", err=True)


def report_done(run: GridRun, summary: dict[str, Any]) -> None:
    """The progress line of a finished grid run (stderr)."""
    click.echo(f"  done  {run.path.name}: {summary['epochs']} epochs, {summary['wall_time']:.0f}s training", err=True)


def run_grid(runs: list[GridRun], epochs: int, jobs: int, executor: str = "local", address: str | None = None,
             threads: int = 1, resume_command: str = "") -> None:
    """Run the unfinished ``runs``: ``jobs`` pinned processes here (``local``), or Ray tasks of
    ``threads`` CPUs each (``ray``: on the cluster at ``address``, else an embedded Ray of
    ``jobs * threads`` CPUs). ``resume_command`` continues the grid (named when a signal stops it)."""
    todo = [r for r in runs if not is_finished(r, epochs)]
    if executor == "ray":
        from .ray_grid import run_on_ray

        cpus = None if address else jobs * threads
        _announce(runs, todo, f"on Ray ({address or f'embedded, {cpus} CPUs'}), {threads} CPU(s) each")
        if todo:
            run_on_ray(todo, epochs, threads, address, cpus, report_done)
        return
    groups: queue.Queue[set[int]] = queue.Queue()
    for group in core_groups(jobs):
        groups.put(group)
    _announce(runs, todo, f"with {groups.qsize()} job(s)")

    children = Children()

    def work(run: GridRun) -> None:
        cores = groups.get()
        try:
            if children.stopped_by is None:
                click.echo(f"  start {run.path.name} on cores {sorted(cores)}", err=True)
            report_done(run, execute(run, epochs, len(cores), cores, children))
        finally:
            groups.put(cores)

    pool = ThreadPoolExecutor(max_workers=groups.qsize())
    futures = [pool.submit(work, r) for r in todo]
    try:
        for future in as_completed(futures):
            future.result()
    except BaseException as exc:  # a signal, or a failed run: no new run starts, the running ones save and stop
        pool.shutdown(wait=False, cancel_futures=True)
        default = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM  # SIGTERM: save and stop
        signum = exc.signum if isinstance(exc, SignalInterrupt) else default
        stopped = stop_children(children, futures, signum)
        if isinstance(exc, KeyboardInterrupt):
            unstarted = sum(f.cancelled() or isinstance(f.exception(), GridStopped) for f in futures)
            raise Interrupted(f"{signal.Signals(signum).name} received: stopped the grid; {len(stopped)} running "
                              f"run(s) stopped, each keeping its last checkpoint, {unstarted} not started; "
                              f"continue with: {resume_command}", signum) from None
        raise
    pool.shutdown()


def stop_children(children: Children, futures: list[Future[None]], signum: int) -> list[Path]:
    """Signal the running children once and wait until they have saved and exited; a second SIGINT
    or SIGTERM meanwhile is passed on to them (it stops them at once, as in ``crnn run``)."""
    stopped = children.stop(signum)
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda s, _frame: children.stop(s))
        except ValueError:  # not the main thread: the children still get the first signal
            pass
    try:
        wait([f for f in futures if not f.cancelled()])  # a cancelled future never reports done to wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stopped


#: A grid directory's settings (experiment, variant, --set overrides, early stop) and its last shape
#: (seeds, epochs, inits): what --resume continues.
GRID_FILE = "grid.json"

#: The settings that make a grid what it is: running a grid directory again with other values is refused.
GRID_IDENTITY = ("experiment", "variant", "overrides", "early_stop")

#: The grid's shape, recorded on every run: ``--resume`` uses it where --seeds, --epochs or --inits is not given.
GRID_SHAPE = ("seeds", "epochs", "inits")

DEFAULT_SEEDS = 3


def grid_settings(out: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The settings to run the grid in ``out`` with: ``settings``, or with ``resume`` the recorded ones.

    A grid directory records its settings on the first run; running it again with other
    settings (:data:`GRID_IDENTITY`) is refused (the runs would mix), and ``--resume`` needs
    a recorded grid. The shape (:data:`GRID_SHAPE`) may change from one run to the next.
    """
    path = out / GRID_FILE
    saved = read_json(path) if path.is_file() else None
    if saved is not None and not isinstance(saved, dict):
        raise ConfigError(f"{path} is not a crnn grid record")
    if resume:
        if saved is None:
            raise ConfigError(f"--resume: {out} holds no grid to continue (no {GRID_FILE})")
        if saved.get("experiment") != settings["experiment"]:
            raise ConfigError(f"--resume: {out} holds a grid of '{saved.get('experiment')}', not '{settings['experiment']}'")
        return saved
    differ = ", ".join(k for k in GRID_IDENTITY if saved is not None and saved.get(k) != settings.get(k))
    if differ:
        raise ConfigError(f"{out} holds a grid with other settings ({differ}); continue it with --resume "
                          "or choose another --out")
    return settings


def parse_run_name(name: str) -> tuple[str, int] | None:
    """``(init, seed)`` of a grid run directory's name ``<init>_s<seed>`` (:func:`plan`), else None."""
    init, _, seed = name.rpartition("_s")
    return (init, int(seed)) if init and seed.isdigit() else None


def seeds_on_disk(out: Path) -> int | None:
    """1 + the largest seed among the ``<init>_s<seed>`` run directories in ``out`` (None: none there),
    for reporting on a grid whose ``grid.json`` predates the recorded shape."""
    seeds = [parsed[1] for p in out.glob("*_s*") if (parsed := parse_run_name(p.name))]
    return max(seeds) + 1 if seeds else None


def grid_threads(overrides: tuple[str, ...]) -> int:
    """The torch threads of each run on Ray: ``--set train.threads=N`` (default 1)."""
    value = parse_overrides(overrides)["train"].get("threads", "1")
    try:
        threads = int(value)
    except ValueError:
        raise ConfigError(f"train.threads: expected an integer, got '{value}'") from None
    if threads <= 0:
        raise ConfigError(f"train.threads must be positive for --executor ray (the CPUs each run asks for), got {threads}")
    return threads


def mean_std(values: list[float]) -> str:
    """``mean ± std`` of ``values`` for a table cell (``—`` when empty)."""
    if not values:
        return "—"
    stats = summary(values)
    return f"{stats['mean']:.4g} ± {stats['std']:.2g}" if len(values) > 1 else f"{stats['mean']:.4g}"


def final_table(runs: list[GridRun], inits: list[str], metrics: tuple[str, ...]) -> str:
    """Markdown: per init, final and best value of each metric (mean ± std over seeds)."""
    head = ["init", "seeds", *[f"final {m}" for m in metrics], *[f"best {m}" for m in metrics], "epochs run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for init in inits:
        records = [r for r in (read_metrics(g.path / "metrics.jsonl") for g in runs if g.init == init) if r]
        row = [init, str(len(records))]
        row += [mean_std([r[-1]["metrics"][m] for r in records if m in r[-1]["metrics"]]) for m in metrics]
        row += [mean_std([min(x["metrics"][m] for x in r if m in x["metrics"]) for r in records if m in r[-1]["metrics"]]) for m in metrics]
        row.append(mean_std([r[-1]["epoch"] for r in records]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def report(exp: Experiment, runs: list[GridRun], inits: list[str], out: Path) -> dict[str, Any]:
    """Write the figures and the table; return what was written."""
    done = [r.path for r in runs if is_run_dir(r.path) and read_metrics(r.path / "metrics.jsonl")]
    if not done:
        raise ConfigError(f"no finished epochs under {out} to report on")
    figures = []
    for metric in exp.metrics:
        metric_name, groups, higher = collect(done, metric)
        path = out / f"{exp.name}_val_{metric}.png"
        draw(metric_name, groups, path, "std", default_logy(groups, higher), f"{exp.name.upper()}: validation {metric} (mean ± 1 std over seeds)")
        figures.append(str(path))
    if exp.figures is not None:
        figures += exp.figures(runs, out)
    table = (exp.table or final_table)(runs, inits, exp.metrics)
    (out / "results.md").write_text(table)
    return {"figures": figures, "table": str(out / "results.md"), "markdown": table}


REPRODUCE_EXAMPLES = """
\b
Examples:
  crnn reproduce art --seeds 3 --jobs 2 --early-stop --out runs/reproduce-art
  crnn reproduce art --variant authors --seeds 5 --early-stop --out runs/art-authors
  crnn reproduce art --out runs/art-authors --resume --epochs 60   # continue a grid as recorded
  crnn reproduce art --seeds 3 --jobs 2 --executor ray                 # the same grid as Ray tasks
  crnn reproduce lcd --seeds 10 --executor ray --address head:6379 --out /shared/runs/lcd
  crnn reproduce lcd --seeds 3 --jobs 2
  crnn reproduce art --seeds 1 --epochs 2 --set task.train_size=2000 --out /tmp/quick
  crnn reproduce art --out runs/reproduce-art --report-only   # redraw from finished runs
  crnn reproduce --list                                       # the registered experiments
"""


@click.command(epilog=REPRODUCE_EXAMPLES)
@click.argument("experiment", required=False)
@click.option("--seeds", type=int, help=f"seeds per init strategy  [default: {DEFAULT_SEEDS}, or with --resume the recorded]")
@click.option("--epochs", type=int, help="epochs per run  [default: the experiment's, or with --resume the recorded]")
@click.option("--inits", help="comma-separated subset of the init strategies to run  [default: all, or with --resume the recorded]")
@click.option("--out", type=click.Path(path_type=Path), help="grid directory  [default: runs/reproduce-<experiment>]")
@click.option("--early-stop/--no-early-stop", default=None, help="stop each run at its task's early-stop target  [default: no]")
@click.option("--jobs", type=int, help="runs at once on this machine, each pinned to its share of the cores "
              "(embedded Ray: jobs x train.threads CPUs)  [default: 1]")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: a process pool here; ray: one Ray task per run (pip install 'crnn[ray]', docs/scaling.md)")
@click.option("--address", help="with --executor ray: the Ray cluster to use (e.g. head:6379 or auto)  [default: an embedded Ray]")
@click.option("--set", "overrides", multiple=True, metavar="SCOPE.KEY=VALUE", help="extra option for every run (e.g. cell.backend=fused)")
@click.option("--variant", help="a named preset of options for every run (see --list), e.g. authors")
@click.option("--resume", is_flag=True, help="continue the grid in --out with its recorded variant, options and early stop")
@click.option("--report-only", is_flag=True, help="only redraw figures and the table from the runs on disk")
@click.option("--list", "list_only", is_flag=True, help="list the registered experiments as JSON and exit")
def reproduce_command(experiment: str | None, seeds: int | None, epochs: int | None, inits: str | None, out: Path | None,
                      jobs: int | None, early_stop: bool | None, executor: str, address: str | None,
                      overrides: tuple[str, ...], variant: str | None, resume: bool,
                      report_only: bool, list_only: bool) -> None:
    """Run a registered experiment grid (see --list; plugins add them) and write its figures and table.

    Prints a JSON summary (figures, table) on stdout; progress goes to stderr.
    """
    experiments = get_plugins().experiments
    if list_only:
        click.echo(json.dumps({name: {"description": e.description, "task": e.task, "cell": e.cell, "inits": list(e.inits),
                                      "epochs": e.epochs, "variants": {k: list(v) for k, v in e.variants.items()}}
                               for name, e in sorted(experiments.items())}, indent=2))
        return
    if experiment is None:
        raise ConfigError(f"name an experiment: {', '.join(sorted(experiments))} (crnn reproduce --list describes them)")
    if experiment not in experiments:
        raise ConfigError(f"unknown experiment '{experiment}' (choose from {', '.join(sorted(experiments))})")
    exp = experiments[experiment]
    if any(value is not None and value <= 0 for value in (seeds, jobs, epochs)):
        raise ConfigError("--seeds, --jobs and --epochs must be positive")
    if address is not None and executor != "ray":
        raise ConfigError("--address names a Ray cluster: it needs --executor ray")
    if address is not None and jobs is not None:
        raise ConfigError("--jobs sizes this machine's share; with --address the Ray cluster's CPUs decide how many runs go at once")
    if executor == "ray" and not report_only:
        from .ray_grid import import_ray

        import_ray()  # a missing extra stops here, before any directory is made
    if variant is not None and variant not in exp.variants:
        raise ConfigError(f"--variant: '{variant}' is not a variant of {experiment} "
                          f"(choose from {', '.join(exp.variants) or 'none'})")
    if resume and (variant is not None or overrides or early_stop is not None):
        raise ConfigError("--resume continues the grid with its recorded --variant, --set and --early-stop; "
                          "give none of them")
    out = out or Path("runs") / f"reproduce-{experiment}"
    requested = {"experiment": experiment, "variant": variant, "overrides": list(overrides), "early_stop": bool(early_stop)}
    if report_only:
        settings = read_json(out / GRID_FILE) if (out / GRID_FILE).is_file() else requested
    else:
        settings = grid_settings(out, requested, resume)
    recorded = settings if (resume or report_only) else {}
    seeds = seeds or recorded.get("seeds") or (seeds_on_disk(out) if report_only else None) or DEFAULT_SEEDS
    epochs = epochs or recorded.get("epochs") or exp.epochs
    chosen = [i.strip() for i in inits.split(",")] if inits else list(recorded.get("inits") or exp.inits)
    unknown = [i for i in chosen if i not in exp.inits]
    if unknown:
        raise ConfigError(f"--inits: '{unknown[0]}' is not an arm of {experiment} (choose from {', '.join(exp.inits)})")
    if executor == "ray":
        out = out.absolute()  # Ray workers do not share this process's working directory
    out.mkdir(parents=True, exist_ok=True)
    if not report_only:
        write_json(out / GRID_FILE, {**{k: settings.get(k) for k in GRID_IDENTITY},
                                     "seeds": seeds, "epochs": epochs, "inits": chosen})
    extra = (*exp.variants.get(settings.get("variant") or "", ()), *settings.get("overrides", []))
    threads = grid_threads(extra) if executor == "ray" else 1
    runs = plan(exp, chosen, seeds, epochs, out, bool(settings.get("early_stop")), extra)
    started = time.time()
    if not report_only:
        resume_command = f"crnn reproduce {experiment} --out {out} --resume"
        run_grid(runs, epochs, jobs or 1, executor, address, threads, resume_command)
    result = report(exp, runs, chosen, out)
    result["grid_seconds"] = round(time.time() - started, 1)
    click.echo(dumps_json(result))
