"""The `lcd` task: data follow the formula, scaling and its inverse, counts, the baseline input, a tiny run."""

import json
import math

import pytest
import torch

from crnn_core import ConfigError
from crnn_core.layers.model import ModelSpec, build_model
from crnn_core.interfaces.options import build_options
from crnn_core.plugin_manager.manager import get_plugins
from crnn_core.training.train import evaluate, train_config_from
from crnn_plugins.tasks.lcd import LCDOptions, LCDTask, MinMaxScaler, lcd_curve

from .conftest import assert_one_line_error, invoke, metrics_without_wall_time

#: `--set` overrides that make an LCD run take seconds.
TINY_LCD = ["--set", "task.train_per_period=40", "--set", "task.val_per_period=10", "--set", "cell.hidden_size=16",
            "--batch-size", "50"]


def make_task(**options) -> LCDTask:
    return LCDTask(build_options(LCDOptions, options, "task"))


def formula(x0, period, t, tf=26.0, alpha=0.0, beta=0.001):
    return x0 * ((alpha + (tf - t) / tf) * 0.5 * (1 + math.cos(2 * math.pi * period * t / tf)) + beta)


def test_curve_is_tensorflows_linear_cosine_decay():
    x0 = torch.tensor([2.0, 3.5, 4.0], dtype=torch.float64)
    period = torch.tensor([0.5, 2.0, 4.5], dtype=torch.float64)
    t = torch.arange(26, dtype=torch.float64)
    curve = lcd_curve(x0, period, t, 26.0)
    for i in range(3):
        for step in range(26):
            assert curve[i, step].item() == pytest.approx(formula(x0[i].item(), period[i].item(), step), rel=1e-12)
    # Past tf the decay is over (TensorFlow clamps t): x stays at x0 * beta.
    late = lcd_curve(x0, period, torch.tensor([26.0, 30.0], dtype=torch.float64), 26.0)
    assert torch.allclose(late, (x0 * 0.001)[:, None].expand(3, 2))


def test_data_follow_the_formula_and_scaling_inverts():
    task = make_task(train_per_period=20, val_per_period=10)
    for split in ("train", "val"):
        raw, data = task.raw(split), task.dataset(split)
        for i in (0, 7, len(raw["x0"]) - 1):
            x0, period = raw["x0"][i].item(), raw["period"][i].item()
            expected = [formula(x0, period, t) for t in range(26)]
            assert raw["trajectory"][i].tolist() == pytest.approx(expected, rel=1e-12)
        assert data["inputs"].shape == data["targets"].shape == (len(raw["x0"]), 25)
        assert torch.allclose(task.state_scaler.inverse(data["inputs"].double(), clip=False), raw["trajectory"][:, :-1], atol=1e-5)
        deltas = raw["trajectory"][:, 1:] - raw["trajectory"][:, :-1]
        assert torch.allclose(task.delta_scaler.inverse(data["targets"].double()), deltas, atol=1e-5)
        assert torch.allclose(data["context"][:, 0], (raw["x0"] / 4 * 2 - 1).float())
        assert torch.allclose(data["context"][:, 1], ((raw["period"] - 0.5) / 4 * 2 - 1).float())


def test_counts_periods_and_x0_range():
    task = make_task()
    train, val = task.raw("train"), task.raw("val")
    assert len(train["x0"]) == 5000 and len(val["x0"]) == 2000
    assert {p: int((train["period"] == p).sum()) for p in (0.5, 1.5, 2.5, 3.5, 4.5)} == dict.fromkeys((0.5, 1.5, 2.5, 3.5, 4.5), 1000)
    assert {p: int((val["period"] == p).sum()) for p in (1.0, 2.0, 3.0, 4.0)} == dict.fromkeys((1.0, 2.0, 3.0, 4.0), 500)
    for split in (train, val):
        assert 2.0 <= split["x0"].min() and split["x0"].max() <= 4.0
        assert split["trajectory"].shape[1] == 26
    assert train["x0"].std() > 0.5  # spread over U(2, 4)


def test_generation_is_deterministic_per_seed():
    a, b, c = make_task(train_per_period=5), make_task(train_per_period=5), make_task(train_per_period=5, data_seed=1)
    assert torch.equal(a.raw("train")["trajectory"], b.raw("train")["trajectory"])
    assert not torch.equal(a.raw("train")["x0"], c.raw("train")["x0"])
    assert not torch.equal(a.raw("train")["x0"][:20], a.raw("val")["x0"][:20])


def test_scaler_inverts_and_clips():
    scaler = MinMaxScaler(0.0, 4.0)
    x = torch.tensor([0.0, 1.0, 2.0, 4.0])
    assert torch.equal(scaler.transform(x), torch.tensor([-1.0, -0.5, 0.0, 1.0]))
    assert torch.allclose(scaler.inverse(scaler.transform(x)), x)
    assert scaler.inverse(torch.tensor([1.7, -3.0])).tolist() == [4.0, 0.0]  # clipped to [lo, hi]
    assert scaler.inverse(torch.tensor([1.5]), clip=False).item() == pytest.approx(5.0)
    fitted = MinMaxScaler.fit(torch.tensor([-0.3, 0.1, 0.5]))
    assert (fitted.lo, fitted.hi) == (pytest.approx(-0.3), pytest.approx(0.5))
    with pytest.raises(ConfigError):
        MinMaxScaler.fit(torch.zeros(3))


