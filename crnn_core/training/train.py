"""Training as a call: ``fit(model, task, config, callbacks)``.

Adam on shuffled index batches, validation after each epoch, the best value of the
task's ``best_metric`` tracked. Everything around the loop is a :class:`Callback`: the
run-directory writer (metrics.jsonl, atomic checkpoints, resume; ``rundir.RunDirWriter``),
the progress display and the stop-signal handling (:class:`StopOnSignal`) are passed in
by the CLI; a program calling ``fit`` passes what it wants, or nothing.

Deterministic on CPU: the model is initialised from ``seed``, epoch e's batch order is
a permutation drawn from ``(seed, e)``, and checkpoints carry the RNG state and the
position in the epoch (:class:`TrainState`), so a resumed run continues exactly where
the last one stopped.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from . import distributed
from ..base import signals
from .distributed import DistContext, resolve_device
from ..base.errors import ConfigError, CrnnError
from ..interfaces.options import build_options, check_bounds, option, require
from ..base.resources import usable_cpus
from .threads import ThreadChooser, side_effect_free
from .graphs import GraphedStep, check_cuda_graphs
from .step import check_precision, forward_loss, grads_finite, make_adam, precision_context, set_adam_impl
from ..interfaces.task import Batch, Task


#: Largest seed: torch's generators take 64-bit seeds, and epoch_order and the per-rank
#: seeds derive others from it (seed * 1_000_003 + epoch), which must stay in range.
MAX_SEED = 2**32 - 1

#: The largest epoch count, batch size and figure interval: a billion epochs of one step
#: each is months of training, and larger values only overflow step counters and loops.
MAX_COUNT = 10**9

#: The loggers that ``train.loggers`` (``crnn run --log``) may name; crnn_core/training/loggers.py has them.
LOGGERS = ("tensorboard",)


@dataclass
class TrainConfig:
    """The training options (``--set train.*``; ``crnn list`` shows them with their help)."""

    epochs: int = option(10, "passes over the training set", bounds=(None, MAX_COUNT))
    batch_size: int = option(128, "examples per optimisation step", bounds=(None, MAX_COUNT))
    lr: float = option(1e-3, "Adam learning rate")
    seed: int = option(0, "seed of the model initialisation, batch order and sampling", bounds=(0, MAX_SEED))
    device: str = option("cpu", "cpu or cuda")
    grad_clip: float | None = option(None, "clip the global gradient norm at this value (none: no clipping)")
    early_stop: bool = option(False, "stop once the task's early-stop target is reached (ART: 100% accuracy)")
    eval_batch_size: int = option(2048, "examples per validation batch", bounds=(None, MAX_COUNT))
    on_nonfinite: Literal["stop", "skip"] = option("stop", "on a NaN/inf loss or gradient: stop the run, or skip the step")
    threads: int | None = option(None, "torch intra-op threads (none: on a CPU, chosen by timing a few trial steps "
                                       "each epoch among the CPUs this process may use, half of them and one; "
                                       "docs/reliability.md)")
    lr_decay_at: str = option("", "step decay: comma-separated epochs after which lr is multiplied by lr_decay_factor "
                                  "(e.g. 30,60; empty: constant lr)")
    lr_decay_factor: float = option(0.1, "factor applied to lr at each epoch of lr_decay_at")
    report_train_metrics: bool = option(False, "also evaluate the training set at each epoch's end (metrics.jsonl "
                                               "train_metrics), to tell optimisation from generalisation errors")
    loggers: str = option("", "loggers `crnn run` adds beside metrics.jsonl, comma-separated: tensorboard "
                              "(pip install 'crnn[tensorboard]'; the same as --log tensorboard)")
    figure_every: int = option(5, "with a logger: a figure of generated samples every this many epochs, "
                                  "for tasks that generate (LCD); 0: none", bounds=(None, MAX_COUNT))
    precision: Literal["32", "bf16-mixed"] = option(
        "32", "32: float32; bf16-mixed: forward and loss under torch.autocast(bfloat16) (changes results)")
    compile: bool = option(False, "torch.compile the forward pass and the loss (same results up to rounding; "
                                  "the first steps compile)")
    adam_impl: Literal["auto", "for-loop", "foreach", "fused"] = option(
        "auto", "Adam as a per-parameter loop, foreach or fused kernels (auto: fused); same results up to rounding")
    cuda_graphs: bool = option(False, "on a GPU, capture the training step (forward, backward, fused Adam) in one "
                                      "CUDA graph and replay it (same results up to rounding; docs/performance.md)")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        require(self.lr > 0, f"lr must be positive, got {self.lr}")
        require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive, got {self.grad_clip}")
        require(self.device in ("cpu", "cuda") or self.device.startswith("cuda:"), f"device must be cpu or cuda, got {self.device!r}")
        cpus = os.cpu_count() or 1
        require(self.threads is None or 0 < self.threads <= cpus,
                f"threads must be between 1 and this machine's {cpus} CPUs, got {self.threads}")
        require(self.figure_every >= 0, f"figure_every must be 0 (no figures) or positive, got {self.figure_every}")
        self.logger_names()  # an unknown name is refused here
        check_bounds(self)
        require(0 < self.lr_decay_factor <= 1, f"lr_decay_factor must be in (0, 1], got {self.lr_decay_factor}")
        _ = self.decay_epochs  # raises ValueError for a malformed lr_decay_at

    @property
    def decay_epochs(self) -> tuple[int, ...]:
        """``lr_decay_at`` as increasing positive epoch numbers (ValueError if malformed)."""
        parts = [p.strip() for p in self.lr_decay_at.split(",") if p.strip()]
        try:
            epochs = tuple(int(p, 10) for p in parts)
        except ValueError:
            raise ValueError(f"lr_decay_at must be comma-separated epoch numbers such as 30,60, got "
                             f"'{self.lr_decay_at}'") from None
        require(all(e > 0 for e in epochs) and list(epochs) == sorted(set(epochs)),
                f"lr_decay_at must list increasing positive epochs, got '{self.lr_decay_at}'")
        return epochs

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based: epochs finished before it)."""
        return self.lr * self.lr_decay_factor ** sum(1 for e in self.decay_epochs if e <= epoch)

    def logger_names(self) -> list[str]:
        """``loggers`` as a list of :data:`LOGGERS` names (``ValueError`` naming an unknown one)."""
        names = [name.strip() for name in self.loggers.split(",") if name.strip()]
        for name in names:
            require(name in LOGGERS, f"loggers: unknown logger '{name}' (choose from {', '.join(LOGGERS)}; "
                                     "metrics.jsonl is always written)")
        return names


