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
import time
import traceback
from pathlib import Path
from typing import Any

import click

from . import distributed, signals
from .errors import ConfigError, CrnnError
from .model import ModelSpec, build_model
from .options import describe, parse_overrides
from .plugins import KINDS, get_plugins
from .rundir import default_run_dir, defer_until_resumed, is_run_dir, prepare_new_run_dir, read_json, write_json, write_text
from .train import Interrupted, Progress, TrainConfig, train, train_config_from

LIST_KINDS = [list_name for (_attr, _base, _kind, list_name) in KINDS.values()]


_ARGV: list[str] = []  # the arguments of this invocation, for command.txt


class CrnnGroup(click.Group):
    """A click group that turns user errors into one-line messages."""

    def main(self, args: Any = None, *a: Any, **kw: Any) -> Any:
        _ARGV[:] = list(args) if args is not None else sys.argv[1:]
        return super().main(args, *a, **kw)

    def invoke(self, ctx: click.Context) -> Any:
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
        except Exception as exc:  # noqa: BLE001 - a bug, not bad input: say so briefly
            if os.environ.get("CRNN_DEBUG"):
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
@click.option("--set", "overrides", multiple=True, metavar="SCOPE.KEY=VALUE", help="component option, e.g. cell.inner_steps=2 (scopes: cell, init, context, task, train)")
@click.option("--resume", type=click.Path(path_type=Path), help="continue the run in this directory from checkpoints/last.pt")
@click.option("--force", is_flag=True, help="overwrite a run already in --out")
@click.option("--early-stop/--no-early-stop", default=None, help="stop at the task's target (ART: 100% validation accuracy)")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar or per-epoch log on stderr")
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
) -> None:
    """Train a model; print a JSON summary on stdout."""
    plugins = get_plugins()
    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "early_stop": early_stop}
    if resume is not None:
        given = [name for name, value in (("--cell", cell), ("--init", init_name), ("--task", task), ("--context", context),
                                          ("--out", out), ("--batch-size", batch_size), ("--lr", lr), ("--seed", seed)) if value is not None]
        if given or overrides or force:
            raise ConfigError(f"{(given or ['--set/--force'])[0]} cannot be combined with --resume (a resumed run keeps its config)")
        run_dir = resume
        if not is_run_dir(run_dir):
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.json)")
        config = read_json(run_dir / "config.json")
        _check_run_config(config, run_dir / "config.json")  # untrusted: it may have been edited by hand
        try:
            spec = ModelSpec(**config["model"])
            cfg_values = {**config["train"], **{k: v for k, v in flags.items() if v is not None}}
            cfg = train_config_from({}, cfg_values, {})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{run_dir}/config.json is not a crnn run config ({exc})") from None
        dist = distributed.setup(cfg.device)  # joins the process group under torchrun, else a no-op
        built = build_model(spec, plugins)
        config["train"] = dataclasses.asdict(cfg)
        dist.on_main(lambda: defer_until_resumed(run_dir, lambda: (write_json(run_dir / "config.json", config), _append_command(run_dir))))
    else:
        scoped = parse_overrides(overrides)
        spec = ModelSpec(
            cell=cell or "fastweights",
            init=init_name or "learned",
            task=task or "art",
            context=context,
            cell_options=scoped["cell"],
            init_options=scoped["init"],
            context_options=scoped["context"],
            task_options=scoped["task"],
        )
        task_cls = plugins.registry("tasks").get(spec.task).cls
        cfg = train_config_from(task_cls.training_defaults, flags, scoped["train"])
        import torch

        dist = distributed.setup(cfg.device)  # joins the process group under torchrun, else a no-op
        torch.manual_seed(cfg.seed)  # the model's initial weights depend on the seed only
        built = build_model(spec, plugins)
        config = {
            "model": dataclasses.asdict(built.spec),
            "train": dataclasses.asdict(cfg),
            "crnn_version": _version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

        def create_run_dir() -> Path:  # rank 0 only; the others get its path
            run_dir = out or default_run_dir(Path("runs"), spec.cell, spec.init, spec.task, cfg.seed)
            prepare_new_run_dir(run_dir, force)
            write_json(run_dir / "config.json", config)
            write_json(run_dir / "plugins.json", {kind: {"name": getattr(cls, "name", cls.__name__), "class": f"{cls.__module__}.{cls.__qualname__}", **plugins.provider_of(cls)} for kind, cls in built.classes.items()})
            write_text(run_dir / "command.txt", _command_line() + "\n")
            return run_dir

        run_dir = dist.on_main(create_run_dir)

    quiet = quiet or not dist.is_main  # under torchrun only rank 0 logs and prints the summary
    _log(quiet, f"crnn: run {run_dir} | {spec.cell} ({built.model.cell.describe_backend()}) + {spec.init} on {spec.task}, "
         f"{sum(p.numel() for p in built.model.parameters())} parameters"
         + (f", {dist.world_size} processes ({dist.backend})" if dist.enabled else ""))
    try:
        summary = train(built.model, built.task, cfg, run_dir, config, resume=resume is not None, progress=_progress(quiet, cfg))
    except BaseException as exc:
        distributed.teardown(synchronise=isinstance(exc, CrnnError))  # CrnnErrors in train() happen on every rank
        if isinstance(exc, CrnnError) and not dist.is_main:
            exc.shown_by_rank_0 = True  # type: ignore[attr-defined]
        raise
    distributed.teardown()
    if dist.is_main:
        click.echo(json.dumps(summary))


def _check_run_config(config: Any, path: Path) -> None:
    """The shape of a run's config.json (values are checked later, by the options' own validation)."""
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{path} is not a valid crnn run config: {what}")

    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(config.get("train"), dict):
        raise bad("it needs the objects 'model' and 'train'")
    model = config["model"]
    for key in ("cell", "init", "task"):
        if not isinstance(model.get(key), str):
            raise bad(f"model.{key} must be a component name, got {model.get(key)!r:.80}")
    if model.get("context") is not None and not isinstance(model["context"], str):
        raise bad(f"model.context must be a component name or null, got {model['context']!r:.80}")
    for key in ("cell_options", "init_options", "context_options", "task_options"):
        if not isinstance(model.get(key, {}), dict):
            raise bad(f"model.{key} must be an object, got {model.get(key)!r:.80}")


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message, err=True)


