"""A training step captured in one CUDA graph (``train.cuda_graphs=true``).

On a GPU the eager ART step is dozens of small kernel launches; replaying them as one
CUDA graph removes the launch overhead. :class:`GraphedStep` runs ``fit``'s steps so:

1. the first :data:`WARMUP_STEPS` full batches are ordinary eager steps on a side stream
   (they train; they also initialise Adam's state, the backend choice and any lazy
   compilation, which must happen before capture);
2. the next full batch is copied into static input buffers and forward, backward, the
   gradient clipping, the NaN/inf check and the fused Adam update (``capturable=True``)
   are captured with ``torch.cuda.graph``; every later full batch is ``index_select``-ed
   into the same buffers and the graph replayed;
3. after each replay the loss and the NaN/inf flag are read back in one transfer (the
   graph itself never synchronises with the host).

A non-finite step is skipped inside the graph, as the eager step skips it: the flag is set
from the loss and every gradient (or the clipped norm) on the GPU and handed to the fused
Adam kernel as ``found_inf`` (what ``torch.amp.GradScaler`` uses), which then leaves the
parameters, both moments and the step count untouched. Hence the graph needs the fused
Adam (``train.adam_impl=auto`` or ``fused``). The learning rate lives in a device tensor
that the graph reads, refreshed from the optimizer's ``lr`` before a replay when the
schedule changed it.

The epoch's last batch, when smaller than ``batch_size``, runs eagerly (a graph has fixed
shapes; padding would change the loss's mean). A capture that fails (a plugin's cell that
synchronises with the host, an op that cannot be captured) warns once and the run goes on
with eager steps. Python code in the forward pass runs once, at capture: a model whose
forward changes Python state per call does not see later replays.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ..base.env import warn
from ..base.errors import ConfigError, first_line

#: Eager steps on a side stream before the capture (PyTorch's recipe uses a few).
WARMUP_STEPS = 3
#: ``train.adam_impl`` values whose Adam skips a step inside the graph (``found_inf``).
GRAPH_ADAM = ("auto", "fused")

Batch = dict[str, Tensor]
#: An eager step on the batch of these indices: returns the loss and whether it was finite (and applied).
EagerStep = Callable[[Tensor], tuple[float, bool]]


def check_cuda_graphs(enabled: bool, device: torch.device, distributed: bool, adam_impl: str) -> None:
    """Refuse ``train.cuda_graphs=true`` where capture cannot work (a one-line ConfigError)."""
    if not enabled:
        return
    if device.type != "cuda":
        raise ConfigError(f"train.cuda_graphs=true needs a CUDA device (--device cuda), got {device.type}")
    if distributed:
        raise ConfigError("train.cuda_graphs=true does not support distributed training (torchrun); "
                          "set train.cuda_graphs=false")
    if adam_impl not in GRAPH_ADAM:
        raise ConfigError(f"train.cuda_graphs=true needs train.adam_impl=auto or fused (the fused Adam skips a "
                          f"non-finite step inside the graph), got {adam_impl}")


class GraphedStep:
    """Runs training steps by replaying one captured CUDA graph (module docstring).

    ``loss_of`` is ``batch -> loss`` (``step.forward_loss``); ``step`` takes the data, a
    batch's indices and the eager step to run where the graph cannot, and returns the loss
    and whether the step was finite (and so applied).
    """

    def __init__(self, loss_of: Callable[[Batch], Tensor], optimizer: torch.optim.Optimizer,
                 params: Iterable[nn.Parameter], batch_size: int, grad_clip: float | None, device: torch.device) -> None:
        self.loss_of, self.optimizer, self.batch_size, self.grad_clip = loss_of, optimizer, batch_size, grad_clip
        self.params = [p for p in params if p.requires_grad]
        self.device = device
        self.side = torch.cuda.Stream(device)
        self.warm = 0  # eager warm-up steps taken
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False  # capture failed: eager from then on
        self.static: Batch = {}
        self.grads: list[Tensor | None] = []
        self.lr: list[Tensor] = []
        self.lr_values: list[float] = []
        self.found: Tensor | None = None  # the NaN/inf flag the graph sets and Adam reads
        self.readback: Tensor | None = None  # [loss, found_inf], written by each replay

    def step(self, data: Batch, index: Tensor, eager: EagerStep) -> tuple[float, bool]:
        """One step on ``data``'s rows ``index``: a replay where possible, else ``eager``."""
        if index.numel() != self.batch_size or self.failed:
            return self._eager(eager, index)
        if self.graph is None and self.warm < WARMUP_STEPS:
            self.warm += 1
            self.side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.side):
                result = eager(index)
            torch.cuda.current_stream(self.device).wait_stream(self.side)
            return result
        self._fill(data, index)
        if self.graph is None and not self._capture():
            return self._eager(eager, index)
        self._refresh_lr()
        assert self.graph is not None and self.readback is not None
        self.graph.replay()
        loss, found = self.readback.tolist()  # the one synchronisation of the step
        return loss, found == 0.0

    def _eager(self, eager: EagerStep, index: Tensor) -> tuple[float, bool]:
        """An eager step beside the graph; the parameters' ``.grad`` then point at the graph's buffers again."""
        result = eager(index)
        if self.graph is not None:
            for p, g in zip(self.params, self.grads):
                p.grad = g
        return result

    def _fill(self, data: Batch, index: Tensor) -> None:
        """Copy the batch ``index`` of ``data`` into the static input buffers (made on first use)."""
        if not self.static:
            self.static = {k: v.new_empty((self.batch_size, *v.shape[1:])) for k, v in data.items()}
        for key, value in data.items():
            torch.index_select(value, 0, index, out=self.static[key])

    def _capture(self) -> bool:
        """Capture forward, backward, the NaN/inf check and the Adam update; False (with a warning) on failure."""
        groups = self.optimizer.param_groups
        for group in groups:
            group["capturable"] = True
        for p in self.params:  # a checkpoint from an unfused run keeps Adam's step count on the CPU
            state = self.optimizer.state.get(p)
            if state and isinstance(state.get("step"), Tensor) and state["step"].device != p.device:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
        self.lr_values = [float(g["lr"]) for g in groups]
        self.lr = [torch.tensor(v, device=self.device, dtype=torch.float32) for v in self.lr_values]
        self.found = found = torch.zeros(1, device=self.device)  # kept: the graph writes to it
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients in the graph's pool
        torch.cuda.synchronize(self.device)
        try:
            for group, lr in zip(groups, self.lr):
                group["lr"] = lr
            self.optimizer.found_inf = found  # type: ignore[attr-defined]  # read by the fused Adam
            with torch.cuda.graph(graph):
                loss = self.loss_of(self.static)
                loss.backward()
                found.zero_()
                self._check_finite(loss, found)
                self.optimizer.step()
                self.readback = torch.cat([loss.detach().float().reshape(1), found])
        except Exception as exc:  # noqa: BLE001 - any capture failure: warn and train eagerly
            self.failed = True
            torch.cuda.synchronize(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            warn(f"train.cuda_graphs: the training step could not be captured in a CUDA graph "
                 f"({type(exc).__name__}: {first_line(exc, 200, empty='')}); training on with eager steps")
            return False
        finally:
            del self.optimizer.found_inf  # type: ignore[attr-defined]  # eager steps must not read it
            for group, value in zip(groups, self.lr_values):
                group["lr"] = value
        self.graph = graph
        self.grads = [p.grad for p in self.params]
        return True

    def _check_finite(self, loss: Tensor, found: Tensor) -> None:
        """Set ``found`` to 1 (on the GPU) when the loss or a gradient is NaN/inf; clip first if asked."""
        found.copy_(torch.maximum(found, (~torch.isfinite(loss.detach())).float().reshape(1)))
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            found.copy_(torch.maximum(found, (~torch.isfinite(norm)).float().reshape(1)))
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g.detach())
        one = torch.ones(1, device=self.device)
        for group in by_dtype.values():  # x * 1.0 == x: the gradients keep their values
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)

    def _refresh_lr(self) -> None:
        """Copy a learning rate the schedule changed into the tensor the graph reads."""
        for i, group in enumerate(self.optimizer.param_groups):
            value = float(group["lr"])
            if value != self.lr_values[i]:
                self.lr[i].fill_(value)
                self.lr_values[i] = value