class Interrupted(CrnnError):
    """Training stopped by SIGINT/SIGTERM after saving ``last.pt``; exit status 128 + the signal's number."""

    label = "Interrupted"

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class NonFinite(CrnnError):
    """A NaN or infinite loss or gradient (with ``on_nonfinite=stop``); exit status 3."""

    exit_code = 3


@dataclass
class TrainState:
    """Where training stands: what a checkpoint holds, under these names, to continue exactly (besides weights and RNG)."""

    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # steps taken in the current epoch
    step: int = 0  # steps taken in all
    wall_time: float = 0.0  # seconds spent training (not evaluating)
    best: float | None = None  # best value of the task's best_metric so far
    epoch_loss: float = 0.0  # sum of (loss x examples) over the current epoch's steps
    epoch_count: int = 0  # examples in epoch_loss
    nonfinite_skipped: int = 0  # steps skipped for a NaN/inf loss (on_nonfinite=skip)
    epoch_skipped: int = 0  # of those, in the current epoch (its metrics record says how many)
    threads: int | None = None  # intra-op threads chosen by the latest probe (None: none yet, or train.threads set)


@dataclass
class Loop:
    """What callbacks see: the model, task, config, optimizer, state and this process's place in the job."""

    model: nn.Module
    task: Task
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    device: torch.device
    dist: DistContext
    train_data: Batch
    val_data: Batch
    loss_of: Callable[[Batch], Tensor] | None = None  # batch -> loss of the wrapped model (fit sets it; step.py)
    state: TrainState = field(default_factory=TrainState)
    stopped_early: bool = False  # set at an epoch's end (the task's target, or a callback) to end training cleanly
    last_record: dict[str, Any] | None = None  # the latest validation record (rank 0)
    stop_signal: int = 0  # a signal number set by a callback (StopOnSignal): Interrupted after this step
    step_loss: float = math.nan  # the global batch's loss at the latest step (NaN/inf when it was not finite)
    threads: ThreadChooser | None = None  # chooses the thread count while training, when train.threads is unset
    graphed: GraphedStep | None = None  # replays the step as a CUDA graph (train.cuda_graphs; graphs.py)

    @property
    def steps_per_epoch(self) -> int:
        n = next(iter(self.train_data.values())).shape[0]
        return math.ceil(n / self.config.batch_size)


