"""The ``crnn`` command line (click): run, list, plugins, and commands added by plugins.

Machine-readable output goes to stdout, progress and logs to stderr. A ``CrnnError``
(bad input) is printed as one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import click

from ..training import distributed
from ..base import signals
from .configfile import FileLayer, dumps, file_layer, read_config_file, resolved_document
from ..base.env import cli_reporting, env_flag
from ..base.errors import ConfigError, CrnnError
from ..interfaces.kinds import KINDS, SCOPES, parse_overrides
from ..layers.model import Built, ModelSpec, build_model, check_sizes
from ..interfaces.options import describe
from ..plugin_manager.manager import PluginSystem, get_plugins
from ..rundirs.run import RunConfig, RunDirWriter, check_resume_identity, component_provenance, run_environment
from ..rundirs.rundir import default_run_dir, dumps_json, is_run_dir, release_locks
from ..training.loggers import loggers_for, require_loggers
from ..training.train import LOGGERS, Callback, Interrupted, Loop, StopOnSignal, TrainConfig, fit, train_config_from

LIST_KINDS = [kind.plural for kind in KINDS]


_ARGV: list[str] = []  # the arguments of this invocation, for command.txt


class CrnnGroup(click.Group):
    """A click group that turns user errors into one-line messages."""

    def main(self, args: Any = None, *a: Any, **kw: Any) -> Any:
        _ARGV[:] = list(args) if args is not None else sys.argv[1:]
        with cli_reporting():
            return super().main(args, *a, **kw)

    #: True while the plugins load in the background for ``crnn --help`` (their commands are left out).
    plugins_pending = False

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        """A command, including those plugins add (``register_commands``, attached on first use)."""
        if cmd_name not in self.commands and not self.plugins_pending:
            get_plugins().add_commands(self)
        return super().get_command(ctx, cmd_name)  # type: ignore[arg-type]

    def list_commands(self, ctx: click.Context) -> list[str]:
        if not self.plugins_pending:
            get_plugins().add_commands(self)
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        ctx.call_on_close(release_locks)  # a command's run-directory locks end with it (tests invoke many in one process)
        try:
            return super().invoke(ctx)
        except CrnnError as exc:  # exit codes: docs/reliability.md
            if not getattr(exc, "shown_by_rank_0", False):  # under torchrun, one copy of an error all ranks hit
                click.echo(f"{'Interrupted' if isinstance(exc, Interrupted) else 'Error'}: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # outside the training loop (which saves last.pt itself)
            ctx.exit(signals.report(exc))
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except OSError as exc:  # a path the user gave that the system refuses (name too long, a loop, ...): input
            if env_flag("CRNN_DEBUG"):
                traceback.print_exc()
            where = f": {str(exc.filename)[:80]}{'...' if len(str(exc.filename)) > 80 else ''}" if exc.filename else ""
            click.echo(f"Error: {exc.strerror or type(exc).__name__}{where}", err=True)
            ctx.exit(2)
        except Exception as exc:  # noqa: BLE001 - a bug, not bad input: say so briefly
            if env_flag("CRNN_DEBUG"):
                traceback.print_exc()
            else:
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                click.echo(
                    f"Error: internal error: {type(exc).__name__}: {first} (set CRNN_DEBUG=1 for a traceback)", err=True
                )
            ctx.exit(1)


@click.group(cls=CrnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crnn", prog_name="crnn")
def cli() -> None:
    """Contextual RNNs: recurrent networks with learned, context-conditioned initial states.

    \b
    Examples:
      crnn run --cell fastweights --init learned --task art --epochs 3 --set task.train_size=5000
      crnn list cells
      crnn plugins --json
    """


# -- crnn run -------------------------------------------------------------------------------------
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


@cli.command(epilog=RUN_EXAMPLES)
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
    if resume is not None:
        check_resume_identity(resume, config, plugins)  # before the model it describes is allocated
    check_sizes(config.model, plugins)  # every component's size, before the first is allocated
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
    # under torchrun, the torchrun launch that reproduces this run
    return " ".join(shlex.quote(a) for a in [*distributed.launcher(), *_ARGV])


# -- crnn list / plugins --------------------------------------------------------------------------
@cli.command(name="list", epilog="\b\nExamples:\n  crnn list\n  crnn list cells --options\n  crnn list tasks --json")
@click.argument("kind", required=False, type=click.Choice(LIST_KINDS))
@click.option("--options", "show_options", is_flag=True, help="also list each component's options")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
def list_(kind: str | None, show_options: bool, as_json: bool) -> None:
    """List registered components: name, providing package, one-line doc."""
    plugins = get_plugins()
    kinds = [kind] if kind else LIST_KINDS
    data = {
        k: [
            {"name": e.name, "package": e.provider, "doc": e.doc, "options": describe(e.cls.Options)}
            for e in plugins.registry(k)
        ]
        for k in kinds
    }
    train_options = describe(TrainConfig) if show_options and not kind else []  # the `train` scope of --set
    if as_json:
        click.echo(json.dumps({**data, **({"train": train_options} if train_options else {})}, indent=2, default=str))
        return
    for k, entries in data.items():
        click.echo(f"{k}:")
        width = max((len(e["name"]) for e in entries), default=0)
        pwidth = max((len(e["package"]) for e in entries), default=0)
        for e in entries:
            click.echo(f"  {e['name']:<{width}}  {e['package']:<{pwidth}}  {e['doc']}")
            if show_options:
                for o in e["options"]:
                    scope = next(kind.scope for kind in KINDS if kind.plural == k)
                    click.echo(f"      {scope}: {o['name']}={o['default']!r}  ({_type_and_range(o)}) {o['help']}")
        if not kind:
            click.echo("")
    if train_options:
        click.echo("train (crnn run --set train.KEY=VALUE; a task's training_defaults change some defaults):")
        for o in train_options:
            click.echo(f"      train: {o['name']}={o['default']!r}  ({_type_and_range(o)}) {o['help']}")


def _type_and_range(option: dict[str, Any]) -> str:
    """``int, between 1 and 26`` for a row of ``options.describe``."""
    return f"{option['type']}, {option['range']}" if "range" in option else option["type"]


@cli.command(epilog="\b\nExamples:\n  crnn plugins\n  crnn plugins --json")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
def plugins(as_json: bool) -> None:
    """Installed plugins: package, version, hooks, and failures."""
    system = get_plugins().load_command_plugins()
    rows = [info.as_dict() for info in system.info.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        kind = "built-in" if row["builtin"] else "plugin"
        status = "ok" if row["status"] == "ok" else "FAILED"
        click.echo(f"{row['name']}  [{kind}] {row['package']} {row['version']}  {status}  hooks: {', '.join(row['hooks']) or '-'}")
        for error in row["errors"]:
            click.echo(f"    error: {error}")


def _add_core_commands() -> None:
    """The core's commands that live in their own modules (generation, plots, experiment grids)."""
    from .sample import sample_command
    from ..experiments.plot import plot_command
    from ..experiments.reproduce import reproduce_command
    from .export import export_command

    cli.add_command(sample_command, "sample")
    cli.add_command(export_command, "export")
    cli.add_command(plot_command, "plot")
    cli.add_command(reproduce_command, "reproduce")


