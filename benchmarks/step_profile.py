"""Where an ART training step's time goes: a per-part table (``art_epoch.py --profile``).

One process, the fast-weights cell on ART, batches of 128 as ``crnn run`` takes them. Each
part of the step runs forward and backward on its own, behind detached inputs, so its time
is its forward plus its backward:

* ``data``        the batch's rows (``train.take``)
* ``embedding``   the task's encoder (and the context features, for a context init)
* ``init``        the initial state: zeros (zero), or the context network and the heads (learned)
* ``projection``  the cell's input projection ``U x + b``
* ``op``          the fast-weights unroll (the fused op, or the reference)
* ``head``        the task's output head and the loss
* ``optimiser``   ``zero_grad``, the NaN/inf check of the gradients, Adam's step
* ``other``       a whole ``train._step`` (what training runs) minus the parts' sum: autograd
                  across the parts, Python glue, the loss's ``item()``

The "before" rows (``train.adam_impl=for-loop``) run the baseline step:
the cell projects the embeddings itself (``TaskModel.project_in_task = False``) and the
gradients are checked parameter by parameter. In the "after" rows the ART task projects its
embedding table once and looks it up (``TaskModule.encode_projected``), counted as ``projection``,
and a learned init runs on the context table's 37 rows (``TaskModule.context_rows``), counted
as ``init``.

Blocks of whole steps and of part-wise steps alternate, on the same model, so both see the
same load. With ``train.compile=true`` each part's forward is compiled on its own (the whole
step compiles the forward as one graph); with ``train.precision=bf16-mixed`` the forward
parts run under autocast. ``--clock cpu`` times the process's CPU time (all threads), which
other processes disturb less than the elapsed time.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from crnn_core.training import train
from crnn_core.interfaces.cell import is_zero_constant
from crnn_core.layers.model import ModelSpec, build_model
from crnn_core.plugin_manager.manager import get_plugins
from crnn_core.training.step import forward_loss, precision_context

PARTS = ("data", "embedding", "init", "projection", "op", "head", "optimiser")


def _old_grads_finite(params: Any) -> bool:
    """The per-parameter check ``fit`` ran before crnn_core.training.step.grads_finite (for ``adam_impl=for-loop`` rows)."""
    return all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)


class PartTimer:
    """Accumulates seconds per part with the chosen clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self._t = 0.0

    def start(self) -> None:
        self._t = self.clock()

    def lap(self, part: str) -> None:
        now = self.clock()
        self.seconds[part] += now - self._t
        self._t = now


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_(t.requires_grad)


def _backward(outputs: list[torch.Tensor | None], grads: list[torch.Tensor | None]) -> None:
    pairs = [(o, g) for o, g in zip(outputs, grads) if o is not None and g is not None and o.requires_grad]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])


def profile_step(init: str, overrides: dict[str, dict[str, str]], steps: int, blocks: int, clock: str,
                 threads: int | None) -> dict[str, Any]:
    """Per-part and whole-step milliseconds (medians over ``blocks`` blocks of ``steps`` steps)."""
    plugins = get_plugins()
    task_opts = {"train_size": 100_000, "val_size": 256, **overrides.get("task", {})}
    spec = ModelSpec(cell="fastweights", init=init, task="art", cell_options={"backend": "fused", **overrides.get("cell", {})},
                     task_options=task_opts)
    built = build_model(spec, plugins)
    cfg = train.train_config_from(built.task.training_defaults, {"threads": threads}, overrides.get("train", {}))
    loop = train._prepare(built.model, built.task, cfg)
    model, task, device = built.model, built.task, loop.device
    train.check_task_metrics(model, task, loop.val_data)
    loop.loss_of = forward_loss(model, task.loss, cfg.precision, device, cfg.compile)
    old_check = cfg.adam_impl == "for-loop"
    model.project_in_task = not old_check  # the "before" rows: the cell projects the B x T embeddings itself
    original_check = train.grads_finite
    if old_check:
        train.grads_finite = _old_grads_finite  # the whole step as it ran before (train.py imports the name)
    try:
        return _measure(loop, built, cfg, old_check, steps, blocks, clock)
    finally:
        train.grads_finite = original_check


