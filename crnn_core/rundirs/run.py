"""A run as the API sees it: its config (:class:`RunConfig`), the writer that keeps it on disk
(:class:`RunDirWriter`, a training callback) and :func:`load_run` to use a finished one.

``config.json`` is read and validated here and nowhere else: by ``crnn run`` (fresh and
``--resume``), ``crnn sample``, ``crnn plot`` and :func:`load_run`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.env import logger, package_version
from ..base.errors import CheckpointError, ConfigError, first_line
from ..interfaces.kinds import KINDS
from ..layers.model import Built, ModelSpec, check_sizes, check_state_dtypes, load_weights
from ..plugin_manager.manager import PluginSystem, get_plugins
from .rundir import (
    append_metrics,
    defer_until_resumed,
    is_run_dir,
    load_checkpoint,
    prepare_new_run_dir,
    read_json,
    restart_unbacked,
    resume_checked,
    save_checkpoint,
    truncate_metrics,
    write_json,
    write_text,
)
from ..interfaces.options import build_options, option_defaults
from ..training.train import Callback, Loop, TrainConfig, TrainState

#: TrainConfig fields that may change when a run is resumed (they do not change its results;
#: ``compile``, ``adam_impl`` and ``cuda_graphs`` change them by float rounding only, see
#: crnn_core/training/step.py and graphs.py).
RESUMABLE_CHANGES = ("epochs", "early_stop", "device", "threads", "eval_batch_size", "loggers", "figure_every",
                     "compile", "adam_impl", "cuda_graphs")


@dataclass
class RunConfig:
    """Everything that defines a run: the model spec and the training options (``config.json``)."""

    model: ModelSpec
    train: TrainConfig
    crnn_version: str = field(default_factory=lambda: package_version("crnn"))
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` document."""
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train),
                "crnn_version": self.crnn_version, "created": self.created}

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> "RunConfig":
        """Validate a ``config.json`` document (untrusted: it may have been edited by hand)."""

        def bad(what: str) -> ConfigError:
            return ConfigError(f"{where} is not a valid crnn run config: {what}")

        if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or not isinstance(data.get("train"), dict):
            raise bad("it needs the objects 'model' and 'train'")
        model = data["model"]
        for kind in KINDS:
            value = model.get(kind.scope)
            if not (isinstance(value, str) or (value is None and not kind.required)):
                raise bad(f"model.{kind.scope} must be a component name{'' if kind.required else ' or null'}, got {value!r:.80}")
            if not isinstance(model.get(f"{kind.scope}_options", {}), dict):
                raise bad(f"model.{kind.scope}_options must be an object, got {model.get(f'{kind.scope}_options')!r:.80}")
        try:
            spec = ModelSpec(**model)
        except TypeError as exc:
            raise ConfigError(f"{where} is not a crnn run config ({exc})") from None
        train = build_options(TrainConfig, _fit_threads(data["train"], where), "train")
        return cls(spec, train, str(data.get("crnn_version", "unknown")), str(data.get("created", "")))

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        """The validated config of the run in ``run_dir``."""
        if not run_dir.is_dir() or not is_run_dir(run_dir):
            raise ConfigError(f"{run_dir} is not a crnn run directory (no config.json)")
        return cls.from_json(read_json(run_dir / "config.json"), run_dir / "config.json")

    def identity(self) -> dict[str, Any]:
        """The part of the config that a checkpoint must match to be resumed."""
        return checkpoint_identity(self.to_json())


def checkpoint_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's ``config.json`` that a checkpoint must match to be resumed."""
    train_part = {k: v for k, v in config.get("train", {}).items() if k not in RESUMABLE_CHANGES}
    return {"model": config.get("model"), "train": train_part}


