"""Checks of the plugin contract at run time: what a cell or init strategy returns on the first batch.

docs/plugins.md states the shapes; a plugin that gets them wrong would otherwise fail
later with an anonymous shape error in someone else's code, or (outputs one step short)
train silently on the wrong thing. ``TaskModel`` (crnn_core/layers/model.py) calls these once, on its first
forward pass, and a violation is a one-line ``PluginError`` (exit 2) naming the component.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..base.errors import PluginError


def _who(kind: str, component: Any) -> str:
    cls = type(component)
    return f"{kind} '{getattr(cls, 'name', cls.__name__)}' ({cls.__module__}.{cls.__qualname__})"


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _check_state(kind: str, component: Any, what: str, state: Any, spec: dict[str, tuple[int, ...]], batch: int) -> None:
    def broke(detail: str) -> PluginError:
        return PluginError(f"{_who(kind, component)} broke the {kind.title().replace(' ', '')} contract on the first batch: {detail}")

    if not isinstance(state, dict):
        raise broke(f"{what} must be a dict of tensors named as in state_spec(), got {type(state).__name__}")
    if set(state) != set(spec):
        raise broke(f"{what} has components {sorted(state)}, but state_spec() declares {sorted(spec)}")
    for key, shape in spec.items():
        expected = [batch, *shape]
        if not isinstance(state[key], Tensor) or list(state[key].shape) != expected:
            raise broke(f"{what}['{key}'] has shape {_shape(state[key])}, expected [B, *state_spec()['{key}']] = {expected}")


def check_initial_state(init: Any, state: Any, spec: dict[str, tuple[int, ...]], batch: int) -> None:
    """An init strategy's state: exactly the cell's ``state_spec`` components, each ``[B, *shape]``."""
    _check_state("init strategy", init, "the initial state", state, spec, batch)


def check_cell_result(cell: Any, inputs: Tensor, result: Any) -> None:
    """A cell's ``forward``: ``(outputs [B, T, hidden_size], final state matching state_spec())``."""
    prefix = f"{_who('cell', cell)} broke the Cell contract on the first batch"
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise PluginError(f"{prefix}: forward must return (outputs, final_state), got {type(result).__name__}")
    outputs, final = result
    batch, steps = int(inputs.shape[0]), int(inputs.shape[1])
    expected = [batch, steps, int(cell.hidden_size)]
    if not isinstance(outputs, Tensor) or list(outputs.shape) != expected:
        raise PluginError(f"{prefix}: outputs have shape {_shape(outputs)}, expected [B, T, hidden_size] = {expected}")
    _check_state("cell", cell, "the final state", final, cell.state_spec(), batch)
