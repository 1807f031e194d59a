"""Model assembly: task encoder -> context network -> init strategy -> cell -> task head.

``ModelSpec`` names the components and holds their raw options; ``build_model``
resolves them through the registries, checks the task's declarations
(:func:`check_task_class`) and returns the task and the ``TaskModel``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass, field, make_dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..interfaces.cell import State
from .contextual import ContextualRNN, takes_keyword
from ..interfaces.contract import check_cell_result, check_initial_state
from ..base.env import logger
from ..base.errors import CheckpointError, ConfigError, CrnnError, first_line, show_traceback
from ..interfaces.init_strategy import InitStrategy
from ..interfaces.kinds import KINDS
from ..interfaces.options import build_options
from ..plugin_manager.manager import PluginSystem
from ..interfaces.task import Batch, Task, TaskModule


def _model_spec_fields() -> list[tuple[str, Any, Any]]:
    """``<scope>: str`` per kind (``None`` allowed where the kind is optional), then ``<scope>_options`` per kind."""
    names = [(k.scope, str) for k in KINDS if k.required]
    names += [(k.scope, str | None, None) for k in KINDS if not k.required]
    options = [(f"{k.scope}_options", dict[str, Any], field(default_factory=dict)) for k in KINDS]
    return [*names, *options]


#: Which components make the model, and their raw options (validated on build): one field per
#: component kind (``cell``, ``init``, ``task``, ``context``; the optional context network
#: defaults to the task's) and its ``<kind>_options`` dict, all derived from ``kinds.KINDS``.
ModelSpec = make_dataclass("ModelSpec", _model_spec_fields(), namespace={"__module__": __name__})
ModelSpec.__doc__ = "Which components make the model (one registry name per component kind) and their raw options."


class TaskModel(nn.Module):
    """The model ``crnn run`` trains: a task's encoder and head around a :class:`ContextualRNN`.

    ``cell``, ``init`` and ``context_net`` are the recurrent part's; ``initial_state``
    takes a batch (the task module extracts its context features).
    """

    def __init__(self, task_module: TaskModule, rnn: ContextualRNN) -> None:
        super().__init__()
        self.task_module = task_module
        self.rnn = rnn
        self.contract_checked = False  # the components' outputs are checked on the first forward pass
        #: Let the task do per-table-row work where the components offer it: project its inputs for
        #: the cell (``TaskModule.encode_projected``, a cell's ``input_projection`` /
        #: ``forward_projected``) and build initial states per context row (``initial_state``).
        #: Same results up to float rounding; False: the plain composition.
        self.project_in_task = True
        #: The cell's ``forward_projected`` takes ``final_state`` (then it is told False: only the outputs are read).
        self._skip_final_state = takes_keyword(getattr(self.cell, "forward_projected", None), "final_state")
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    @property
    def cell(self) -> nn.Module:
        return self.rnn.cell

    @property
    def init(self) -> InitStrategy:
        return self.rnn.init

    @property
    def context_net(self) -> nn.Module | None:
        return self.rnn.context_net

    def initial_state(self, batch: Batch, batch_size: int, sample: bool | None = None) -> State:
        """The cell's initial state for a batch (sampled or mean, see InitStrategy.forward).

        Where the task's context features are rows of a table (``TaskModule.context_rows``) and
        the context network and init strategy are ``rowwise`` and not sampling, they run once
        per table row and each example's state is looked up (after the contract check): the
        same states up to float rounding, for V rows' work instead of B.
        """
        rows = self._context_rows(batch, sample)
        if rows is not None:
            table, index = rows
            return {name: _rows(value, index) for name, value in
                    self.rnn.initial_state(table.shape[0], table, sample=sample).items()}
        features = self.task_module.context(batch) if self.init.uses_context else None
        if self.init.uses_context and features is None:
            raise ConfigError("the init strategy needs context, but the task returned none")
        return self.rnn.initial_state(batch_size, features, sample=sample)

    def forward(self, batch: Batch, sample: bool | None = None) -> Tensor:
        inputs, cell_forward = self._cell_inputs(batch)
        state = self.initial_state(batch, inputs.shape[0], sample)
        if not self.contract_checked:
            check_initial_state(self.init, state, self.cell.state_spec(), inputs.shape[0])
        result = cell_forward(inputs, state)
        if not self.contract_checked:
            check_cell_result(self.cell, inputs, result)
            self.contract_checked = True
        outputs, _ = result
        return self.task_module.head(outputs)


    def _context_rows(self, batch: Batch, sample: bool | None) -> tuple[Tensor, Tensor] | None:
        if not (self.project_in_task and self.contract_checked and self.init.uses_context
                and getattr(self.init, "rowwise", False) and not self.init.samples(sample)
                and (self.context_net is None or getattr(self.context_net, "rowwise", False))):
            return None
        return self.task_module.context_rows(batch)

    def _cell_inputs(self, batch: Batch) -> tuple[Tensor, Any]:
        """The cell's inputs and the forward that takes them: the task's encoding and the cell,
        or (where both offer it, after the contract check) the task's projected encoding and
        the cell's ``forward_projected``, which skips the cell's own input projection; told
        ``final_state=False`` where it takes that keyword (the head reads only the outputs)."""
        projection = getattr(self.cell, "input_projection", None)
        if self.project_in_task and self.contract_checked and projection is not None:
            projected = self.task_module.encode_projected(batch, projection)
            if projected is not None:
                forward = self.cell.forward_projected
                if self._skip_final_state:
                    forward = functools.partial(forward, final_state=False)
                return projected, forward
        return self.task_module.encode(batch), self.cell


def _rows(value: Tensor, index: Tensor) -> Tensor:
    """``value[index]`` along the batch; a component constant along it (stride 0, e.g. a
    ``constant_state``) stays a broadcast view instead of being copied per example."""
    if value.stride(0) == 0:
        return value[0].expand(index.shape[0], *value.shape[1:])
    return value.index_select(0, index)


def _rename_legacy_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load the earlier checkpoint layout, whose keys name the recurrent part ``cell.``, ``init.``, ``context_net.``
    where this model has ``rnn.cell.``, ``rnn.init.``, ``rnn.context_net.``."""
    for key in list(state_dict):
        rest = key[len(prefix):]
        if key.startswith(prefix) and rest.startswith(("cell.", "init.", "context_net.")):
            state_dict[prefix + "rnn." + rest] = state_dict.pop(key)


