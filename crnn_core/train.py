"""The training loop: Adam on shuffled index batches, validation each epoch, atomic checkpoints.

Deterministic on CPU: the model is initialised from ``seed``, epoch e's batch order is
a permutation drawn from ``(seed, e)``, and checkpoints carry the RNG state and the
position in the epoch, so a resumed run continues exactly where the last one stopped.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from . import distributed
from .distributed import resolve_device
from .errors import CheckpointError, ConfigError, CrnnError
from .model import ContextualRNN
from .options import build_options, option, require
from .rundir import append_metrics, load_checkpoint, resume_checked, save_checkpoint, truncate_metrics
from .task import Batch, Task


@dataclass
class TrainConfig:
    epochs: int = option(10, "passes over the training set")
    batch_size: int = option(128, "examples per optimisation step")
    lr: float = option(1e-3, "Adam learning rate")
    seed: int = option(0, "seed of the model initialisation, batch order and sampling")
    device: str = option("cpu", "cpu or cuda")
    grad_clip: float | None = option(None, "clip the global gradient norm at this value (none: no clipping)")
    early_stop: bool = option(False, "stop once the task's early-stop target is reached (ART: 100% accuracy)")
    eval_batch_size: int = option(2048, "examples per validation batch")
    on_nonfinite: Literal["stop", "skip"] = option("stop", "on a NaN/inf loss or gradient: stop the run, or skip the step")
    threads: int | None = option(None, "torch intra-op threads (none: PyTorch's default)")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        require(self.lr > 0, f"lr must be positive, got {self.lr}")
        require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive, got {self.grad_clip}")
        require(self.device in ("cpu", "cuda") or self.device.startswith("cuda:"), f"device must be cpu or cuda, got {self.device!r}")
        require(self.threads is None or self.threads > 0, f"threads must be positive, got {self.threads}")


class Interrupted(CrnnError):
    """Training stopped by SIGINT/SIGTERM after saving ``last.pt``; exit status 128 + the signal's number."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class NonFinite(CrnnError):
    """A NaN or infinite loss or gradient (with ``on_nonfinite=stop``); exit status 3."""

    exit_code = 3


@dataclass
class Progress:
    """Callbacks for progress display; the defaults do nothing."""

    on_epoch_start: Callable[[int, int], None] = lambda epoch, steps: None
    on_step: Callable[[], None] = lambda: None
    on_epoch_end: Callable[[dict[str, Any]], None] = lambda record: None


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The batch order of an epoch: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def take(data: Batch, index: torch.Tensor) -> Batch:
    return {key: value[index] for key, value in data.items()}


