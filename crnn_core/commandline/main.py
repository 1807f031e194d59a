"""The ``crnn`` command line (click): a group whose commands are imported only when they run.

``crnn --help`` lists the core's commands from :data:`CORE_COMMANDS` (module, attribute and
short help) and the commands plugins declare by name in the ``crnn.cli`` entry-point group,
without importing any of them, so it needs neither PyTorch nor a plugin. A command name
that neither holds is looked up in the plugins' ``register_commands`` hooks, which loads
the plugins.

Machine-readable output goes to stdout, progress and logs to stderr. A ``CrnnError``
(bad input) is printed as one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import click
from click.utils import make_default_short_help

from ..base import signals
from ..base.env import cli_reporting, env_flag
from ..base.errors import ConfigError, CrnnError, first_line
from .invocation import set_invocation_args

#: Entry-point group of commands declared by name: ``bench = "my_pkg.cli:bench_command"`` (a click command).
CLI_GROUP = "crnn.cli"


@dataclass(frozen=True)
class CoreCommand:
    """A command of the core: where it lives, and the first help sentence ``crnn --help`` shows without importing it."""

    module: str
    attribute: str
    short_help: str


#: The core's commands, in the order ``crnn --help`` lists them (a test checks each short help
#: against the command's own).
CORE_COMMANDS: dict[str, CoreCommand] = {
    "run": CoreCommand("crnn_core.commandline.run", "run", "Train a model; print a JSON summary on stdout."),
    "list": CoreCommand("crnn_core.commandline.listing", "list_",
                        "List registered components: name, providing package, one-line doc."),
    "plugins": CoreCommand("crnn_core.commandline.listing", "plugins",
                           "Installed plugins: package, version, hooks, and failures."),
    "sample": CoreCommand("crnn_core.commandline.sample", "sample_command",
                          "Sample initial states from a trained run and roll them out autoregressively."),
    "export": CoreCommand("crnn_core.commandline.export", "export_command",
                          "Write a run's model weights to OUT as safetensors, with its configuration and plugin "
                          "versions as metadata; `crnn sample OUT` and `load_run(OUT)` load it without unpickling."),
    "plot": CoreCommand("crnn_core.experiments.plot", "plot_command",
                        "Plot validation curves from metrics.jsonl of one or several runs."),
    "reproduce": CoreCommand("crnn_core.experiments.reproduce", "reproduce_command",
                             "Run a registered experiment grid (see --list; plugins add them) and write its figures "
                             "and table."),
}


def declared_commands() -> dict[str, importlib.metadata.EntryPoint]:
    """The commands plugins declare in :data:`CLI_GROUP`, by name (core command names excluded)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=CLI_GROUP):
        if ep.name not in CORE_COMMANDS:
            found.setdefault(ep.name, ep)
    return found


def _provider(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def _release_locks() -> None:
    """Release the run-directory locks this process holds (none unless a command imported the run-directory module)."""
    rundir = sys.modules.get("crnn_core.rundirs.rundir")
    if rundir is not None:
        rundir.release_locks()


class CrnnGroup(click.Group):
    """A click group that imports a command's module only when the command is used, and turns
    user errors into one-line messages."""

    def main(self, args: Any = None, *a: Any, **kw: Any) -> Any:
        set_invocation_args(list(args) if args is not None else sys.argv[1:])
        with cli_reporting():
            return super().main(args, *a, **kw)

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        """The core's commands, the declared ones, then any a plugin has added in this process."""
        names = [*CORE_COMMANDS, *sorted(declared_commands())]
        return names + sorted(set(self.commands) - set(names))

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        """A command by name: imported on first use (a core or declared one), else from the plugins' hooks."""
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        command = self._load(cmd_name)
        if command is None:
            from ..plugin_manager.manager import get_plugins

            get_plugins().add_commands(self)
            return self.commands.get(cmd_name)
        self.commands[cmd_name] = command
        return command

    def _load(self, name: str) -> click.Command | None:
        if name in CORE_COMMANDS:
            core = CORE_COMMANDS[name]
            return getattr(importlib.import_module(core.module), core.attribute)
        ep = declared_commands().get(name)
        if ep is None:
            return None
        try:
            command = ep.load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plugin may raise anything on import
            raise ConfigError(f"command '{name}' ({_provider(ep)}, {ep.value}) failed to load: "
                              f"{type(exc).__name__}: {first_line(exc)}") from exc
        if not isinstance(command, click.Command):
            raise ConfigError(f"command '{name}' ({_provider(ep)}): {ep.value} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command table of ``crnn --help``, from short helps that need no import."""
        rows = []
        declared = declared_commands()
        for name in self.list_commands(ctx):
            if name in self.commands:
                text = self.commands[name].get_short_help_str(limit=formatter.width - 6 - len(name))
            elif name in CORE_COMMANDS:
                text = make_default_short_help(CORE_COMMANDS[name].short_help, formatter.width - 6 - len(name))
            else:
                text = f"(from {_provider(declared[name])}; crnn {name} --help)"
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        ctx.call_on_close(_release_locks)  # a command's run-directory locks end with it (tests invoke many in one process)
        try:
            return super().invoke(ctx)
        except CrnnError as exc:  # exit codes: docs/reliability.md
            if not getattr(exc, "shown_by_rank_0", False):  # under torchrun, one copy of an error all ranks hit
                click.echo(f"{exc.label}: {exc}", err=True)
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
                click.echo(f"Error: internal error: {type(exc).__name__}: {first_line(exc, empty='')} "
                           "(set CRNN_DEBUG=1 for a traceback)", err=True)
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


def main() -> None:
    """Run the command line (``crnn_core.commandline.entry.main`` installs the signal handlers first)."""
    cli(prog_name="crnn")