class Callback:
    """Hooks into ``fit``; every method does nothing by default. Called on every rank under torchrun."""

    def on_fit_start(self, loop: Loop) -> None:
        """Before the first step (a writer resuming a run restores the checkpoint here)."""

    def on_epoch_start(self, loop: Loop, steps: int) -> None:
        """An epoch (or the rest of one, on resume) of ``steps`` steps begins."""

    def on_step_end(self, loop: Loop) -> None:
        """After each optimisation step (set ``loop.stop_signal`` to stop)."""

    def on_epoch_end(self, loop: Loop, record: dict[str, Any] | None, improved: bool) -> None:
        """After validation: ``record`` (rank 0 only, else None) and whether ``best`` improved."""

    def on_stop(self, loop: Loop) -> str | None:
        """Training stops for ``loop.stop_signal``; return a note for the message (e.g. what was saved)."""
        return None

    def on_nonfinite(self, loop: Loop) -> str | None:
        """A NaN/inf stops training; return a note for the message (e.g. the last good checkpoint)."""
        return None


class StopOnSignal(Callback):
    """A context manager and callback: SIGINT/SIGTERM end ``fit`` after the current step.

    Inside ``with StopOnSignal() as stop: fit(..., callbacks=[..., stop])`` the first
    signal sets a flag, the ranks agree on it after each step, the other callbacks save
    what they keep (``on_stop``) and ``fit`` raises :class:`Interrupted`. The same signal
    again aborts at once; a different second signal is ignored: supervisors (torchrun,
    schedulers) often follow a terminal's SIGINT with a SIGTERM, and that must not cut
    the checkpoint short.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        signals.abort(None)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal == signum:
            raise signals.abort(signum)  # type: ignore[misc]  # exit 128 + signum (143 for SIGTERM), not 130
        if self.signal is None:
            self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def on_step_end(self, loop: Loop) -> None:
        loop.stop_signal = loop.dist.agree_max(self.signal or 0)  # the ranks stop at the same step


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The batch order of an epoch: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def take(data: Batch, index: torch.Tensor) -> Batch:
    """The examples ``index`` (a 1-D integer tensor) of every tensor in ``data`` (``index_select``:
    the same rows as ``value[index]``, without advanced indexing's set-up)."""
    return {key: value.index_select(0, index) for key, value in data.items()}


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, data: Batch, batch_size: int) -> tuple[float, dict[str, float]]:
    """Mean loss and metrics over ``data`` (mean state of any distribution: ``sample=False``)."""
    was_training = model.training
    model.eval()
    n = next(iter(data.values())).shape[0]
    loss_sum, sums = 0.0, {}
    for start in range(0, n, batch_size):
        batch = take(data, torch.arange(start, min(start + batch_size, n), device=next(iter(data.values())).device))
        size = min(batch_size, n - start)
        predictions = model(batch, sample=False)
        loss_sum += task.loss(predictions, batch).item() * size
        for key, value in task.metrics(predictions, batch).items():
            sums[key] = sums.get(key, 0.0) + value * size
    metrics = {key: value / n for key, value in sums.items()}
    metrics.update(task.extra_metrics(model, data, batch_size))
    model.train(was_training)
    return loss_sum / n, metrics