_add_core_commands()


def _attach_extra_commands() -> None:
    """Add the commands of plugins (``register_commands``); a failing plugin is only reported."""
    get_plugins().add_commands(cli)


#: How long ``crnn --help`` waits for the plugins before it answers without their commands.
HELP_PLUGIN_WAIT_SECONDS = 1.0


def _attach_extra_commands_for_help() -> bool:
    """Load the plugins in a background thread and attach their commands if that takes at most
    :data:`HELP_PLUGIN_WAIT_SECONDS`; else leave them out and say so. True when they were attached."""
    done = threading.Event()
    failure: list[BaseException] = []

    def load() -> None:
        try:
            get_plugins().load_command_plugins()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=load, name="crnn-plugins", daemon=True).start()
    if done.wait(HELP_PLUGIN_WAIT_SECONDS):
        if failure:
            raise failure[0]
        _attach_extra_commands()
        return True
    cli.plugins_pending = True
    click.echo(f"crnn: plugins are still loading after {HELP_PLUGIN_WAIT_SECONDS:g}s; the commands they add are not "
               "listed here (crnn plugins lists them once loaded)", err=True)
    return False


def _asks_for_help(args: list[str]) -> bool:
    return not args or args[0] in ("-h", "--help")


def main() -> None:
    """Console-script entry point."""
    signals.install()  # exit 130/143 with one line, from here on
    attached = True
    try:
        with cli_reporting():  # a plugin that fails to load is reported as it loads
            if _asks_for_help(sys.argv[1:]):
                attached = _attach_extra_commands_for_help()
            else:
                _attach_extra_commands()
    except CrnnError as exc:  # e.g. CRNN_PLUGINS_STRICT with a broken plugin
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:  # Ctrl-C while a slow plugin imports
        sys.exit(signals.report(exc))
    if attached:
        cli(prog_name="crnn")
        return
    try:  # a plugin import still runs in a thread: exit without waiting for it or finalising under it
        cli(prog_name="crnn")
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