def load_weights(model: nn.Module, state: Any, where: str) -> None:
    """``model.load_state_dict(state)``, or a one-line ``CheckpointError`` saying which keys or shapes differ."""
    try:
        model.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        detail = weights_mismatch(model, state) or first_line(exc, 200)
        raise CheckpointError(f"{where} does not fit this model: {detail}") from None


def weights_mismatch(model: nn.Module, state: Any, show: int = 3) -> str:
    """How a state_dict differs from ``model``'s: missing and unexpected keys and differing shapes,
    the first ``show`` of each with a count ("" if only the values differ)."""
    if not isinstance(state, dict):
        return f"the weights are a {type(state).__name__}, not a dict of tensors"
    given = dict(state)
    _rename_legacy_keys(model, given, "")
    expected = model.state_dict()

    def some(items: list[str], what: str) -> str:
        more = f", ... ({len(items) - show} more)" if len(items) > show else ""
        return f"{len(items)} {what} ({', '.join(items[:show])}{more})"

    def shape(value: Any) -> str:
        return str(list(value.shape)) if isinstance(value, Tensor) else type(value).__name__

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k}: checkpoint {shape(given[k])}, model {shape(v)}" for k, v in expected.items()
              if k in given and (not isinstance(given[k], Tensor) or given[k].shape != v.shape)]
    parts = [some(items, what) for items, what in ((missing, "keys missing"), (unexpected, "unexpected keys"),
                                                   (shapes, "shapes differ")) if items]
    return "; ".join(parts)