def _progress(quiet: bool, cfg: TrainConfig) -> Progress:
    if quiet:
        return Progress()
    state: dict[str, Any] = {}
    tty = sys.stderr.isatty()

    def start(epoch: int, steps: int) -> None:
        if tty:
            bar = click.progressbar(length=steps, label=f"epoch {epoch}/{cfg.epochs}", file=sys.stderr)
            state["bar"] = bar.__enter__()

    def step() -> None:
        if "bar" in state:
            state["bar"].update(1)

    def end(record: dict[str, Any]) -> None:
        if "bar" in state:
            state.pop("bar").__exit__(None, None, None)
        metrics = " ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items())
        click.echo(f"epoch {record['epoch']}/{cfg.epochs} step {record['step']} train_loss {record['train_loss']:.4f} "
                   f"val_loss {record['loss']:.4f} {metrics} ({record['wall_time']:.1f}s)", err=True)

    return Progress(on_epoch_start=start, on_step=step, on_epoch_end=end)


def _command_line() -> str:
    # under torchrun, the torchrun launch that reproduces this run
    return " ".join(shlex.quote(a) for a in [*distributed.launcher(), *_ARGV])


def _append_command(run_dir: Path) -> None:
    write_text(run_dir / "command.txt", _command_line() + "\n", append=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crnn")
    except PackageNotFoundError:
        return "unknown"


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
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for k, entries in data.items():
        click.echo(f"{k}:")
        width = max((len(e["name"]) for e in entries), default=0)
        pwidth = max((len(e["package"]) for e in entries), default=0)
        for e in entries:
            click.echo(f"  {e['name']:<{width}}  {e['package']:<{pwidth}}  {e['doc']}")
            if show_options:
                for o in e["options"]:
                    click.echo(f"      {k[:-1] if k != 'inits' else 'init'}: {o['name']}={o['default']!r}  ({o['type']}) {o['help']}")
        if not kind:
            click.echo("")


@cli.command(epilog="\b\nExamples:\n  crnn plugins\n  crnn plugins --json")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
def plugins(as_json: bool) -> None:
    """Installed plugins: package, version, hooks, and failures."""
    system = get_plugins()
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


def _add_builtin_commands() -> None:
    """The commands that live in their own modules (generation, plots, grids, kernels)."""
    from .generate import sample_command
    from .plot import plot_command
    from .bench import bench_command, kernels_command
    from .reproduce import reproduce_command

    cli.add_command(sample_command, "sample")
    cli.add_command(plot_command, "plot")
    cli.add_command(reproduce_command, "reproduce")
    cli.add_command(bench_command, "bench")
    cli.add_command(kernels_command, "kernels")


_add_builtin_commands()


def _attach_extra_commands() -> None:
    """Add the commands of plugins (``register_commands``); a failing plugin is only reported."""
    get_plugins().add_commands(cli)


def main() -> None:
    """Console-script entry point."""
    signals.install()  # exit 130/143 with one line, from here on
    try:
        _attach_extra_commands()
    except CrnnError as exc:  # e.g. CRNN_PLUGINS_STRICT with a broken plugin
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:  # Ctrl-C while a slow plugin imports
        sys.exit(signals.report(exc))
    cli(prog_name="crnn")
