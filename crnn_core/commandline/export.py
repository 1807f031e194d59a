"""``crnn export``: a run's weights as a safetensors file."""

from __future__ import annotations

from pathlib import Path

import click

from ..rundirs.loading import export_safetensors
from ..rundirs.rundir import dumps_json

EXPORT_EXAMPLES = """
\b
Examples:
  crnn export runs/lcd-learned lcd-learned.safetensors
  crnn export runs/art-learned art.safetensors --checkpoint last
  crnn sample lcd-learned.safetensors --period 2.0 --x0 3.0 -n 5
"""


@click.command(epilog=EXPORT_EXAMPLES)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="which checkpoint's weights")
def export_command(run_dir: Path, out: Path, checkpoint: str) -> None:
    """Write a run's model weights to OUT as safetensors, with its configuration and plugin
    versions as metadata; `crnn sample OUT` and `load_run(OUT)` load it without unpickling.

    Prints a JSON summary on stdout.
    """
    documents = export_safetensors(run_dir, out, checkpoint)
    click.echo(dumps_json({"out": str(out), "run_dir": str(run_dir), **documents["crnn.checkpoint"],
                           "bytes": out.stat().st_size, "plugins": documents["crnn.plugins"]}))
