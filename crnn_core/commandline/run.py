"""``crnn run``: train a model into a run directory (new, or resumed from its last checkpoint)."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from ..training import distributed
from ..training.graphs import check_cuda_graphs
from .configfile import FileLayer, dumps, file_layer, read_config_file, resolved_document
from ..base.errors import ConfigError, CrnnError
from ..interfaces.kinds import KINDS, SCOPES, parse_overrides
from ..layers.model import Built, ModelSpec, build_model, check_sizes
from ..plugin_manager.manager import PluginSystem, get_plugins
from ..rundirs.run import RunConfig, RunDirWriter, check_resume_identity, component_provenance, run_environment
from ..rundirs.rundir import default_run_dir, dumps_json, is_run_dir
from ..rundirs.weights import check_run_components
from ..training.loggers import loggers_for, require_loggers
from ..training.train import LOGGERS, Callback, Loop, StopOnSignal, TrainConfig, fit, train_config_from
from .invocation import invocation_args
RUN_EXAMPLES = """
\b
Examples:
  crnn run --cell fastweights --init learned --task art
  crnn run --cell fastweights --init zero --task art --epochs 3 --set task.train_size=5000 --set cell.inner_steps=2
  crnn run --cell lstm --init free --task art --set init.noise=0.1 --out runs/free
  crnn run --resume runs/free --epochs 20
  crnn run --config examples/configs/lcd-learned.toml --epochs 10 --out runs/lcd
  crnn run --config runs/lcd/config.json --set train.seed=1 --print-config > lcd-seed1.json
  crnn run --task lcd --init learned --log tensorboard --out runs/lcd   # then: tensorboard --logdir runs
