"""Data-parallel training with ``torch.distributed``: process-group set-up and the trainer's helpers.

``torchrun --nproc-per-node N -m crnn_core run ...`` starts N copies of ``crnn run``;
torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``, and :func:`setup` joins the process group (``gloo`` on CPU, ``nccl`` on
CUDA, one GPU per local rank). Without those variables (or with ``WORLD_SIZE=1``)
nothing here does anything and training is the plain single-process loop.

What the trainer does with N processes (see ``crnn_core/training/train.py``):

- every rank builds the same model (same seed) and wraps it in
  ``DistributedDataParallel``, which averages the gradients after each backward pass;
- the batch order is the global one (a permutation fixed by seed and epoch); each
  global batch of ``batch_size`` indices is split into N near-equal contiguous shards
  and rank r trains on shard r. The local loss is weighted by ``N * n_r / batch_size``
  so the averaged gradient is the gradient of the global batch's mean loss, also for a
  last batch that does not divide evenly: one process and N processes with the same
  global batch follow the same trajectory up to float rounding (models that draw
  random numbers while training, e.g. ``init.distribution=normal``, draw them per rank);
- after each step the ranks agree on the training loss (all-reduce) and on whether a
  stop signal arrived (any rank), so they stop at the same step;
- rank 0 alone evaluates, writes metrics.jsonl, config.json and checkpoints; the
  checkpoint holds every rank's RNG state; the other ranks wait at a barrier.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from ..base.errors import ConfigError, CrnnError, first_line

T = TypeVar("T")

#: Environment variables torchrun sets for each worker.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How long a collective may wait (rank 0 evaluates and writes checkpoints while the others wait).
TIMEOUT = datetime.timedelta(minutes=30)


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)`` for ``cpu``, ``cuda`` or ``cuda:N``, or a one-line error (a malformed name,
    another device type, CUDA asked for where PyTorch sees none, an index beyond the GPUs)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device name (use cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: crnn runs on cpu or cuda, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for (--device / train.device), but PyTorch sees no CUDA device "
                          f"here: {cuda_remedy()}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def cuda_remedy() -> str:
    """What to do where PyTorch sees no CUDA device: for a CPU-only build of PyTorch, install a CUDA
    build (the package index that serves them); for a CUDA build, check the GPU and its driver."""
    if torch.version.cuda is None:
        return (f"this PyTorch {torch.__version__} is a CPU-only build; install a CUDA build, e.g. "
                f"pip install torch --index-url https://download.pytorch.org/whl/cu124 (pytorch.org lists the "
                f"builds; pick your CUDA version), then run: crnn kernels")
    return (f"this PyTorch is built for CUDA {torch.version.cuda}, but finds no GPU: check nvidia-smi, the driver "
            f"and CUDA_VISIBLE_DEVICES")


def launcher() -> list[str]:
    """The words that start this process's command again: ``crnn``, or the torchrun launch of this job."""
    ctx = context()
    if not ctx.enabled:
        return ["crnn"]
    nodes = os.environ.get("GROUP_WORLD_SIZE", "1")
    per_node = os.environ.get("LOCAL_WORLD_SIZE", str(ctx.world_size))
    return ["torchrun", *(["--nnodes", nodes] if nodes != "1" else []), "--nproc-per-node", per_node, "-m", "crnn_core"]