@torch.no_grad()
def evaluate(model: ContextualRNN, task: Task, data: Batch, batch_size: int) -> tuple[float, dict[str, float]]:
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


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps (the same signal again aborts at once).

    A different second signal is ignored: supervisors (torchrun, schedulers) often follow a
    terminal's SIGINT with a SIGTERM, and that must not cut the checkpoint short.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal == signum:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _grads_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def train(
    model: ContextualRNN,
    task: Task,
    cfg: TrainConfig,
    run_dir: Path,
    config_record: dict[str, Any],
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``task``; returns a summary. Writes metrics.jsonl and checkpoints in ``run_dir``."""
    progress = progress or Progress()
    dist = distributed.context()  # single-process unless launched by torchrun (crnn_core/distributed.py)
    device = resolve_device(dist.device_name(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model.to(device)
    train_data = {k: v.to(device) for k, v in task.dataset("train").items()}
    val_data = {k: v.to(device) for k, v in task.dataset("val").items()}
    n = next(iter(train_data.values())).shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt_dir = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    sign = 1.0 if task.higher_is_better else -1.0

    epoch, batch_in_epoch, step, wall, best = 0, 0, 0, 0.0, None
    epoch_loss, epoch_count, skipped = 0.0, 0, 0
    if resume:
        ckpt = load_checkpoint(ckpt_dir / "last.pt")
        if ckpt.get("config") != checkpoint_identity(config_record):
            raise CheckpointError(f"{ckpt_dir / 'last.pt'} was written by a different configuration than {run_dir}/config.json")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{ckpt_dir / 'last.pt'} does not fit this model: {str(exc).splitlines()[0][:200]}") from None
        try:
            epoch, batch_in_epoch, step = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"]), int(ckpt["step"])
            wall, best = float(ckpt["wall_time"]), None if ckpt["best"] is None else float(ckpt["best"])
            epoch_loss, epoch_count = float(ckpt["epoch_loss"]), int(ckpt["epoch_count"])
            skipped = int(ckpt.get("nonfinite_skipped", 0))
            if not (0 <= epoch and 0 <= batch_in_epoch <= steps_per_epoch and 0 <= step and 0 <= epoch_count):
                raise ValueError(f"position epoch {epoch}, batch {batch_in_epoch}, step {step} is impossible")
            dist.restore_rng(ckpt, cfg.seed)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt_dir / 'last.pt'} has a missing or invalid field: {str(exc).splitlines()[0][:200]}") from None
        resume_checked(run_dir, ckpt, cfg.epochs, dist.is_main)  # nothing to do? repairs, then the deferred writes
        if dist.is_main:
            truncate_metrics(metrics_path, epoch)
    else:
        torch.manual_seed(dist.rank_seed(cfg.seed))
    net = dist.wrap(model, device)  # DistributedDataParallel when several processes train

    def checkpoint(path: Path) -> None:
        rng_ranks = dist.gather_rng()  # a collective: every rank calls checkpoint()
        if dist.is_main:
            save_checkpoint(path, payload(rng_ranks))
        dist.barrier()

    def payload(rng_ranks: list[torch.Tensor]) -> dict[str, Any]:
        data = {
            "config": checkpoint_identity(config_record),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "wall_time": wall,
            "best": best,
            "epoch_loss": epoch_loss,
            "epoch_count": epoch_count,
            "nonfinite_skipped": skipped,
            "rng": rng_ranks[0],
        }
        if dist.enabled:  # every rank's RNG, so each continues its own stream on --resume
            data.update(rng_ranks=rng_ranks, world_size=dist.world_size)
        return data

    stopped_early = False
    last_record: dict[str, Any] | None = None
    model.train()
    with _StopFlag() as stop:
        while epoch < cfg.epochs and not stopped_early:
            order = epoch_order(n, cfg.seed, epoch).to(device)
            progress.on_epoch_start(epoch + 1, steps_per_epoch - batch_in_epoch)
            started = time.perf_counter()
            while batch_in_epoch < steps_per_epoch:
                index = order[batch_in_epoch * cfg.batch_size : (batch_in_epoch + 1) * cfg.batch_size]
                local, weight = dist.shard(index)  # this rank's part of the global batch (all of it alone)
                batch = take(train_data, local)
                loss = task.loss(net(batch), batch)
                if weight is not None:
                    loss = loss * weight
                optimizer.zero_grad(set_to_none=True)
                loss_value = dist.global_loss(loss)  # the global batch's loss, the same on every rank
                finite = math.isfinite(loss_value)
                if finite:
                    loss.backward()
                    if cfg.grad_clip is not None:
                        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        finite = bool(torch.isfinite(norm))
                    else:
                        finite = _grads_finite(model)
                if finite:
                    optimizer.step()
                    epoch_loss += loss_value * index.numel()
                    epoch_count += index.numel()
                elif cfg.on_nonfinite == "stop":
                    kept = ckpt_dir / "last.pt"
                    kept_text = f"last good checkpoint: {kept}" if kept.is_file() else "no checkpoint was written yet"
                    raise NonFinite(
                        f"non-finite loss or gradient at epoch {epoch + 1}, step {step + 1} "
                        f"(lower --lr, set train.grad_clip, or --set train.on_nonfinite=skip; {kept_text})"
                    )
                else:
                    skipped += 1
                batch_in_epoch += 1
                step += 1
                progress.on_step()
                signum = dist.agree_max(stop.signal or 0)  # the ranks stop at the same step
                if signum:
                    wall += time.perf_counter() - started
                    checkpoint(ckpt_dir / "last.pt")
                    name = signal.Signals(signum).name
                    again = " ".join([*distributed.launcher(), "run"])
                    raise Interrupted(
                        f"{name} received: saved {ckpt_dir / 'last.pt'} at epoch {epoch + 1}, step {step}; "
                        f"continue with: {again} --resume {run_dir}",
                        signum,
                    )
            wall += time.perf_counter() - started
            epoch += 1
            improved = False
            if dist.is_main:  # rank 0 alone evaluates and writes; the others wait in the broadcast
                val_loss, val_metrics = evaluate(model, task, val_data, cfg.eval_batch_size)
                record = {
                    "epoch": epoch,
                    "step": step,
                    "split": "val",
                    "loss": val_loss,
                    "metrics": val_metrics,
                    "train_loss": epoch_loss / max(epoch_count, 1),
                    "wall_time": round(wall, 3),
                }
                last_record = record
                value = val_metrics.get(task.best_metric, val_loss)
                improved = best is None or sign * value > sign * best
                if improved:
                    best = value
                if task.early_stop_target is not None and cfg.early_stop:
                    metric, target = task.early_stop_target
                    stopped_early = sign * val_metrics.get(metric, val_loss) >= sign * target
                append_metrics(metrics_path, record)
            stopped_early, improved, best = dist.broadcast((stopped_early, improved, best))
            batch_in_epoch, epoch_loss, epoch_count = 0, 0.0, 0
            checkpoint(ckpt_dir / "last.pt")
            if improved:
                checkpoint(ckpt_dir / "best.pt")
            if last_record is not None:
                progress.on_epoch_end(last_record)
    return {
        "run_dir": str(run_dir),
        "epochs": epoch,
        "steps": step,
        "stopped_early": stopped_early,
        "nonfinite_skipped": skipped,
        "best": {task.best_metric: best},
        "final": last_record,
        "wall_time": round(wall, 3),
    }


#: TrainConfig fields that may change when a run is resumed (they do not change its results).
RESUMABLE_CHANGES = ("epochs", "early_stop", "device", "threads", "eval_batch_size")


def checkpoint_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's config that a checkpoint must match to be resumed."""
    train_part = {k: v for k, v in config.get("train", {}).items() if k not in RESUMABLE_CHANGES}
    return {"model": config.get("model"), "train": train_part}


def train_config_from(defaults: dict[str, Any], flags: dict[str, Any], overrides: dict[str, str]) -> TrainConfig:
    """TrainConfig from the task's defaults, then CLI flags (None: not given), then ``--set train.*``."""
    merged = {**defaults, **{k: v for k, v in flags.items() if v is not None}, **overrides}
    return build_options(TrainConfig, merged, "train")