def component_defaults(kind: str, name: str | None) -> dict[str, Any]:
    """The option defaults of the registered component ``name`` of ``kind`` (a scope or plural);
    {} where it cannot be looked up (no name, or its plugin is not installed)."""
    if name is None:
        return {}
    try:
        cls = get_plugins().registry(kind).get(name).cls
    except Exception:  # noqa: BLE001 - not installed or no component: no defaults to compare with
        return {}
    return option_defaults(getattr(cls, "Options", None))


def _option_defaults(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The default of every option of the run's components (by ``<scope>_options``) and of ``train``."""
    out: dict[str, dict[str, Any]] = {"train": option_defaults(TrainConfig)}
    for kind in KINDS:
        defaults = component_defaults(kind.plural, model.get(kind.scope))
        if defaults:
            out[f"{kind.scope}_options"] = defaults
    return out


def identity_matches(saved: Any, current: dict[str, Any]) -> bool:
    """Whether a checkpoint's identity ``saved`` fits the run's ``current`` one.

    Equal, or equal once the options the checkpoint predates are left out: options absent
    from ``saved`` whose value in ``current`` is their default (an option added to crnn
    after the run started, so resuming an older run stays possible and exact).
    """
    if saved == current:
        return True
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict) or not isinstance(saved.get("train"), dict):
        return False
    defaults = _option_defaults(current["model"])

    def trim(values: dict[str, Any], old: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k in old or k not in default or v != default[k]}

    model = dict(current["model"])
    for key, default in defaults.items():
        if key != "train" and isinstance(model.get(key), dict) and isinstance(saved["model"].get(key), dict):
            model[key] = trim(model[key], saved["model"][key], default)
    return {"model": model, "train": trim(current["train"], saved["train"], defaults["train"])} == saved


class RunDirWriter(Callback):
    """Keeps a run directory: metrics.jsonl, ``last.pt`` / ``best.pt`` (atomic), and resume from ``last.pt``.

    Construct with :meth:`create` (a new run) or :meth:`reopen` (``--resume``); under torchrun
    rank 0 writes, and every rank takes part in the checkpoints' RNG gathering.
    """

    def __init__(self, run_dir: Path, config: RunConfig, resume: bool, relaunch: str = "crnn run") -> None:
        self.run_dir = run_dir
        self.config = config
        self.resume = resume
        self.relaunch = relaunch  # the command that continues the run, for the interruption message
        self.last = run_dir / "checkpoints" / "last.pt"

    @classmethod
    def create(cls, run_dir: Path | str, config: RunConfig, force: bool = False, files: dict[str, Any] | None = None,
               **kw: Any) -> "RunDirWriter":
        """A new run directory with ``config.json`` and ``files`` (more files to write in it: name ->
        JSON document, or text); ``force`` replaces a run already there."""
        run_dir = Path(run_dir)
        files = files or {}
        prepare_new_run_dir(run_dir, force)
        write_json(run_dir / "config.json", config.to_json())
        for name, content in files.items():
            if isinstance(content, str):
                write_text(run_dir / name, content)
            else:
                write_json(run_dir / name, content)
        return cls(run_dir, config, resume=False, **kw)

    @classmethod
    def reopen(cls, run_dir: Path, config: RunConfig, command: str, **kw: Any) -> "RunDirWriter":
        """An existing run to continue: its ``config.json`` rewritten with ``config`` and ``command``
        appended to command.txt, once ``last.pt`` is accepted and there is training left to do
        (``rundir.resume_checked``): a refused or empty resume changes nothing. Locks the directory."""
        defer_until_resumed(run_dir, lambda: (write_json(run_dir / "config.json", config.to_json()),
                                              write_text(run_dir / "command.txt", command + "\n", append=True)))
        return cls(run_dir, config, resume=True, **kw)

    # -- callbacks -------------------------------------------------------------------------------
    def on_fit_start(self, loop: Loop) -> None:
        if self.resume:
            self._restore(loop)

    def on_epoch_end(self, loop: Loop, record: dict[str, Any] | None, improved: bool) -> None:
        if record is not None:
            append_metrics(self.run_dir / "metrics.jsonl", record)
        self._checkpoint(loop, self.last)
        if improved:
            self._checkpoint(loop, self.run_dir / "checkpoints" / "best.pt")

    def on_stop(self, loop: Loop) -> str:
        self._checkpoint(loop, self.last)
        s = loop.state
        return (f"saved {self.last} at epoch {s.epoch + 1}, step {s.step}; "
                f"continue with: {self.relaunch} --resume {self.run_dir}")

    def on_nonfinite(self, loop: Loop) -> str:
        return f"last good checkpoint: {self.last}" if self.last.is_file() else "no checkpoint was written yet"

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint(self, loop: Loop, path: Path) -> None:
        rng_ranks = loop.dist.gather_rng()  # a collective: every rank calls it
        if loop.dist.is_main:
            s = loop.state
            data: dict[str, Any] = {
                "config": self.config.identity(),
                "model": loop.model.state_dict(),
                "optimizer": loop.optimizer.state_dict(),
                **dataclasses.asdict(s),
                "rng": rng_ranks[0],
            }
            if loop.dist.enabled:  # every rank's RNG, so each continues its own stream on --resume
                data.update(rng_ranks=rng_ranks, world_size=loop.dist.world_size)
            save_checkpoint(path, data)
        loop.dist.barrier()

    def _restore(self, loop: Loop) -> None:
        if restart_unbacked(self.run_dir, loop.dist.is_main):
            return  # no checkpoint: train from the start, as the run's own first attempt did
        ckpt = load_checkpoint(self.last)
        if not identity_matches(ckpt.get("config"), self.config.identity()):
            raise CheckpointError(f"{self.last} was written by a different configuration than {self.run_dir}/config.json")
        check_state_dtypes(ckpt.get("model"), str(self.last))
        load_weights(loop.model, ckpt.get("model"), str(self.last))
        try:
            loop.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.last} does not fit this model's optimizer: {first_line(exc, 200)}") from None
        try:
            s = _checked_state(ckpt, loop.steps_per_epoch)
            _check_optimizer_state(loop.optimizer)
            loop.dist.restore_rng(ckpt, loop.config.seed)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{self.last} has a missing or invalid field: {first_line(exc, 200)}") from None
        resume_checked(self.run_dir, ckpt, loop.config.epochs, loop.dist.is_main)  # repairs; nothing to do?; deferred writes
        loop.state = s
        if loop.dist.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", s.epoch)


