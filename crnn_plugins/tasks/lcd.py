"""The `lcd` task: linear cosine decay (Wenke & Fleming 2019, section 2.2.2 and Figure 6).

A sequence follows TensorFlow's ``linear_cosine_decay`` formula

    x(t) = x0 * [ (alpha + (tf - t)/tf) * 0.5 * (1 + cos(2*pi*T*t/tf)) + beta ]

with alpha = 0, beta = 0.001, x0 ~ U(2, 4) and period T. Values are taken at
t = 0, 1, ..., length (default 25) with tf = 26 (as the authors' code does): the
inputs are x_0 .. x_24 and the targets the changes delta_t = x_t - x_{t-1}, t = 1..25,
so the model predicts the next value as x_{t-1} + delta_t. Training periods
{0.5, 1.5, 2.5, 3.5, 4.5} x 1000 sequences, validation periods {1, 2, 3, 4} x 500.

Everything the model sees is scaled to [-1, 1] by min-max scalers fit on the training
configuration and data only: states with [0, x0_max] = [0, 4], periods with the
smallest and largest training period [0.5, 4.5], deltas with the min/max of the
training deltas. Inverses clip to the fitted range. The context features are the
scaled (x0, T); the zero-init baseline instead appends the scaled period to every
input step (``append_period``, automatic when the init strategy uses no context).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crnn_core import Batch, ConfigError, Rollout, Task, TaskModule, hookimpl, option, require
from crnn_core.base.resources import check_memory

#: float64 copies of each trajectory alive at once while the data are made (curve, inputs, deltas, scaled forms).
FLOAT64_COPIES = 6
#: Offset between the train and validation generator seeds (same data_seed, disjoint streams).
VAL_SEED_OFFSET = 1_000_003


def parse_periods(text: str, name: str) -> tuple[float, ...]:
    """``"0.5,1.5"`` -> ``(0.5, 1.5)``; raises ValueError with a one-line reason."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got '{text}'") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be one or more positive numbers, got '{text}'")
    return values


