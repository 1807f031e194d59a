"""Loggers beside metrics.jsonl: ``crnn run --log tensorboard`` (``train.loggers``).

:class:`TensorBoardLogger` is a training callback (``crnn_core.training.train.Callback``) that
writes TensorBoard event files: the loss of every step (``train/loss``), the learning
rate and the epoch's training loss (``train/lr``, ``train/epoch_loss``), each validation
value (``val/loss``, ``val/<metric>``), the resolved configuration as hparams and, for a
task that generates sequences (LCD), a figure of samples every ``figure_every`` epochs
(``samples``). Every value is logged at the global step, the x axis of all curves.

metrics.jsonl stays the source of truth; the event files are a view of the same values.
A resumed run continues the same curves: the writer opened on resume purges every event
after the checkpoint's step (``SummaryWriter(purge_step=...)``), so the steps the
interrupted run logged past its checkpoint are not shown twice. Only rank 0 writes.

The ``tensorboard`` package is an optional extra (``pip install 'crnn[tensorboard]'``),
imported when the logger starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..base.env import install_command
from ..base.errors import ConfigError
from .train import Callback, Loop, TrainConfig

#: The subdirectory of a run directory that holds its TensorBoard event files.
TENSORBOARD_DIR = "tensorboard"


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line error naming the extra."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it; its ImportError is less clear
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--log tensorboard needs the tensorboard package, an optional extra: "
                          + install_command("tensorboard")) from None
    return SummaryWriter


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as TensorBoard hparams: ``{"model.cell": "lstm", "train.lr": 0.001, ...}``.

    Numbers, strings and booleans stay as they are; None and anything else become strings.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


class TensorBoardLogger(Callback):
    """Writes a run's curves, hparams and sample figures as TensorBoard event files in ``log_dir``.

    ``hparams`` is the configuration shown in TensorBoard's HPARAMS tab (nested dicts are
    flattened; default: the :class:`~crnn_core.training.train.TrainConfig` passed to ``fit``).
    ``figure_every`` draws a figure of generated samples every that many epochs for a task
    that generates (``Task.rollout``, and its generation parameters in the validation
    split, as LCD's ``period`` and ``x0``); 0 draws none. Pass it to ``fit`` after the
    :class:`~crnn_core.runs.run.RunDirWriter` (which restores a resumed run's position first)::

        fit(model, task, cfg, callbacks=[writer, TensorBoardLogger(writer.run_dir / "tensorboard")])
    """

    def __init__(self, log_dir: Path | str, hparams: dict[str, Any] | None = None, figure_every: int = 0) -> None:
        if figure_every < 0:
            raise ConfigError(f"figure_every must be 0 (no figures) or positive, got {figure_every}")
        self.log_dir = Path(log_dir)
        self.hparams = hparams
        self.figure_every = figure_every
        self.writer: Any = None
        self._writer_class = summary_writer_class()  # a missing extra fails before training starts

    # -- callbacks -------------------------------------------------------------------------------
    def on_fit_start(self, loop: Loop) -> None:
        if not loop.dist.is_main:
            return
        self.close()
        if self.figure_every:
            from ..interfaces.task import can_rollout

            if can_rollout(loop.task):
                self._check_matplotlib()
        # Events after the (restored) position belong to an interrupted attempt: TensorBoard drops
        # every event of step >= purge_step written before this writer's first event.
        self.writer = self._writer_class(str(self.log_dir), purge_step=loop.state.step + 1)
        self._write_hparams(loop)
        self.writer.flush()

    def on_step_end(self, loop: Loop) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loop.step_loss, loop.state.step)

    def on_epoch_end(self, loop: Loop, record: dict[str, Any] | None, improved: bool) -> None:
        if self.writer is None or record is None:
            return
        step = record["step"]
        self.writer.add_scalar("train/epoch_loss", record["train_loss"], step)
        self.writer.add_scalar("train/lr", loop.optimizer.param_groups[0]["lr"], step)
        self.writer.add_scalar("val/loss", record["loss"], step)
        for name, value in record["metrics"].items():
            self.writer.add_scalar(f"val/{name}", value, step)
        if self.figure_every and record["epoch"] % self.figure_every == 0:
            self._write_samples(loop, step)
        self.writer.flush()
        if loop.state.epoch >= loop.config.epochs or loop.stopped_early:  # fit's last hook
            self.close()

    def on_stop(self, loop: Loop) -> None:
        self.close()

    def on_nonfinite(self, loop: Loop) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file (the last epoch, a stop and a NaN/inf close it themselves)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @staticmethod
    def _check_matplotlib() -> None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("the TensorBoard sample figures (train.figure_every) need matplotlib, an optional extra: "
                              f"{install_command('plot')}, or --set train.figure_every=0") from None

    # -- content ---------------------------------------------------------------------------------
    def _write_hparams(self, loop: Loop) -> None:
        from dataclasses import asdict

        from torch.utils.tensorboard.summary import hparams

        config = self.hparams if self.hparams is not None else {"train": asdict(loop.config)}
        task = loop.task
        metrics = {f"val/{name}": 0.0 for name in dict.fromkeys(["loss", task.best_metric])}
        for summary in hparams(flat_hparams(config), metrics):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def _write_samples(self, loop: Loop, step: int) -> None:
        """Samples of the task's generation for the first validation examples' parameters (RNG untouched)."""
        from ..interfaces.task import can_rollout
        from .figures import rollout_figure

        task, model = loop.task, loop.model
        names = list(task.rollout_params)
        if not can_rollout(task) or not names or any(name not in loop.val_data for name in names):
            return
        sample = bool(getattr(getattr(model, "init", None), "can_sample", False))
        images = []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):  # the training run's random stream stays as it was
                torch.manual_seed(loop.config.seed)
                for index in range(min(2, next(iter(loop.val_data.values())).shape[0])):
                    params = {name: float(loop.val_data[name][index]) for name in names}
                    result = task.rollout(model, params, 5 if sample else 1, sample=sample)
                    shown = ", ".join(f"{k} = {v:g}" for k, v in result.params.items())
                    images.append(rollout_figure(result, f"epoch {loop.state.epoch}: {shown}"))
        finally:
            model.train(was_training)
        for index, figure in enumerate(images):
            self.writer.add_image(f"samples/{index}", _rgb(figure), step, dataformats="HWC")


def _rgb(figure: Any) -> Any:
    """A matplotlib figure as an ``[H, W, 3]`` uint8 array (Agg, no pyplot)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def loggers_for(run_dir: Path, train: TrainConfig, config: dict[str, Any]) -> list[Callback]:
    """The callbacks ``crnn run`` adds for ``train.loggers``, writing into ``run_dir``; ``config`` is
    the run's resolved configuration (``config.json``), shown as hparams."""
    callbacks: list[Callback] = []
    for name in train.logger_names():
        if name == "tensorboard":
            callbacks.append(TensorBoardLogger(run_dir / TENSORBOARD_DIR, config, train.figure_every))
    return callbacks


def require_loggers(train: TrainConfig) -> None:
    """A one-line error now if a logger that ``train.loggers`` names lacks its package."""
    if "tensorboard" in train.logger_names():
        summary_writer_class()