def check_resume_identity(run_dir: Path, config: RunConfig, plugins: PluginSystem) -> None:
    """Refuse, before the model is built, a ``last.pt`` written by another configuration than
    ``config`` (e.g. a config.json edited to a far larger model than its checkpoint's): the
    resume would refuse it anyway, after allocating that model. A config that names an unknown
    component or an invalid option is refused for that (a build on the ``meta`` device, which
    allocates nothing, finds it). Other faults of the checkpoint are left to the resume."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return
    try:
        ckpt = load_checkpoint(last)
    except CheckpointError:
        return
    if not identity_matches(ckpt.get("config"), config.identity()):
        check_sizes(config.model, plugins)  # the config's own error first, where it has one
        raise CheckpointError(f"{last} was written by a different configuration than {run_dir}/config.json")


def _checked_state(ckpt: dict[str, Any], steps_per_epoch: int) -> TrainState:
    """The checkpoint's :class:`TrainState`, each field of the right type and the position
    consistent (``step = epoch * steps_per_epoch + batch_in_epoch``): a tampered or corrupt
    checkpoint is refused here, not found out after training restarts."""
    def count(name: str, default: int | None = None) -> int:
        value = ckpt.get(name, default) if default is not None else ckpt[name]
        problem = _count_problem(name, value)
        if problem:
            raise ValueError(problem)
        return value

    def real(name: str, optional: bool = False) -> float | None:
        value = ckpt[name]
        if value is None and optional:
            return None
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ValueError(f"'{name}' must be a finite number, got {value!r:.40}")
        return float(value)

    s = TrainState(epoch=count("epoch"), batch_in_epoch=count("batch_in_epoch"), step=count("step"),
                   wall_time=real("wall_time"), best=real("best", optional=True), epoch_loss=real("epoch_loss"),
                   epoch_count=count("epoch_count"), nonfinite_skipped=count("nonfinite_skipped", 0),
                   epoch_skipped=count("epoch_skipped", 0), threads=ckpt.get("threads"))
    if s.threads is not None and (_count_problem("threads", s.threads) or s.threads < 1):
        raise ValueError(f"'threads' must be a positive integer or None, got {s.threads!r:.40}")
    if s.batch_in_epoch > steps_per_epoch or s.step != s.epoch * steps_per_epoch + s.batch_in_epoch:
        raise ValueError(f"position epoch {s.epoch}, batch {s.batch_in_epoch}, step {s.step} is impossible "
                         f"with {steps_per_epoch} steps per epoch")
    return s


def _check_counters(ckpt: dict[str, Any], where: str) -> None:
    """The ``epoch`` and ``step`` a loaded model reports (``crnn sample`` prints them) are integers
    >= 0 (or absent): a tampered value such as 1e30 is refused, not passed on."""
    for name in ("epoch", "step"):
        problem = _count_problem(name, ckpt.get(name)) if ckpt.get(name) is not None else None
        if problem:
            raise CheckpointError(f"{where} has a missing or invalid field: {problem}")
    epoch, step = ckpt.get("epoch"), ckpt.get("step")
    if epoch is not None and step is not None and epoch > step:  # every epoch has at least one step
        raise CheckpointError(f"{where} has a missing or invalid field: epoch {str(epoch)[:40]} is impossible "
                              f"after {step} steps")


def _count_problem(name: str, value: Any) -> str | None:
    """Why a checkpoint's counter ``name`` is not an integer >= 0, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    return f"'{name}' must be an integer >= 0, got {value!r:.40}"