def check_sizes(spec: Any, plugins: PluginSystem, train: Any = None) -> nn.Module | None:
    """Build the model ``spec`` describes on PyTorch's ``meta`` device (shapes only, no memory),
    so that every component's own size checks run before any component is allocated (built
    for real, the first components would be allocated before a later one refused its size).
    With ``train`` (a ``TrainConfig``) the widest layers' activations at its ``batch_size``
    (training) and ``eval_batch_size`` (evaluation) are checked too (:func:`check_activations`).
    Returns that shape-only model, or None where a component cannot be built without memory
    (its own code failed: left to the real build). Refusals propagate as the real build's would;
    warnings do not (the real build gives each once)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(spec, plugins).model
    except CrnnError as exc:  # a size that cannot fit, an unknown name, an invalid option
        if getattr(exc, "plugin_failure", False):
            return None
        raise
    except Exception:  # noqa: BLE001 - the real build reports its own errors
        return None
    check_total_size(model)
    if train is not None:
        check_activations(model, train.batch_size, "train.batch_size", ACTIVATION_COPIES)
        check_activations(model, train.eval_batch_size, "train.eval_batch_size", 1)
    return model


#: Float32 values per layer output and example that a training step keeps at once: the output,
#: what autograd saves of it for the backward, and its gradient (an evaluation keeps one).
ACTIVATION_COPIES = 3


def check_activations(model: nn.Module, batch: int, option: str, copies: int = ACTIVATION_COPIES) -> None:
    """Refuse (one-line ``ConfigError``) a model whose layer outputs for one batch of ``batch``
    examples cannot fit: each weight matrix's output width (its first dimension) times the
    batch, ``copies`` float32 copies each. A lower bound (a recurrent layer keeps its outputs at
    every time step), enough to refuse an ART head of 10^7 units, whose validation batches of
    2048 would need 82 GB, before a process grows until it is killed."""
    from ..base.resources import FLOAT32, check_memory

    widths = {name: weight.shape[0] for name, weight in model.named_parameters() if weight.dim() == 2}
    if not widths:
        return
    widest = max(widths, key=widths.__getitem__)
    check_memory(copies * FLOAT32 * batch * sum(widths.values()),
                 f"one batch of {batch} examples ({option}) through the model's layers",
                 f"{option} or the widest layer ({widest}: {widths[widest]:.2g} outputs per example)")


def check_total_size(model: nn.Module) -> None:
    """Refuse (one-line ``ConfigError``) a model whose components fit one by one but not together
    (an ART ``embedding_size`` of 10^7 makes the cell's input weights and the context network
    each 8 GB to train), naming its largest part. ``model`` may live on the ``meta`` device."""
    from ..base.resources import check_parameters

    sizes = {name: weight.numel() for name, weight in model.named_parameters()}
    if not sizes:
        return
    largest = max(sizes, key=sizes.__getitem__)
    check_parameters(sum(sizes.values()), "the model's weights (all components together)",
                     f"the sizes of its components (the largest weight: {largest}, {sizes[largest]:.2g} values)")


def check_weights_fit(spec: Any, plugins: PluginSystem, state: Any, where: str) -> None:
    """Refuse (one-line ``CheckpointError``) weights whose shapes do not fit the model ``spec``
    describes, before that model is allocated: the shape-only model of :func:`check_sizes` is
    compared with ``state`` (name -> tensor, or name -> shape).

    A config that asks for a huge model next to small weights (an edited or forged file) is
    refused here instead of after gigabytes were allocated.
    """
    model = check_sizes(spec, plugins)
    if model is None or not isinstance(state, dict):
        return
    shapes = {name: torch.empty(value if isinstance(value, (tuple, list)) else tuple(value.shape), device="meta")
              for name, value in state.items() if isinstance(value, (tuple, list, Tensor))}
    detail = weights_mismatch(model, shapes)
    if detail:
        raise CheckpointError(f"{where} does not fit this model: {detail}")


def check_state_dtypes(state: Any, where: str) -> None:
    """Weights stored as integers or booleans are refused (one line naming the first); floats
    of another precision are loaded as the model's (float32) with one warning. ``state`` maps
    names to tensors or to their dtypes."""
    if not isinstance(state, dict):
        return
    dtypes = {name: value.dtype if isinstance(value, Tensor) else value for name, value in state.items()
              if isinstance(value, (Tensor, torch.dtype))}
    foreign = {name: dtype for name, dtype in dtypes.items() if dtype != torch.float32}
    wrong = [(name, dtype) for name, dtype in foreign.items() if not dtype.is_floating_point]
    if wrong:
        raise CheckpointError(f"{where}: tensor {wrong[0][0]} is stored as {wrong[0][1]}, not a floating-point "
                              f"type; crnn's weights are float32")
    if foreign:
        name, dtype = next(iter(foreign.items()))
        logger.warning(f"crnn: {where}: {len(foreign)} tensor(s) stored as {dtype} (e.g. {name}) are loaded as float32")


@dataclass
class Built:
    """The result of ``build_model``: the task, the model and the resolved options."""

    task: Task
    model: TaskModel
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
        first = first_line(exc, 200, empty="")
        error = ConfigError(
            f"{kind} '{name}' ({cls.__module__}.{cls.__qualname__}) failed to build: {type(exc).__name__}: {first}")
        error.plugin_failure = True  # type: ignore[attr-defined] - the component's own code raised
        raise error from None


def build_model(spec: ModelSpec, plugins: PluginSystem) -> Built:
    """Resolve names and options, check the combination, construct the model."""
    task_cls = plugins.registry("tasks").get(spec.task).cls
    check_task_class(task_cls)
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
    model = TaskModel(task.build_module(cell.hidden_size), ContextualRNN(cell, init, context_net=context_net))
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


def plugin_name(cls: type) -> str:
    """How errors name a component class: ``'name' (module.Class)``."""
    return f"'{getattr(cls, 'name', cls.__name__)}' ({cls.__module__}.{cls.__qualname__})"


def check_task_class(task_cls: type) -> None:
    """The types of a task's declarations (``best_metric``, ``higher_is_better``, ``early_stop_target``).

    Whether the metrics they name exist is known only once the task computes metrics:
    ``train.check_task_metrics`` checks that before the first step.
    """
    where = f"task {plugin_name(task_cls)}"
    if not isinstance(task_cls.best_metric, str) or not task_cls.best_metric:
        raise ConfigError(f"{where}: best_metric must be a metric name, got {task_cls.best_metric!r:.80}")
    if not isinstance(task_cls.higher_is_better, bool):
        raise ConfigError(f"{where}: higher_is_better must be True or False, got {task_cls.higher_is_better!r:.80}")
    target = task_cls.early_stop_target
    if target is not None and not (
        isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], str)
        and isinstance(target[1], (int, float)) and not isinstance(target[1], bool)
    ):
        raise ConfigError(f"{where}: early_stop_target must be None or a (metric name, number) tuple, got {target!r:.80}")