@dataclasses.dataclass
class LCDOptions:
    train_per_period: int = option(1000, "training sequences per training period")
    val_per_period: int = option(500, "validation sequences per validation period")
    train_periods: str = option("0.5,1.5,2.5,3.5,4.5", "training periods T, comma-separated")
    val_periods: str = option("1,2,3,4", "validation periods T, comma-separated")
    length: int = option(25, "input steps per sequence (values are taken at t = 0..length)")
    tf: float = option(26.0, "total decay time t_f of the formula")
    alpha: float = option(0.0, "alpha of linear_cosine_decay")
    beta: float = option(0.001, "beta of linear_cosine_decay")
    x0_min: float = option(2.0, "x0 ~ U(x0_min, x0_max)")
    x0_max: float = option(4.0, "x0 ~ U(x0_min, x0_max); also the top of the state scaling [0, x0_max]")
    data_seed: int = option(0, "seed of the data (train uses it, validation uses it + 1000003)")
    append_period: bool | None = option(
        None, "append the scaled period to every input step (the zero-init baseline); none: when the init uses no context"
    )
    rollout_metric: bool = option(True, "also measure free-running rollouts (rollout_mse, original units) each epoch")

    def __post_init__(self) -> None:
        for name in ("train_per_period", "val_per_period", "length"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        require(self.tf > 0, f"tf must be positive, got {self.tf}")
        require(0 <= self.x0_min < self.x0_max, f"need 0 <= x0_min < x0_max, got {self.x0_min} and {self.x0_max}")
        train = parse_periods(self.train_periods, "train_periods")
        parse_periods(self.val_periods, "val_periods")
        require(min(train) < max(train), f"train_periods needs two different periods (they set the period scaling), got '{self.train_periods}'")


@dataclasses.dataclass(frozen=True)
class MinMaxScaler:
    """Maps [lo, hi] linearly onto [-1, 1]; ``inverse`` clips to [lo, hi] (values outside it are not trusted)."""

    lo: float
    hi: float

    @classmethod
    def fit(cls, values: Tensor) -> "MinMaxScaler":
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            raise ConfigError(f"cannot fit a scaler to constant values ({lo})")
        return cls(lo, hi)

    def transform(self, x: Tensor) -> Tensor:
        return 2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0

    def inverse(self, y: Tensor, clip: bool = True) -> Tensor:
        if clip:
            y = y.clamp(-1.0, 1.0)
        return (y + 1.0) * 0.5 * (self.hi - self.lo) + self.lo


def lcd_curve(x0: Tensor, period: Tensor, t: Tensor, tf: float, alpha: float = 0.0, beta: float = 0.001) -> Tensor:
    """x(t) for each (x0, period) pair: ``x0 [N]``, ``period [N]``, ``t [L]`` -> ``[N, L]``.

    As in TensorFlow, t is clamped at tf (the value stays at x0 * beta after the decay ends).
    """
    t = t.clamp(max=tf)[None, :]
    linear = (tf - t) / tf
    cosine = 0.5 * (1.0 + torch.cos(2.0 * math.pi * period[:, None] * t / tf))
    return x0[:, None] * ((alpha + linear) * cosine + beta)


def generate_lcd(periods: tuple[float, ...], per_period: int, o: LCDOptions, seed: int) -> dict[str, Tensor]:
    """``per_period`` sequences for each period (float64, original units): x0 [N], period [N], trajectory [N, length+1]."""
    g = torch.Generator().manual_seed(seed)
    period = torch.tensor(periods, dtype=torch.float64).repeat_interleave(per_period)
    x0 = o.x0_min + (o.x0_max - o.x0_min) * torch.rand(period.shape[0], generator=g, dtype=torch.float64)
    t = torch.arange(o.length + 1, dtype=torch.float64)
    return {"x0": x0, "period": period, "trajectory": lcd_curve(x0, period, t, o.tf, o.alpha, o.beta)}


class LCDModule(TaskModule):
    """Scaled x_t (plus the scaled period for the baseline) in, Linear(H, 1) -> scaled delta out."""

    def __init__(self, hidden_size: int, append_period: bool) -> None:
        super().__init__()
        self.append_period = append_period
        self.out = nn.Linear(hidden_size, 1)

    def encode(self, batch: Batch) -> Tensor:
        x = batch["inputs"].unsqueeze(-1)
        if self.append_period:
            period = batch["context"][:, None, 1:2].expand(-1, x.shape[1], 1)
            x = torch.cat([x, period], dim=-1)
        return x

    def context(self, batch: Batch) -> Tensor:
        return batch["context"]

    def head(self, outputs: Tensor) -> Tensor:
        return self.out(outputs).squeeze(-1)


class LCDTask(Task):
    """Linear cosine decay: predict each step's change of x0-scaled cosine decays of period T (regression)."""

    name = "lcd"
    Options = LCDOptions
    training_defaults = {"epochs": 65, "batch_size": 128, "lr": 2e-4, "grad_clip": 10.0}
    best_metric = "squared_error"
    higher_is_better = False
    default_context = "mlp"
    rollout_params = {"period": "the period T of the decay", "x0": "the initial value x0"}

    def __init__(self, options: LCDOptions) -> None:
        super().__init__(options)
        self.train_periods = parse_periods(options.train_periods, "train_periods")
        self.val_periods = parse_periods(options.val_periods, "val_periods")
        self._raw: dict[str, dict[str, Tensor]] = {}
        self._data: dict[str, Batch] = {}
        self.state_scaler = MinMaxScaler(0.0, options.x0_max)
        self.period_scaler = MinMaxScaler(min(self.train_periods), max(self.train_periods))
        self._delta_scaler: MinMaxScaler | None = None
        sequences = len(self.train_periods) * options.train_per_period + len(self.val_periods) * options.val_per_period
        check_memory(sequences * (options.length + 1) * FLOAT64_COPIES * 8, "the LCD data",
                     "task.train_per_period / task.val_per_period / task.length")

    # -- set-up -------------------------------------------------------------------------------------
    def prepare(self, uses_context: bool) -> None:
        # The resolved choice is written back so config.json records it.
        if self.options.append_period is None:
            self.options.append_period = not uses_context

    @property
    def input_size(self) -> int:
        return 2 if self.options.append_period else 1

    @property
    def context_size(self) -> int:
        return 2

    def raw(self, split: str) -> dict[str, Tensor]:
        """A split in original units (float64): x0, period, trajectory."""
        if split not in self._raw:
            o = self.options
            if split == "train":
                self._raw[split] = generate_lcd(self.train_periods, o.train_per_period, o, o.data_seed)
            elif split == "val":
                self._raw[split] = generate_lcd(self.val_periods, o.val_per_period, o, o.data_seed + VAL_SEED_OFFSET)
            else:
                raise ConfigError(f"unknown split '{split}' (train or val)")
        return self._raw[split]

    @property
    def delta_scaler(self) -> MinMaxScaler:
        """Fit to the training deltas (never to validation data)."""
        if self._delta_scaler is None:
            self._delta_scaler = MinMaxScaler.fit(self.raw("train")["trajectory"].diff(dim=1))
        return self._delta_scaler

    def context_features(self, x0: Tensor, period: Tensor) -> Tensor:
        """Scaled (x0, T) pairs ``[N, 2]``: x0 with the state scaler, T with the period scaler."""
        return torch.stack([self.state_scaler.transform(x0), self.period_scaler.transform(period)], dim=1)

    def dataset(self, split: str) -> Batch:
        if split not in self._data:
            raw = self.raw(split)
            trajectory = raw["trajectory"]
            self._data[split] = {
                "inputs": self.state_scaler.transform(trajectory[:, :-1]).float(),
                "targets": self.delta_scaler.transform(trajectory.diff(dim=1)).float(),
                "context": self.context_features(raw["x0"], raw["period"]).float(),
                "trajectory": trajectory.float(),
                "x0": raw["x0"].float(),
                "period": raw["period"].float(),
            }
        return self._data[split]

    def build_module(self, hidden_size: int) -> LCDModule:
        return LCDModule(hidden_size, bool(self.options.append_period))

    # -- loss and metrics ---------------------------------------------------------------------------
    def loss(self, predictions: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(predictions, batch["targets"])

    def metrics(self, predictions: Tensor, batch: Batch) -> dict[str, float]:
        # Teacher-forced squared error of the scaled deltas, mean over steps and sequences.
        return {"squared_error": F.mse_loss(predictions, batch["targets"]).item()}

    def extra_metrics(self, model: nn.Module, data: Batch, batch_size: int) -> dict[str, float]:
        """``rollout_mse``: free-running from the true x_0 and the mean initial state, original units."""
        if not self.options.rollout_metric:
            return {}
        n = data["trajectory"].shape[0]
        total = 0.0
        for start in range(0, n, batch_size):
            part = slice(start, min(start + batch_size, n))
            truth = data["trajectory"][part]
            generated = self.free_run(model, truth[:, 0], data["context"][part], truth.shape[1] - 1, sample=False)
            total += (generated[:, 1:] - truth[:, 1:]).pow(2).mean(dim=1).sum().item()
        return {"rollout_mse": total / n}

    # -- generation ---------------------------------------------------------------------------------
    def free_run(self, model: nn.Module, x_start: Tensor, context: Tensor, steps: int, sample: bool) -> Tensor:
        """Autoregressive rollout ``[B, steps + 1]`` in original units, starting at ``x_start [B]``.

        Each step feeds the scaled current value, inverts the predicted scaled delta
        (clipped to the training range) and adds it: x_t = x_{t-1} + delta_t.
        """
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        context = context.to(device=device, dtype=dtype)
        x = x_start.to(device=device, dtype=dtype)
        state = model.initial_state({"context": context}, x.shape[0], sample=sample)
        values = [x]
        for _ in range(steps):
            step = {"inputs": self.state_scaler.transform(x)[:, None], "context": context}
            outputs, state = model.cell(model.task_module.encode(step), state)
            x = x + self.delta_scaler.inverse(model.task_module.head(outputs)[:, 0])
            values.append(x)
        return torch.stack(values, dim=1)

    def rollout(
        self, model: nn.Module, params: dict[str, float], n: int, steps: int | None = None, *, sample: bool = True
    ) -> Rollout:
        o = self.options
        unknown = sorted(set(params) - set(self.rollout_params))
        if unknown:
            raise ConfigError(f"task 'lcd' has no generation parameter '{unknown[0]}' (it takes: period, x0)")
        missing = [name for name in self.rollout_params if name not in params]
        if missing:
            raise ConfigError(f"task 'lcd' needs --{missing[0]} to generate sequences")
        period, x0 = float(params["period"]), float(params["x0"])
        steps = o.length if steps is None else steps
        if steps <= 0:
            raise ConfigError(f"steps must be positive, got {steps}")
        if n <= 0:
            raise ConfigError(f"n must be positive, got {n}")
        warnings = []
        lo, hi = min(self.train_periods), max(self.train_periods)
        if not lo <= period <= hi:
            warnings.append(f"period {period:g} is outside the trained range [{lo:g}, {hi:g}]: extrapolating")
        if not o.x0_min <= x0 <= o.x0_max:
            warnings.append(f"x0 {x0:g} is outside the trained range [{o.x0_min:g}, {o.x0_max:g}]: extrapolating")
        if steps > o.length:
            warnings.append(f"{steps} steps is beyond the trained length {o.length}: extrapolating")
        t = torch.arange(steps + 1, dtype=torch.float64)
        reference = lcd_curve(torch.tensor([x0], dtype=torch.float64), torch.tensor([period], dtype=torch.float64), t, o.tf, o.alpha, o.beta)[0]
        context = self.context_features(torch.full((n,), x0, dtype=torch.float64), torch.full((n,), period, dtype=torch.float64))
        x_start = torch.full((n,), float(reference[0]))
        with torch.no_grad():
            samples = self.free_run(model, x_start, context, steps, sample=sample)
        return Rollout(
            samples=samples.cpu().float().unsqueeze(-1),
            names=["x"],
            params={"period": period, "x0": x0},
            reference=reference.float().unsqueeze(-1),
            warnings=warnings,
        )


@hookimpl
def register_tasks(register) -> None:
    register(LCDTask)