def _measure(loop: train.Loop, built: Any, cfg: train.TrainConfig, old_check: bool, steps: int, blocks: int,
             clock: str) -> dict[str, Any]:
    model, task, device = built.model, built.task, loop.device
    tm, rnn, cell = model.task_module, model.rnn, model.cell
    unroll, _ = cell._unroll_for(device)
    maybe = (lambda f: torch.compile(f, options={"fallback_random": True})) if cfg.compile else (lambda f: f)
    if cell.backend == "reference":  # compiled like the other parts (the fused op gains nothing from it)
        unroll = maybe(unroll)

    in_task = model.project_in_task and tm.encode_projected(train.take(loop.train_data, torch.arange(2)), cell.U) is not None

    by_rows = model._context_rows(train.take(loop.train_data, torch.arange(2)), None) is not None

    def embed(batch):
        x = None if in_task else tm.encode(batch)  # in_task: the projection part looks the projected table up
        return x, (tm.context(batch) if rnn.init.uses_context and not by_rows else None)

    def init_state(ctx, batch):
        if by_rows:  # the init strategy on the context table's rows, the states looked up (TaskModel)
            return model.initial_state(batch, batch["tokens"].shape[0])
        return rnn.initial_state(batch["tokens"].shape[0], ctx)

    def project(x, batch):
        return tm.encode_projected(batch, cell.U) if in_task else cell.U(x)

    def head_loss(out, batch):
        return task.loss(tm.head(out), batch)

    embed, init_state, project, head_loss = (maybe(f) for f in (embed, init_state, project, head_loss))
    params = list(model.parameters())
    check = train.grads_finite

    def parts_step(index: torch.Tensor, timer: PartTimer) -> None:
        timer.start()
        batch = train.take(loop.train_data, index)
        timer.lap("data")
        with precision_context(cfg.precision, device):
            x, ctx = embed(batch)
            timer.lap("embedding")
            ctx_leaf = _leaf(ctx)
            state = init_state(ctx_leaf, batch)
            timer.lap("init")
            x_leaf = _leaf(x)
            xp = project(x_leaf, batch)
            timer.lap("projection")
            xp_l, h0_l, A0_l = _leaf(xp), _leaf(state["h"]), _leaf(state["A"])
            A0_in = None if is_zero_constant(A0_l) else A0_l.contiguous()  # as FastWeights._unroll passes it
            out, _ = unroll(xp_l.contiguous(), h0_l.contiguous(), A0_in, cell.W, cell.norm.weight, cell.norm.bias,
                            cell.lam, cell.eta, cell.inner_steps, cell.activation, cell.norm.eps, cell.a_update,
                            final_state=not model.project_in_task)  # TaskModel's projected path skips A_T
            timer.lap("op")
            out_l = _leaf(out)
            loss = head_loss(out_l, batch)
        loss.item()
        loss.backward()
        timer.lap("head")
        _backward([out], [out_l.grad])
        timer.lap("op")
        _backward([xp], [xp_l.grad])
        timer.lap("projection")
        _backward([state["h"], state["A"]], [h0_l.grad, A0_l.grad])
        timer.lap("init")
        _backward([x, ctx], [None if x_leaf is None else x_leaf.grad, None if ctx_leaf is None else ctx_leaf.grad])
        timer.lap("embedding")
        if check(params):
            loop.optimizer.step()
        loop.optimizer.zero_grad(set_to_none=True)
        timer.lap("optimiser")

    tick = time.process_time if clock == "cpu" else time.perf_counter
    order = train.epoch_order(next(iter(loop.train_data.values())).shape[0], cfg.seed, 0)
    bs, position = cfg.batch_size, 0

    def next_index() -> torch.Tensor:
        nonlocal position
        if (position + 1) * bs > order.numel():
            position = 0
        position += 1
        return order[(position - 1) * bs: position * bs]

    for _ in range(max(steps // 2, 10)):  # warm-up (and compilation) of both paths
        train._step(loop, model, next_index())
        parts_step(next_index(), PartTimer(tick))
    whole_ms, part_ms = [], {p: [] for p in PARTS}
    for _ in range(blocks):
        t = tick()
        for _ in range(steps):
            train._step(loop, model, next_index())
        whole_ms.append((tick() - t) / steps * 1e3)
        timer = PartTimer(tick)
        for _ in range(steps):
            parts_step(next_index(), timer)
        for p in PARTS:
            part_ms[p].append(timer.seconds[p] / steps * 1e3)
    med = {p: statistics.median(v) for p, v in part_ms.items()}
    whole = statistics.median(whole_ms)
    med["other"] = whole - sum(med.values())
    spread = (max(whole_ms) - min(whole_ms)) / whole if whole else 0.0
    return {"init": model.init.name, "overrides": cfg.__dict__, "parts_ms": med, "step_ms": whole, "step_spread": spread,
            "backend": cell.backend_for(device), "threads": torch.get_num_threads()}


def table(results: list[dict[str, Any]], labels: list[str]) -> str:
    """The per-part table: one column (ms per step and share) per result."""
    rows = [f"{'part':<11}" + "".join(f"{label:>24}" for label in labels)]
    for part in (*PARTS, "other"):
        cells = [f"{r['parts_ms'][part]:8.3f} ms {100 * r['parts_ms'][part] / r['step_ms']:5.1f} %" for r in results]
        rows.append(f"{part:<11}" + "".join(f"{c:>24}" for c in cells))
    rows.append(f"{'step':<11}" + "".join(f"{r['step_ms']:8.3f} ms  ±{100 * r['step_spread']:3.0f} %".rjust(24)
                                          for r in results))
    rows.append(f"{'epoch (782)':<11}" + "".join(f"{r['step_ms'] * 782 / 1e3:9.2f} s".rjust(24) for r in results))
    return "\n".join(rows)