def test_scalers_are_fit_on_training_data_only():
    task = make_task(train_per_period=30, val_per_period=10)
    train_deltas = task.raw("train")["trajectory"].diff(dim=1)
    assert (task.delta_scaler.lo, task.delta_scaler.hi) == (train_deltas.min().item(), train_deltas.max().item())
    targets = task.dataset("train")["targets"]
    assert targets.min().item() == pytest.approx(-1.0) and targets.max().item() == pytest.approx(1.0)
    other = make_task(train_per_period=30, val_per_period=10, val_periods="1.25,4.25")
    assert other.delta_scaler == task.delta_scaler  # validation data never moves the scalers
    assert (task.period_scaler.lo, task.period_scaler.hi) == (0.5, 4.5)
    assert (task.state_scaler.lo, task.state_scaler.hi) == (0.0, 4.0)


@pytest.mark.parametrize(
    "init, init_options, task_options, width, appended",
    [
        ("zero", {}, {}, 2, True),  # the baseline: the period on every input step, automatically
        ("learned", {"distribution": "normal"}, {}, 1, False),
        ("learned", {}, {"append_period": "true"}, 2, True),  # forced by the option
        ("zero", {}, {"append_period": "false"}, 1, False),
    ],
)
def test_baseline_input_width(init, init_options, task_options, width, appended):
    spec = ModelSpec("lstm", init, "lcd", cell_options={"hidden_size": "8"}, init_options=init_options,
                     task_options={"train_per_period": "4", "val_per_period": "2", **task_options})
    built = build_model(spec, get_plugins())
    assert built.task.input_size == width and built.model.cell.input_size == width
    assert built.spec.task_options["append_period"] is appended  # what config.json records
    batch = built.task.dataset("train")
    inputs = built.model.task_module.encode(batch)
    assert inputs.shape == (20, 25, width)
    if appended:
        assert torch.equal(inputs[:, :, 1], batch["context"][:, 1:2].expand(20, 25))
    assert built.model(batch).shape == (20, 25)


def test_contextual_model_is_the_papers():
    built = build_model(ModelSpec("lstm", "learned", "lcd", init_options={"distribution": "normal"}), get_plugins())
    assert built.spec.context == "mlp" and built.spec.context_options["hidden"] == 50
    assert built.model.cell.hidden_size == 128 and built.model.task_module.out.out_features == 1
    assert built.model.init.can_sample
    assert torch.allclose(built.model.init.scale("h"), torch.full((128,), 0.25))
    cfg = train_config_from(LCDTask.training_defaults, {}, {})
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.grad_clip) == (65, 128, 2e-4, 10.0)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"train_periods": "0.5,x"}, "train_periods must be comma-separated numbers"),
        ({"train_periods": "2,2"}, "two different periods"),
        ({"val_periods": "-1"}, "positive numbers"),
        ({"x0_min": "5"}, "x0_min < x0_max"),
        ({"length": "0"}, "length must be positive"),
    ],
)
def test_bad_options(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_options(LCDOptions, options, "task")


def test_free_run_matches_teacher_forcing_on_the_first_step():
    torch.manual_seed(0)
    built = build_model(ModelSpec("lstm", "learned", "lcd", cell_options={"hidden_size": "8"},
                                  task_options={"train_per_period": "4", "val_per_period": "2"}), get_plugins())
    task, model = built.task, built.model.eval()
    val = task.dataset("val")
    with torch.no_grad():
        tf = model(val, sample=False)
        run = task.free_run(model, val["trajectory"][:, 0], val["context"], 3, sample=False)
    first = val["trajectory"][:, 0] + task.delta_scaler.inverse(tf[:, 0])
    assert torch.allclose(run[:, 1], first, atol=1e-5)
    # With the true deltas the rollout would reproduce the trajectory; evaluate adds rollout_mse.
    loss, metrics = evaluate(model, task, val, 3)
    assert set(metrics) == {"squared_error", "rollout_mse"} and metrics["squared_error"] == pytest.approx(loss)
    expected = (task.free_run(model, val["trajectory"][:, 0], val["context"], 25, sample=False)[:, 1:]
                - val["trajectory"][:, 1:]).pow(2).mean().item()
    assert metrics["rollout_mse"] == pytest.approx(expected, rel=1e-5)


def test_tiny_run_end_to_end(runner, tmp_path):
    out = tmp_path / "zero"
    result = invoke(runner, ["run", "--task", "lcd", "--cell", "lstm", "--init", "zero", "--epochs", "2",
                             "--out", str(out), "-q", *TINY_LCD])
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["task_options"]["append_period"] is True
    assert config["train"]["grad_clip"] == 10.0 and config["train"]["lr"] == 2e-4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[-1]["metrics"]) == {"squared_error", "rollout_mse"}
    assert all(math.isfinite(v) for r in records for v in r["metrics"].values())


def test_bad_task_option_is_one_line(runner, tmp_path):
    result = invoke(runner, ["run", "--task", "lcd", "--cell", "lstm", "--init", "zero", "--out", str(tmp_path / "r"),
                             "--set", "task.train_periods=3"])
    assert_one_line_error(result, "two different periods")


def test_resumed_lcd_run_gives_the_same_metrics(runner, tmp_path):
    """The rollout metric draws no random numbers, so a resumed run matches an uninterrupted one."""
    common = ["run", "--task", "lcd", "--cell", "lstm", "--init", "learned", "--set", "init.distribution=normal", "-q", *TINY_LCD]
    assert invoke(runner, [*common, "--epochs", "2", "--out", str(tmp_path / "whole")]).exit_code == 0
    assert invoke(runner, [*common, "--epochs", "1", "--out", str(tmp_path / "part")]).exit_code == 0
    assert invoke(runner, ["run", "--resume", str(tmp_path / "part"), "--epochs", "2", "-q"]).exit_code == 0

    whole, part = (metrics_without_wall_time(tmp_path / name / "metrics.jsonl") for name in ("whole", "part"))
    assert whole == part
