"""What a plugin's ``register_experiments`` hook registers: one experiment grid for ``crnn reproduce``.

The grid runs are planned and executed by ``crnn_core.experiments``; this module only declares them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..experiments.local import GridRun


@dataclass(frozen=True)
class Experiment:
    """One experiment grid: the model, the inits compared and their extra options, and its report.

    ``table(runs, inits)`` writes the markdown table (default :func:`crnn_core.experiments.reproduce.final_table`);
    ``figures(runs, out)`` draws extra figures and returns their paths (default: none).
    ``variants`` names presets of ``--set`` overrides for every run (``--variant NAME``).
    """

    name: str
    description: str
    task: str
    cell: str
    cell_options: tuple[str, ...]
    inits: dict[str, tuple[str, ...]]  # init name -> --set overrides for that arm
    epochs: int
    metrics: tuple[str, ...]  # validation metrics drawn, one PNG each
    table: Callable[[list["GridRun"], list[str], tuple[str, ...]], str] | None = None
    figures: Callable[[list["GridRun"], Path], list[str]] | None = None
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
