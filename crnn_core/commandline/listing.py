"""``crnn list`` and ``crnn plugins``: the registered components and the installed plugins."""

from __future__ import annotations

import json
from typing import Any

import click

from ..interfaces.kinds import KINDS
from ..interfaces.options import describe
from ..plugin_manager.manager import get_plugins
from ..training.train import TrainConfig

LIST_KINDS = [kind.plural for kind in KINDS]

@click.command(name="list", epilog="\b\nExamples:\n  crnn list\n  crnn list cells --options\n  crnn list tasks --json")
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


@click.command(epilog="\b\nExamples:\n  crnn plugins\n  crnn plugins --json")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
def plugins(as_json: bool) -> None:
    """Installed plugins: package, version, hooks, and failures."""
    system = get_plugins()
    system.add_commands(click.get_current_context().find_root().command)  # a failing register_commands is reported too
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
