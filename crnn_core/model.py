"""Model assembly: task encoder -> context network -> init strategy -> cell -> task head.

``ModelSpec`` names the components and holds their raw options; ``build_model``
resolves them through the registries and returns the task and the ``ContextualRNN``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .cell import Cell, State
from .context import ContextNetwork
from .contract import check_cell_result, check_initial_state
from .errors import ConfigError, CrnnError, show_traceback
from .init_strategy import InitStrategy
from .options import build_options
from .plugins import PluginSystem
from .task import Batch, Task, TaskModule


@dataclass
class ModelSpec:
    """Which components make the model, and their options (raw values, validated on build)."""

    cell: str  # registry name of the cell, e.g. "fastweights"
    init: str  # registry name of the init strategy, e.g. "learned"
    task: str  # registry name of the task, e.g. "art"
    context: str | None = None  # context network; None: the task's default (only used with context)
    cell_options: dict[str, Any] = field(default_factory=dict)
    init_options: dict[str, Any] = field(default_factory=dict)
    context_options: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)


class ContextualRNN(nn.Module):
    """A cell whose initial state comes from an init strategy, wrapped by a task's encoder and head."""

    def __init__(
        self,
        task_module: TaskModule,
        cell: Cell,
        init: InitStrategy,
        context_net: ContextNetwork | None,
    ) -> None:
        super().__init__()
        self.task_module = task_module
        self.cell = cell
        self.init = init
        self.context_net = context_net
        self.contract_checked = False  # the components' outputs are checked on the first forward pass

    def initial_state(self, batch: Batch, batch_size: int, sample: bool | None = None) -> State:
        """The cell's initial state for a batch (sampled or mean, see InitStrategy.forward)."""
        context = None
        if self.init.uses_context:
            features = self.task_module.context(batch)
            if features is None:
                raise ConfigError("the init strategy needs context, but the task returned none")
            context = self.context_net(features) if self.context_net is not None else features
        param = next(self.cell.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        return self.init(batch_size, context, device=device, dtype=dtype, sample=sample)

    def forward(self, batch: Batch, sample: bool | None = None) -> Tensor:
        inputs = self.task_module.encode(batch)
        state = self.initial_state(batch, inputs.shape[0], sample)
        if not self.contract_checked:
            check_initial_state(self.init, state, self.cell.state_spec(), inputs.shape[0])
        result = self.cell(inputs, state)
        if not self.contract_checked:
            check_cell_result(self.cell, inputs, result)
            self.contract_checked = True
        outputs, _ = result
        return self.task_module.head(outputs)


@dataclass
class Built:
    """The result of ``build_model``: the task, the model and the resolved options."""

    task: Task
    model: ContextualRNN
    spec: ModelSpec  # with context filled in and options as resolved dicts
    classes: dict[str, type]  # component kind -> class


def _construct(kind: str, name: str, cls: type, *args: Any) -> Any:
    """Instantiate a component; a plugin's own exception becomes a one-line error naming it."""
    try:
        return cls(*args)
    except CrnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - third-party constructors may raise anything
        show_traceback(exc)  # CRNN_DEBUG=1: the plugin's own traceback, then the one-line error
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"{kind} '{name}' ({cls.__module__}.{cls.__qualname__}) failed to build: {type(exc).__name__}: {first}"
        ) from None


def build_model(spec: ModelSpec, plugins: PluginSystem) -> Built:
    """Resolve names and options, check the combination, construct the model."""
    task_cls = plugins.registry("tasks").get(spec.task).cls
    cell_cls = plugins.registry("cells").get(spec.cell).cls
    init_cls = plugins.registry("inits").get(spec.init).cls
    task_opts = build_options(task_cls.Options, spec.task_options, "task")
    cell_opts = build_options(cell_cls.Options, spec.cell_options, "cell")
    init_opts = build_options(init_cls.Options, spec.init_options, "init")

    task: Task = _construct("task", spec.task, task_cls, task_opts)
    task.prepare(uses_context=init_cls.uses_context)
    context_name = None
    context_net = None
    context_opts = None
    classes: dict[str, type] = {"task": task_cls, "cell": cell_cls, "init": init_cls}
    if init_cls.uses_context:
        if task.context_size is None:
            raise ConfigError(f"init '{spec.init}' needs context, but task '{spec.task}' provides none")
        context_name = spec.context or task.default_context
        context_cls = plugins.registry("contexts").get(context_name).cls
        context_opts = build_options(context_cls.Options, spec.context_options, "context")
        context_net = _construct("context network", context_name, context_cls, task.context_size, context_opts)
        classes["context"] = context_cls
    elif spec.context is not None or spec.context_options:
        raise ConfigError(f"--context / context.* options given, but init '{spec.init}' uses no context")

    cell = _construct("cell", spec.cell, cell_cls, task.input_size, cell_opts)
    context_size = context_net.out_features if context_net is not None else None
    init = _construct("init strategy", spec.init, init_cls, cell.state_spec(), context_size, init_opts)
    model = ContextualRNN(task.build_module(cell.hidden_size), cell, init, context_net)
    resolved = ModelSpec(
        cell=spec.cell,
        init=spec.init,
        task=spec.task,
        context=context_name,
        cell_options=dataclasses.asdict(cell_opts),
        init_options=dataclasses.asdict(init_opts),
        context_options=dataclasses.asdict(context_opts) if context_opts is not None else {},
        task_options=dataclasses.asdict(task_opts),
    )
    return Built(task, model, resolved, classes)
