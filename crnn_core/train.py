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

from .errors import CheckpointError, ConfigError, CrnnError
from .model import ContextualRNN
from .options import option, require
from .rundir import append_metrics, load_checkpoint, save_checkpoint, truncate_metrics
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
    """Training stopped by SIGINT/SIGTERM after saving ``last.pt``."""


class NonFinite(CrnnError):
    """A NaN or infinite loss or gradient (with ``on_nonfinite=stop``)."""


@dataclass
class Progress:
    """Callbacks for progress display; the defaults do nothing."""

    on_epoch_start: Callable[[int, int], None] = lambda epoch, steps: None
    on_step: Callable[[], None] = lambda: None
    on_epoch_end: Callable[[dict[str, Any]], None] = lambda record: None


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    return torch.device(name)


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
    """Turns SIGINT/SIGTERM into a flag checked between steps (a second signal aborts at once)."""

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
        if self.signal is not None:
            raise KeyboardInterrupt
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
    device = resolve_device(cfg.device)
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
    epoch_loss, epoch_count = 0.0, 0
    if resume:
        ckpt = load_checkpoint(ckpt_dir / "last.pt")
        if ckpt.get("config") != checkpoint_identity(config_record):
            raise CheckpointError(f"{ckpt_dir / 'last.pt'} was written by a different configuration than {run_dir}/config.json")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{ckpt_dir / 'last.pt'} does not fit this model: {str(exc).splitlines()[0][:200]}") from None
        epoch, batch_in_epoch, step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        wall, best = ckpt["wall_time"], ckpt["best"]
        epoch_loss, epoch_count = ckpt["epoch_loss"], ckpt["epoch_count"]
        torch.set_rng_state(ckpt["rng"])
        truncate_metrics(metrics_path, epoch)
    else:
        torch.manual_seed(cfg.seed)

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            path,
            {
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
                "rng": torch.get_rng_state(),
            },
        )

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
                batch = take(train_data, index)
                loss = task.loss(model(batch), batch)
                optimizer.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss))
                if finite:
                    loss.backward()
                    if cfg.grad_clip is not None:
                        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        finite = bool(torch.isfinite(norm))
                    else:
                        finite = _grads_finite(model)
                if finite:
                    optimizer.step()
                    epoch_loss += loss.item() * index.numel()
                    epoch_count += index.numel()
                elif cfg.on_nonfinite == "stop":
                    raise NonFinite(
                        f"non-finite loss or gradient at epoch {epoch + 1}, step {step + 1} "
                        f"(lower --lr or set train.grad_clip; last good checkpoint: {ckpt_dir / 'last.pt'})"
                    )
                batch_in_epoch += 1
                step += 1
                progress.on_step()
                if stop.signal is not None:
                    wall += time.perf_counter() - started
                    checkpoint(ckpt_dir / "last.pt")
                    name = signal.Signals(stop.signal).name
                    raise Interrupted(f"{name} received: saved {ckpt_dir / 'last.pt'}; continue with: crnn run --resume {run_dir}")
            wall += time.perf_counter() - started
            epoch += 1
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
            batch_in_epoch, epoch_loss, epoch_count = 0, 0.0, 0
            append_metrics(metrics_path, record)
            checkpoint(ckpt_dir / "last.pt")
            if improved:
                checkpoint(ckpt_dir / "best.pt")
            progress.on_epoch_end(record)
    return {
        "run_dir": str(run_dir),
        "epochs": epoch,
        "steps": step,
        "stopped_early": stopped_early,
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
    from .options import build_options

    merged = {**defaults, **{k: v for k, v in flags.items() if v is not None}, **overrides}
    return build_options(TrainConfig, merged, "train")
