"""The thread count chosen while training (crnn_core/training/threads.py): which counts a probe
tries, which it picks, that trial steps change no result, and that a resumed run keeps the
recorded count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crnn_core import Callback, ModelSpec, TrainConfig, build_model, fit
from crnn_core.base.resources import usable_cpus
from crnn_core.rundirs.run import _checked_state
from crnn_core.training import threads as threads_module
from crnn_core.training.threads import (DRIFT, FIRST_INTERVAL, LAST_INTERVAL, MIN_EPOCH_STEPS, WINDOW, ThreadChooser,
                                        candidates, pick, side_effect_free)

pytestmark = pytest.mark.usefixtures("thread_count_kept")


def test_candidates_are_all_half_and_one_cpu():
    assert candidates(1) == [1]
    assert candidates(2) == [2, 1]
    assert candidates(16) == [16, 8, 1]
    assert candidates(3) == [3, 2, 1]


def test_the_current_count_is_kept_unless_another_is_clearly_faster():
    assert pick({2: 1.0, 1: 1.1}, current=2) == 2
    assert pick({2: 1.0, 1: 0.9}, current=2) == 2  # within the margin: kept
    assert pick({2: 3.0, 1: 1.0}, current=2) == 1  # a busy machine
    assert pick({16: 1.0, 8: 0.7, 1: 2.0}, current=16) == 8
    assert pick({1: 1.05, 2: 1.0}, current=1) == 1  # a noisy busy machine does not switch back up
    assert pick({1: 1.15, 2: 1.0}, current=1) == 2  # the machine became quiet
    assert pick({16: 2.0, 8: 1.1, 1: 1.0}, current=16) == 8  # leaving: the largest within the margin


def test_probes_are_due_at_the_first_step_then_at_doubling_intervals_while_the_choice_holds():
    machine = FakeMachine({2: 1.0, 1: 1.5})
    chooser = ThreadChooser(2, clock=machine.clock)
    assert not chooser.due(MIN_EPOCH_STEPS - 1)  # a short epoch is not probed
    assert chooser.due(MIN_EPOCH_STEPS)
    probes_at = []
    for step in range(1, 8 * FIRST_INTERVAL):
        if chooser.due(10**6):
            probes_at.append(step)
            chooser.probe(machine.trial)
        chooser.record(1.0)  # steady step times: no drift
    assert probes_at == [1, 1 + FIRST_INTERVAL, 1 + 3 * FIRST_INTERVAL, 1 + 7 * FIRST_INTERVAL]  # intervals doubling
    assert FIRST_INTERVAL < LAST_INTERVAL


def test_at_fewer_threads_only_drift_or_a_resume_calls_for_a_probe():
    """On a busy machine a trial at more threads costs most; a quieter machine shows as faster steps."""
    busy = FakeMachine({2: 5.0, 1: 1.0})
    chooser = ThreadChooser(2, clock=busy.clock)
    assert chooser.probe(busy.trial) == 1
    for step in range(1, 2 * LAST_INTERVAL):
        assert not chooser.due(10**6), step  # no interval probes
        chooser.record(1.0)
    chooser.resume(1)
    assert chooser.due(10**6) and torch.get_num_threads() == 1  # a resumed run checks its recorded count
    chooser.probe(busy.trial)
    assert not chooser.due(10**6)


def test_step_times_that_drift_call_for_a_probe_at_once():
    machine = FakeMachine({2: 1.0, 1: 1.5})
    chooser = ThreadChooser(2, clock=machine.clock)
    chooser.probe(machine.trial)
    for _ in range(WINDOW):
        chooser.record(1.0)  # the baseline after the probe
    for _ in range(WINDOW // 2):
        chooser.record(1.0 * DRIFT * 1.1)  # another process starts: half the window is slower
    assert not chooser.due(10**6)  # the median has not moved yet
    for _ in range(WINDOW // 2 + 1):
        chooser.record(1.0 * DRIFT * 1.1)
    assert chooser.due(10**6)
    busy = FakeMachine({2: 5.0, 1: 1.0})
    chooser._clock = busy.clock
    assert chooser.probe(busy.trial) == 1
    assert not chooser.due(10**6)  # a probe starts a new baseline
    for _ in range(WINDOW):
        chooser.record(1.0)
    for _ in range(WINDOW):
        chooser.record(1.0 * DRIFT * 1.1)  # slower still: fewer threads than one cannot help
    assert not chooser.due(10**6)
    for _ in range(WINDOW):
        chooser.record(1.0 / (DRIFT * 1.1))  # the other processes ended: more threads may help
    assert chooser.due(10**6)


class FakeMachine:
    """A clock that advances by the cost of a trial at the current thread count."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.now, self.trials = cost, 0.0, {}

    def clock(self) -> float:
        return self.now

    def trial(self) -> None:
        count = torch.get_num_threads()
        self.now += self.cost[count]
        self.trials[count] = self.trials.get(count, 0) + 1