"""


@click.command(epilog=RUN_EXAMPLES)
@click.option("--cell", help="cell name (crnn list cells)  [default: fastweights]")
@click.option("--init", "init_name", help="init strategy (crnn list inits)  [default: learned]")
@click.option("--task", help="task name (crnn list tasks)  [default: art]")
@click.option("--context", help="context network (crnn list contexts); default: the task's")
@click.option("--epochs", type=int, help="training epochs (default: the task's)")
@click.option("--batch-size", type=int, help="examples per step (default: the task's)")
@click.option("--lr", type=float, help="Adam learning rate (default: the task's)")
@click.option("--seed", type=int, help="seed of initialisation, batch order and sampling  [default: 0]")
@click.option("--device", help="cpu or cuda  [default: cpu]")
@click.option("--out", type=click.Path(path_type=Path), help="run directory (default: runs/<time>_<cell>-<init>-<task>_s<seed>)")
@click.option("--set", "overrides", multiple=True, metavar="SCOPE.KEY=VALUE", help=f"component option, e.g. cell.inner_steps=2 (scopes: {', '.join(SCOPES)})")
@click.option("--resume", type=click.Path(path_type=Path), help="continue the run in this directory from checkpoints/last.pt")
@click.option("--force", is_flag=True, help="overwrite a run already in --out")
@click.option("--early-stop/--no-early-stop", default=None, help="stop at the task's target (ART: 100% validation accuracy)")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar or per-epoch log on stderr")
@click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE",
              help="a config file (.toml or .json; a run's config.json replays it); flags and --set override it")
@click.option("--print-config", type=click.Choice(["auto", "toml", "json"]), is_flag=False, flag_value="auto",
              help="print the resolved configuration and exit without running; auto (the default): the --config file's format, else TOML")
@click.option("--log", "log", multiple=True, type=click.Choice(LOGGERS),
              help="also log to this (repeatable; sets train.loggers; tensorboard needs pip install 'crnn[tensorboard]')")
def run(
    cell: str | None,
    init_name: str | None,
    task: str | None,
    context: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    device: str | None,
    out: Path | None,
    overrides: tuple[str, ...],
    resume: Path | None,
    force: bool,
    early_stop: bool | None,
    quiet: bool,
    config_file: Path | None,
    print_config: str | None,
    log: tuple[str, ...],
) -> None:
    """Train a model; print a JSON summary on stdout."""
    plugins = get_plugins()
    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "early_stop": early_stop,
             "loggers": ",".join(dict.fromkeys(log)) or None}
    if resume is not None:
        given = [name for name, value in (("--cell", cell), ("--init", init_name), ("--task", task), ("--context", context),
                                          ("--out", out), ("--batch-size", batch_size), ("--lr", lr), ("--seed", seed),
                                          ("--config", config_file)) if value is not None]
        if given or overrides or force:
            raise ConfigError(f"{(given or ['--set/--force'])[0]} cannot be combined with --resume (a resumed run keeps its config)")
        if not is_run_dir(resume):
            raise ConfigError(f"--resume {resume}: not a run directory (no config.json)")
        config = RunConfig.load(resume)
        config.train = train_config_from(dataclasses.asdict(config.train), flags, {})
    else:
        names = {"cell": cell, "init": init_name, "task": task, "context": context}
        config = _new_run_config(plugins, names, flags, overrides, config_file)
    if print_config is not None:  # resolved as a run would record it; nothing runs, nothing is written
        resolved = build_model(config.model, plugins).spec if resume is None else config.model
        fmt = print_config if print_config != "auto" else (config_file.suffix.lower().lstrip(".") if config_file else "toml")
        click.echo(dumps(resolved_document(resolved, config.train), fmt), nl=False)
        return
    require_loggers(config.train)  # a missing extra stops the run before its directory is written
    import torch

    dist = distributed.setup(config.train.device)  # joins the process group under torchrun, else a no-op
    check_cuda_graphs(config.train.cuda_graphs, torch.device(dist.device_name(config.train.device)), dist.enabled,
                      config.train.adam_impl)  # before the run directory is written (fit checks it again)
    if resume is not None:
        check_run_components(resume, config.model, plugins)  # as crnn sample and load_run do
        check_resume_identity(resume, config, plugins)  # before the model it describes is allocated
    check_sizes(config.model, plugins, config.train)  # every component's size and a batch's activations, before allocating
    torch.manual_seed(config.train.seed)  # the model's initial weights depend on the seed only (a resume loads them)
    built = build_model(config.model, plugins)
    if resume is None:  # a new run records every option as resolved; a resumed one keeps what its checkpoint matches
        config.model = built.spec
    writer = dist.on_main(lambda: _open_run_dir(config, built, plugins, out, force, resume))  # rank 0 writes
    quiet = quiet or not dist.is_main  # under torchrun only rank 0 logs and prints the summary
    spec = built.spec
    _log(quiet, f"crnn: run {writer.run_dir} | {spec.cell} ({built.model.cell.describe_backend()}) + {spec.init} on {spec.task}, "
         f"{sum(p.numel() for p in built.model.parameters())} parameters"
         + (f", {dist.world_size} processes ({dist.backend})" if dist.enabled else ""))
    try:
        with StopOnSignal() as stop:
            loggers = loggers_for(writer.run_dir, config.train, config.to_json()) if dist.is_main else []
            summary = fit(built.model, built.task, config.train, callbacks=[writer, stop, *loggers, *_progress(quiet, config.train)])
    except BaseException as exc:
        distributed.teardown(synchronise=isinstance(exc, CrnnError))  # CrnnErrors in fit() happen on every rank
        if isinstance(exc, CrnnError) and not dist.is_main:
            exc.shown_by_rank_0 = True  # type: ignore[attr-defined]
        raise
    distributed.teardown()
    if dist.is_main:
        click.echo(dumps_json({"run_dir": str(writer.run_dir), **summary}))


#: Components of a run that neither a flag nor a config file names.
DEFAULT_COMPONENTS: dict[str, str | None] = {"cell": "fastweights", "init": "learned", "task": "art", "context": None}


def _new_run_config(plugins: PluginSystem, names: dict[str, str | None], flags: dict[str, Any],
                    overrides: tuple[str, ...], config_file: Path | None) -> RunConfig:
    """The config of a fresh run: component names (``--cell`` ... over the config file over
    ``DEFAULT_COMPONENTS``) with their options (the file's, then ``--set``), and the training
    options from the task's defaults < the file's ``train`` < CLI flags < ``--set train.*``."""
    scoped = parse_overrides(overrides)
    for scope, value in names.items():
        if value is not None and not value.strip():
            raise ConfigError(f"--{scope} was given an empty name (leave the option out for the default)")
    layer = FileLayer()
    if config_file is not None:
        layer = file_layer(read_config_file(config_file), plugins, names, DEFAULT_COMPONENTS)
    final = {scope: names.get(scope) or layer.names.get(scope) or default for scope, default in DEFAULT_COMPONENTS.items()}
    spec = ModelSpec(**final, **{f"{kind.scope}_options": {**layer.options.get(kind.scope, {}), **scoped[kind.scope]}
                                 for kind in KINDS})
    task_cls = plugins.registry("tasks").get(spec.task).cls
    return RunConfig(spec, train_config_from({**task_cls.training_defaults, **layer.train}, flags, scoped["train"]))


def _open_run_dir(config: RunConfig, built: Built, plugins: PluginSystem, out: Path | None, force: bool,
                  resume: Path | None) -> RunDirWriter:
    """The run directory's writer: a new directory (``--out`` or a default name), or the resumed one."""
    relaunch = " ".join([*distributed.launcher(), "run"])
    if resume is not None:
        return RunDirWriter.reopen(resume, config, _command_line(), relaunch=relaunch)
    spec = config.model
    run_dir = out or default_run_dir(Path("runs"), spec.cell, spec.init, spec.task, config.train.seed)
    files = {"plugins.json": component_provenance(built, plugins), "env.json": run_environment(built),
             "command.txt": _command_line() + "\n"}
    return RunDirWriter.create(run_dir, config, force, files, relaunch=relaunch)


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message, err=True)


class ProgressDisplay(Callback):
    """A progress bar per epoch (on a terminal) and one summary line per epoch, on stderr."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.tty = sys.stderr.isatty()
        self.bar: Any = None

    def on_epoch_start(self, loop: Loop, steps: int) -> None:
        if self.tty:
            self.bar = click.progressbar(length=steps, label=f"epoch {loop.state.epoch + 1}/{self.epochs}", file=sys.stderr)
            self.bar.__enter__()

    def on_step_end(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, loop: Loop, record: dict[str, Any] | None, improved: bool) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
        if record is None:
            return
        metrics = " ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items())
        click.echo(f"epoch {record['epoch']}/{self.epochs} step {record['step']} train_loss {record['train_loss']:.4f} "
                   f"val_loss {record['loss']:.4f} {metrics} (training time so far {record['wall_time']:.1f}s)", err=True)


def _progress(quiet: bool, cfg: TrainConfig) -> list[Callback]:
    return [] if quiet else [ProgressDisplay(cfg.epochs)]


def _command_line() -> str:
    """The command that reproduces this run (under torchrun, the torchrun launch), for command.txt."""
    return " ".join(shlex.quote(a) for a in [*distributed.launcher(), *invocation_args()])
