"""``train.cuda_graphs``: the training step captured in one CUDA graph (crnn_core/training/graphs.py).

On the CPU: the option is refused with a one-line error (exit 2), as are the settings a
graph cannot run with. With a GPU: 64 steps through ``fit`` with the graph give the eager
step's losses (ART with a partial last batch and a learning-rate decay, LCD), and a
non-finite step replayed in the graph changes neither the weights nor Adam's state.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crnn_core import ConfigError
from crnn_core.layers.model import ModelSpec, build_model
from crnn_core.plugin_manager.manager import get_plugins
from crnn_core.rundirs.run import RunConfig, checkpoint_identity
from crnn_core.training.graphs import check_cuda_graphs
from crnn_core.training.train import Callback, TrainConfig, fit

from .conftest import TINY_ART, assert_one_line_error, invoke

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_refused_on_the_cpu_through_fit():
    built = build_model(ModelSpec(cell="fastweights", init="zero", task="art",
                                  task_options={"train_size": 256, "val_size": 64}), get_plugins())
    with pytest.raises(ConfigError, match="train.cuda_graphs=true needs a CUDA device"):
        fit(built.model, built.task, TrainConfig(epochs=1, batch_size=64, cuda_graphs=True))


def test_refused_on_the_cpu_by_the_cli(runner, tmp_path):
    result = invoke(runner, ["run", "--out", str(tmp_path / "r"), *TINY_ART, "--set", "train.cuda_graphs=true"])
    assert result.exit_code == 2
    assert_one_line_error(result, "train.cuda_graphs=true needs a CUDA device (--device cuda), got cpu")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("distributed, impl, fragment", [
    (True, "auto", "does not support distributed training"),
    (False, "foreach", "needs train.adam_impl=auto or fused"),
    (False, "for-loop", "got for-loop"),
])
def test_settings_a_graph_cannot_run_with_are_refused(distributed, impl, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_cuda_graphs(True, torch.device("cuda"), distributed, impl)
    check_cuda_graphs(False, torch.device("cpu"), distributed, impl)  # off: nothing is checked


def test_not_part_of_the_checkpoint_identity():
    base = RunConfig(ModelSpec(cell="fastweights", init="zero", task="art"), TrainConfig()).to_json()
    graphs = {**base, "train": {**base["train"], "cuda_graphs": True}}
    assert checkpoint_identity(graphs) == checkpoint_identity(base)


class StepLosses(Callback):
    """Each step's training loss (``loop.step_loss``)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, loop) -> None:
        self.losses.append(loop.step_loss)


def step_losses(spec: ModelSpec, **train: object) -> list[float]:
    torch.manual_seed(0)
    built = build_model(spec, get_plugins())
    record = StepLosses()
    fit(built.model, built.task, TrainConfig(device="cuda", seed=0, **train), callbacks=[record])
    return record.losses


@cuda
@pytest.mark.parametrize("init", ["zero", "learned"])
def test_art_losses_match_the_eager_step(init):
    # Per epoch 31 full batches and one of 100 (run eagerly beside the graph); the rate halves after epoch 1.
    spec = ModelSpec(cell="fastweights", init=init, task="art", task_options={"train_size": 32 * 128 - 28, "val_size": 64})
    options = dict(epochs=2, batch_size=128, lr_decay_at="1", lr_decay_factor=0.5)
    eager, graphed = step_losses(spec, **options), step_losses(spec, cuda_graphs=True, **options)
    assert len(eager) == len(graphed) == 64
    assert max(abs(a - b) for a, b in zip(eager, graphed)) <= 1e-4
    assert eager[-1] < eager[0], "the steps learn something"


@cuda
def test_lcd_losses_match_the_eager_step():
    spec = ModelSpec(cell="fastweights", init="zero", task="lcd",
                     task_options={"train_per_period": "640", "val_per_period": "2"})
    eager = step_losses(spec, epochs=1, batch_size=50, grad_clip=1.0)  # the clipping is captured too
    graphed = step_losses(spec, epochs=1, batch_size=50, grad_clip=1.0, cuda_graphs=True)
    assert len(eager) == len(graphed) == 64
    assert max(abs(a - b) for a, b in zip(eager, graphed)) <= 1e-4
    assert eager[-1] < eager[0]


@cuda
def test_a_nonfinite_replayed_step_changes_nothing():
    from crnn_core.training.graphs import WARMUP_STEPS, GraphedStep

    torch.manual_seed(0)
    model = nn.Linear(4, 1).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    data = {"x": torch.randn(64, 4, device="cuda")}
    data["x"][40] = float("nan")  # rows 32..47 form the batch with the NaN

    def loss_of(batch):
        return model(batch["x"]).square().mean()

    def eager(index):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of({"x": data["x"][index]})
        loss.backward()
        optimizer.step()
        return loss.item(), True

    graphed = GraphedStep(loss_of, optimizer, model.parameters(), 16, None, torch.device("cuda"))
    rows = torch.arange(64, device="cuda").reshape(4, 16)
    for i in range(WARMUP_STEPS + 1):  # warm-up steps, then the capture and the first replay
        assert graphed.step(data, rows[i % 2], eager)[1]
    assert graphed.graph is not None
    before = [p.detach().clone() for p in model.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
    steps = [optimizer.state[p]["step"].clone() for p in model.parameters()]
    loss, finite = graphed.step(data, rows[2], eager)
    assert not finite and loss != loss
    for p, b, m, s in zip(model.parameters(), before, moments, steps):
        assert torch.equal(p, b) and torch.equal(optimizer.state[p]["exp_avg"], m)
        assert torch.equal(optimizer.state[p]["step"], s)
    loss, finite = graphed.step(data, rows[3], eager)
    assert finite and loss == loss
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before)), "a finite step updates"