def test_a_probe_sets_the_count_it_picks_and_drops_a_clearly_slower_count_early():
    busy = FakeMachine({2: 5.0, 1: 1.0})
    chooser = ThreadChooser(2, clock=busy.clock)
    assert chooser.probe(busy.trial) == 1 and torch.get_num_threads() == 1 and chooser.current == 1
    assert busy.trials == {2: 3, 1: 3}  # the current count first, then 1
    assert chooser.probe(busy.trial) == 1
    assert busy.trials == {2: 3 + 1, 1: 3 + 3}  # now 2 threads get one trial, 5x the fastest
    quiet = FakeMachine({2: 1.0, 1: 1.5})
    chooser = ThreadChooser(2, clock=quiet.clock)
    assert chooser.probe(quiet.trial) == 2 and torch.get_num_threads() == 2


def test_a_trial_leaves_the_rng_and_buffers_as_it_found_them():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before_rng = torch.get_rng_state()
    before_buffers = [b.clone() for b in model.buffers()]

    def trial() -> None:
        model(torch.randn(8, 3)).sum().backward()

    side_effect_free(model, trial)()
    assert torch.equal(torch.get_rng_state(), before_rng)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), before_buffers))
    trial()  # the same trial unwrapped does change both: the check above could fail
    assert not torch.equal(torch.get_rng_state(), before_rng)


TINY = {"train_size": 160, "val_size": 64, "embedding_size": 8, "head_hidden": 8}


def _records(fresh_plugins, **config) -> tuple[list[dict], list[int]]:
    torch.manual_seed(0)  # the same initial weights in both runs
    built = build_model(ModelSpec("fastweights", "learned", "art", cell_options={"hidden_size": 8},
                                  init_options={"distribution": "normal"}, task_options=TINY), fresh_plugins)
    seen: list[int] = []

    class Keep(Callback):
        def __init__(self) -> None:
            self.records: list[dict] = []

        def on_step_end(self, loop) -> None:
            seen.append(torch.get_num_threads())

        def on_epoch_end(self, loop, record, improved) -> None:
            self.records.append({k: v for k, v in record.items() if k not in ("wall_time", "threads")})

    keep = Keep()
    fit(built.model, built.task, TrainConfig(epochs=1, batch_size=8, **config), callbacks=[keep])
    return keep.records, seen


@pytest.mark.skipif(usable_cpus() < 2, reason="one usable CPU: no thread count to choose")
@pytest.mark.parametrize("chosen", [1, 2])
def test_trial_steps_change_no_result(fresh_plugins, monkeypatch, chosen):
    """A run whose probes pick `chosen` threads writes the records of a run pinned to `chosen`
    threads, with a sampling init (the trials draw from the RNG, which is put back)."""
    torch.set_num_threads(2)  # the chooser's largest count (thread_count_kept restores the count after the test)
    monkeypatch.setattr(threads_module, "pick", lambda times, current: chosen)
    monkeypatch.setattr(threads_module, "MIN_EPOCH_STEPS", 4)  # 20 steps of 8: probes at steps 0, 2, 6 and 14
    monkeypatch.setattr(threads_module, "FIRST_INTERVAL", 2)
    probed, seen = _records(fresh_plugins)
    assert set(seen) == {chosen}
    pinned, _ = _records(fresh_plugins, threads=chosen)
    assert probed == pinned


@pytest.mark.skipif(usable_cpus() < 2, reason="one usable CPU: no thread count to choose")
def test_a_resumed_run_keeps_the_recorded_count_until_its_next_probe(fresh_plugins):
    built = build_model(ModelSpec("lstm", "zero", "art", cell_options={"hidden_size": 8},
                                  task_options={**TINY, "train_size": 64}), fresh_plugins)  # no probe: 8 steps
    seen: list[int] = []

    class Restore(Callback):
        def on_fit_start(self, loop) -> None:
            loop.state.threads = 1  # what a checkpoint's TrainState carries

        def on_step_end(self, loop) -> None:
            seen.append(torch.get_num_threads())

    torch.set_num_threads(2)
    fit(built.model, built.task, TrainConfig(epochs=1, batch_size=8), callbacks=[Restore()])
    assert seen and set(seen) == {1}


def test_a_checkpoints_thread_count_is_checked():
    ckpt = {"epoch": 0, "batch_in_epoch": 3, "step": 3, "wall_time": 1.0, "best": None, "epoch_loss": 0.5,
            "epoch_count": 24}
    assert _checked_state(ckpt, 10).threads is None  # a checkpoint from before the choice was recorded
    assert _checked_state({**ckpt, "threads": 2}, 10).threads == 2
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads"):
            _checked_state({**ckpt, "threads": bad}, 10)