def check_task_metrics(model: nn.Module, task: Task, data: Batch) -> None:
    """Refuse a task whose ``best_metric`` or ``early_stop_target`` names a metric it never reports.

    Evaluates two validation examples before training starts (``fit`` seeds or restores
    the RNG after it, so it changes no result), so a misspelt name costs nothing: it would
    otherwise silently select best.pt by the loss, or fail only after the first epoch.
    """
    _, metrics = evaluate(model, task, take(data, torch.arange(min(2, next(iter(data.values())).shape[0]))), 2)
    known = ["loss", *metrics]
    cls = type(task)
    names = [("best_metric", task.best_metric)]
    if task.early_stop_target is not None:
        names.append(("early_stop_target", task.early_stop_target[0]))
    for attribute, name in names:
        if name not in known:
            raise ConfigError(f"task '{task.name}' ({cls.__module__}.{cls.__qualname__}): {attribute} names metric "
                              f"'{name}', but the task reports only: {', '.join(known)}")


def fit(model: nn.Module, task: Task, config: TrainConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train ``model`` (e.g. ``build_model(...).model``) on ``task``; returns a summary.

    ``config`` is a :class:`TrainConfig` (``TrainConfig(epochs=3, lr=1e-3)``). Nothing is
    written and no signal handler installed unless a callback does it (see the module
    docstring). Raises :class:`NonFinite` on a NaN/inf with ``on_nonfinite="stop"`` and
    :class:`Interrupted` when a callback sets ``loop.stop_signal``.
    """
    loop = _prepare(model, task, config)
    check_task_metrics(model, task, loop.val_data)
    torch.manual_seed(loop.dist.rank_seed(config.seed))
    for cb in callbacks:
        cb.on_fit_start(loop)  # may restore a checkpoint: weights, optimizer, state, RNG
    if loop.threads is not None and loop.state.threads is not None:  # the resumed run starts at its recorded count
        loop.threads.resume(min(loop.state.threads, loop.threads.candidates[0]))
    set_adam_impl(loop.optimizer, config.adam_impl)  # a restored optimizer comes with the checkpoint's
    net = loop.dist.wrap(model, loop.device)  # DistributedDataParallel when several processes train
    loop.loss_of = forward_loss(net, task.loss, config.precision, loop.device, config.compile)
    if config.cuda_graphs:
        loop.graphed = GraphedStep(loop.loss_of, loop.optimizer, model.parameters(), config.batch_size,
                                   config.grad_clip, loop.device)
    model.train()
    while loop.state.epoch < config.epochs and not loop.stopped_early:
        _train_epoch(loop, net, callbacks)
        _validate(loop, callbacks)
    s = loop.state
    return {
        "epochs": s.epoch,
        "steps": s.step,
        "stopped_early": loop.stopped_early,
        "nonfinite_skipped": s.nonfinite_skipped,
        "best": {task.best_metric: s.best},
        "final": loop.last_record,
        "wall_time": round(s.wall_time, 3),
    }


def _prepare(model: nn.Module, task: Task, cfg: TrainConfig) -> Loop:
    dist = distributed.context()  # single-process unless launched by torchrun (crnn_core/training/distributed.py)
    device = resolve_device(dist.device_name(cfg.device))
    check_precision(cfg.precision, device)
    check_cuda_graphs(cfg.cuda_graphs, device, dist.enabled, cfg.adam_impl)
    threads = cfg.threads or min(torch.get_num_threads(), usable_cpus())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    model.to(device)
    train_data = {k: v.to(device) for k, v in task.dataset("train").items()}
    val_data = {k: v.to(device) for k, v in task.dataset("val").items()}
    optimizer = make_adam(model.parameters(), cfg.lr, cfg.adam_impl)
    loop = Loop(model, task, cfg, optimizer, device, dist, train_data, val_data)
    # Probes only where a thread count can be switched between steps: one CPU process, eager
    # (a compiled graph fixes its thread count when it compiles).
    if cfg.threads is None and threads > 1 and device.type == "cpu" and not dist.enabled and not cfg.compile:
        loop.threads = ThreadChooser(threads)
    return loop


def _train_epoch(loop: Loop, net: nn.Module, callbacks: Sequence[Callback]) -> None:
    """The rest of the current epoch's steps; stops (raising) on a stop signal or a NaN/inf."""
    s, cfg = loop.state, loop.config
    fresh = loop.task.epoch_train_data(s.epoch)  # a task that draws new training data each epoch
    if fresh is not None:
        loop.train_data = {k: v.to(loop.device) for k, v in fresh.items()}
    for group in loop.optimizer.param_groups:  # the schedule is a function of the epoch: resume-exact
        group["lr"] = cfg.lr_at(s.epoch)
    n = next(iter(loop.train_data.values())).shape[0]
    order = epoch_order(n, cfg.seed, s.epoch).to(loop.device)
    for cb in callbacks:
        cb.on_epoch_start(loop, loop.steps_per_epoch - s.batch_in_epoch)
    started = time.perf_counter()
    while s.batch_in_epoch < loop.steps_per_epoch:
        index = order[s.batch_in_epoch * cfg.batch_size : (s.batch_in_epoch + 1) * cfg.batch_size]
        if loop.threads is not None and loop.threads.due(loop.steps_per_epoch):
            s.threads = loop.threads.probe(side_effect_free(loop.model, lambda: _trial_step(loop, index)))
        step_started = time.perf_counter()
        finite = _step(loop, net, index)
        if loop.threads is not None:
            loop.threads.record(time.perf_counter() - step_started)
        if not finite:
            if cfg.on_nonfinite == "stop":
                notes = [note for cb in callbacks if (note := cb.on_nonfinite(loop))]
                raise NonFinite(
                    f"non-finite loss or gradient at epoch {s.epoch + 1}, step {s.step + 1} "
                    f"(lower --lr, set train.grad_clip, or --set train.on_nonfinite=skip; "
                    f"{'; '.join(notes) or 'nothing was saved'})"
                )
            s.nonfinite_skipped += 1
            s.epoch_skipped += 1
        s.batch_in_epoch += 1
        s.step += 1
        for cb in callbacks:
            cb.on_step_end(loop)
        if loop.stop_signal:
            if isinstance(loop.stop_signal, bool) or loop.stop_signal not in set(signal.Signals):
                raise TypeError(f"loop.stop_signal must be a signal number such as signal.SIGINT (it raises Interrupted), "
                                f"got {loop.stop_signal!r}; to end training cleanly set loop.stopped_early = True "
                                "in on_epoch_end")
            s.wall_time += time.perf_counter() - started
            notes = [note for cb in callbacks if (note := cb.on_stop(loop))]
            name = signal.Signals(loop.stop_signal).name
            where = f"stopped at epoch {s.epoch + 1}, step {s.step}"
            raise Interrupted(f"{name} received: {'; '.join(notes) or where}", loop.stop_signal)
    s.wall_time += time.perf_counter() - started
    if s.epoch_count == 0 and s.epoch_skipped > 0:  # on_nonfinite=skip, and not one step of the epoch was finite
        notes = [note for cb in callbacks if (note := cb.on_nonfinite(loop))]
        raise NonFinite(
            f"every step of epoch {s.epoch + 1} had a non-finite loss or gradient ({s.epoch_skipped} skipped), so "
            f"nothing was learned (lower --lr or set train.grad_clip; {'; '.join(notes) or 'nothing was saved'})"
        )


def _trial_step(loop: Loop, index: torch.Tensor) -> None:
    """A forward and backward pass on the batch ``index`` whose gradients are dropped: what a
    thread-count probe times (one process, so the model is the net)."""
    batch = take(loop.train_data, index)
    loop.loss_of(batch).backward()
    loop.optimizer.zero_grad(set_to_none=True)


def _step(loop: Loop, net: nn.Module, index: torch.Tensor) -> bool:
    """One optimisation step on the global batch ``index``; False (and no update) on a NaN/inf."""
    if loop.graphed is not None:
        loss_value, finite = loop.graphed.step(loop.train_data, index, lambda rows: _eager_update(loop, net, rows))
    else:
        loss_value, finite = _eager_update(loop, net, index)
    loop.step_loss = loss_value
    if finite:
        loop.state.epoch_loss += loss_value * index.numel()
        loop.state.epoch_count += index.numel()
    return finite


def _eager_update(loop: Loop, net: nn.Module, index: torch.Tensor) -> tuple[float, bool]:
    """Forward, backward and the Adam update on the global batch ``index``, eagerly: the global
    loss and whether it and every gradient were finite (only then is the update applied)."""
    local, weight = loop.dist.shard(index)  # this rank's part of the global batch (all of it alone)
    batch = take(loop.train_data, local)
    loss = loop.loss_of(batch) if loop.loss_of is not None else loop.task.loss(net(batch), batch)
    if weight is not None:
        loss = loss * weight
    loop.optimizer.zero_grad(set_to_none=True)
    loss_value = loop.dist.global_loss(loss)  # the global batch's loss, the same on every rank
    finite = math.isfinite(loss_value)
    if finite:
        loss.backward()
        if loop.config.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(loop.model.parameters(), loop.config.grad_clip)
            finite = bool(torch.isfinite(norm))
        else:
            finite = grads_finite(p for group in loop.optimizer.param_groups for p in group["params"])
    if finite:
        loop.optimizer.step()
    return loss_value, finite


def _validate(loop: Loop, callbacks: Sequence[Callback]) -> None:
    """End of an epoch: rank 0 evaluates and tracks the best value; the ranks agree; callbacks save and report."""
    s, task = loop.state, loop.task
    s.epoch += 1
    improved, record = False, None
    if loop.dist.is_main:  # rank 0 alone evaluates; the others wait in the broadcast
        with precision_context(loop.config.precision, loop.device):
            val_loss, val_metrics = evaluate(loop.model, task, loop.val_data, loop.config.eval_batch_size)
        record = {
            "epoch": s.epoch,
            "step": s.step,
            "split": "val",
            "loss": val_loss,
            "metrics": val_metrics,
            "train_loss": s.epoch_loss / max(s.epoch_count, 1),
            "wall_time": round(s.wall_time, 3),
        }
        if loop.config.on_nonfinite == "skip":
            record["nonfinite_skipped"] = s.epoch_skipped  # steps of this epoch skipped for a NaN/inf
        if loop.config.lr_decay_at:
            record["lr"] = loop.optimizer.param_groups[0]["lr"]
        if s.threads is not None:
            record["threads"] = s.threads  # the latest probe's choice: thread counts change rounding
        if loop.config.report_train_metrics:  # this epoch's training data, evaluated like the validation set
            train_loss, train_metrics = evaluate(loop.model, task, loop.train_data, loop.config.eval_batch_size)
            record["train_metrics"] = {"loss": train_loss, **train_metrics}
        loop.last_record = record
        sign = 1.0 if task.higher_is_better else -1.0
        value = val_metrics.get(task.best_metric, val_loss)
        improved = s.best is None or sign * value > sign * s.best
        if improved:
            s.best = value
        if task.early_stop_target is not None and loop.config.early_stop:
            metric, target = task.early_stop_target
            loop.stopped_early = sign * val_metrics.get(metric, val_loss) >= sign * target
    loop.stopped_early, improved, s.best = loop.dist.broadcast((loop.stopped_early, improved, s.best))
    s.batch_in_epoch, s.epoch_loss, s.epoch_count, s.epoch_skipped = 0, 0.0, 0, 0
    for cb in callbacks:
        cb.on_epoch_end(loop, record, improved)


def train_config_from(defaults: dict[str, Any], flags: dict[str, Any], overrides: dict[str, str]) -> TrainConfig:
    """TrainConfig from the task's defaults, then CLI flags (None: not given), then ``--set train.*``."""
    merged = {**defaults, **{k: v for k, v in flags.items() if v is not None}, **overrides}
    return build_options(TrainConfig, merged, "train")