def launched_by_torchrun() -> bool:
    """Whether this process is a worker of a multi-process torchrun job."""
    return all(name in os.environ for name in TORCHRUN_VARS) and _env_int("WORLD_SIZE") > 1


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise ConfigError(f"torchrun variable {name} is missing or not an integer ({os.environ.get(name)!r})") from None


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; ``world_size == 1`` means plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- devices and the model ---------------------------------------------------------------------
    def device_name(self, name: str) -> str:
        """``cuda`` becomes this rank's GPU ``cuda:<local_rank>``; anything else is unchanged."""
        if self.enabled and name == "cuda":
            return f"cuda:{self.local_rank}"
        return name

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (the model itself when not distributed)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    # -- data ---------------------------------------------------------------------------------------
    def shard(self, index: Tensor) -> tuple[Tensor, float | None]:
        """This rank's part of a global batch ``index``, and the loss weight (None: no weighting).

        Shards are contiguous and differ in size by at most one. A rank left without an
        example (a last batch smaller than the world) trains on the batch's first example
        with weight 0, so every rank still takes part in the gradient all-reduce.
        """
        if not self.enabled:
            return index, None
        part = index.tensor_split(self.world_size)[self.rank]
        if part.numel() == 0:
            return index[:1], 0.0
        return part, self.world_size * part.numel() / index.numel()

    # -- agreement between ranks --------------------------------------------------------------------
    def global_loss(self, loss: Tensor) -> float:
        """The loss of the global batch (its mean over ranks of weighted shard losses); NaN/inf anywhere spreads."""
        if not self.enabled:
            return loss.item()
        value = loss.detach().reshape(1).to(torch.float64).clone()
        torch.distributed.all_reduce(value)
        return value.item() / self.world_size

    def agree_max(self, value: int) -> int:
        """The largest of the ranks' ``value`` (e.g. a signal number, 0 for none), on every rank."""
        if not self.enabled:
            return value
        box = torch.tensor([value], dtype=torch.int64, device=self._collective_device())
        torch.distributed.all_reduce(box, op=torch.distributed.ReduceOp.MAX)
        return int(box.item())

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result to every rank.

        A ``CrnnError`` on rank 0 is raised on every rank (the others with the same
        message), so a refused ``--out`` or a corrupt file stops the whole job at once.
        """
        if not self.enabled:
            return fn()
        result: Any = None
        error: CrnnError | None = None
        if self.is_main:
            try:
                result = fn()
            except CrnnError as exc:
                error = exc
        outcome = self.broadcast((result, None if error is None else (type(error).__name__, str(error))))
        if error is not None:
            raise error
        if outcome[1] is not None:
            raise _RemoteError(outcome[1][1])
        return outcome[0]

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                torch.distributed.barrier(device_ids=[self.local_rank])
            else:
                torch.distributed.barrier()

    # -- random number generators -------------------------------------------------------------------
    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's RNG while training: ``seed`` on rank 0, distinct streams elsewhere."""
        return seed if self.rank == 0 else seed * 1_000_003 + 7919 * self.rank

    def gather_rng(self) -> list[Tensor]:
        """Every rank's CPU RNG state (a collective: all ranks call it)."""
        state = torch.get_rng_state()
        if not self.enabled:
            return [state]
        states: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(states, state)
        return states

    def restore_rng(self, checkpoint: dict[str, Any], seed: int) -> None:
        """Set this rank's RNG from a checkpoint (written by any number of processes)."""
        states = checkpoint.get("rng_ranks")
        if self.rank == 0:
            torch.set_rng_state(checkpoint["rng"])
        elif isinstance(states, list) and len(states) == self.world_size:
            torch.set_rng_state(states[self.rank])
        else:  # resumed with more processes than wrote the checkpoint: a fresh stream per rank
            torch.manual_seed(self.rank_seed(seed) + 1_000_003 * int(checkpoint.get("step", 0)))

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


class _RemoteError(CrnnError):
    """A ``CrnnError`` raised on rank 0, re-raised on the other ranks (rank 0 reports it)."""

    shown_by_rank_0 = True


_CONTEXT = DistContext()


def context() -> DistContext:
    """The current process's context (single-process unless :func:`setup` joined a group)."""
    return _CONTEXT


def setup(device: str) -> DistContext:
    """Join the torchrun job's process group, if this process is a torchrun worker.

    ``device`` (``cpu`` / ``cuda``) picks the backend: gloo on CPU, nccl on CUDA.
    Idempotent; returns the single-process context when not launched by torchrun.
    """
    global _CONTEXT
    resolve_device(device)  # before anything is written: --device cuda without CUDA leaves no run directory
    if _CONTEXT.enabled or not launched_by_torchrun():
        return _CONTEXT
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed support")
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    cuda = device.startswith("cuda")
    if cuda:
        resolve_device(device)  # a one-line error where PyTorch sees no CUDA device
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} has no GPU (this machine has {torch.cuda.device_count()}): "
                              "use at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot join the torchrun process group ({backend}): {first_line(exc, 200)}") from None
    _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)
    return _CONTEXT


def teardown(synchronise: bool = True) -> None:
    """Leave the process group (if :func:`setup` joined one).

    ``synchronise``: wait for every rank first (when they all finished, or all stopped at
    the same step); pass False after an error on this rank alone, so it does not wait.
    """
    global _CONTEXT
    if _CONTEXT.enabled:
        import gc

        import torch.distributed as dist

        if dist.is_initialized():
            if synchronise:
                _CONTEXT.barrier()
            gc.collect()  # drop DistributedDataParallel objects that still hold the group
            dist.destroy_process_group()
        _CONTEXT = DistContext()