def _check_optimizer_state(optimizer: Any) -> None:
    """Every per-parameter optimizer tensor (Adam's moments) has its parameter's shape."""
    for group in optimizer.param_groups:
        for index, param in enumerate(group["params"]):
            for key, value in optimizer.state.get(param, {}).items():
                if hasattr(value, "dim") and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"optimizer state '{key}' of parameter {index} has shape {list(value.shape)}, "
                                     f"the parameter {list(param.shape)}")


def _fit_threads(train: Any, where: Any) -> Any:
    """A recorded run may come from a machine with more CPUs: its ``threads`` (a resumable
    setting, results do not depend on it) is lowered to this machine's, with a warning."""
    cpus = os.cpu_count() or 1
    if isinstance(train, dict) and isinstance(train.get("threads"), int) and train["threads"] > cpus:
        logger.warning(f"crnn: {where} asks for {train['threads']} threads; this machine has {cpus} CPUs: using {cpus}")
        return {**train, "threads": cpus}
    return train


def component_provenance(built: Built, plugins: PluginSystem) -> dict[str, dict[str, str]]:
    """For each component kind of a built model: its name, class, and the package and version
    that provide it (a run's ``plugins.json``; the metadata of an exported safetensors file)."""
    return {kind: {"name": getattr(cls, "name", cls.__name__), "class": f"{cls.__module__}.{cls.__qualname__}",
                   **plugins.provider_of(cls)} for kind, cls in built.classes.items()}


def run_environment(built: Built) -> dict[str, Any]:
    """What a run ran on (a run's ``env.json``): the crnn, PyTorch and Python versions, PyTorch's
    CUDA version, the platform, and how the cell computes (its backend; for the fused kernel, how
    it was loaded and the CPU path it runs). Results depend on these, not only on config.json."""
    import platform

    import torch

    return {"crnn": package_version("crnn"), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "python": platform.python_version(), "platform": platform.platform(),
            "cell_backend": built.model.cell.describe_backend()}


