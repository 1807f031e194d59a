"""The intra-op thread count of CPU training on a machine other processes may share.

With every CPU in use by PyTorch's threads, each parallel region ends in a barrier that waits
for its slowest thread. On a quiet machine that costs little; beside busy processes one of
the threads is often descheduled, and every region of every step then waits a scheduler time
slice for it. On the project's 2-core machine an ART epoch with 2 threads took 4.9x its quiet
time beside two busy processes, with 1 thread 1.8x the quiet 2-thread time
(benchmarks/results/threads_2026-12-07/NOTES.md).

So, when ``train.threads`` is not set, :class:`ThreadChooser` times a few *trial steps* at each
candidate count (all usable CPUs, half of them, one) at the start of every epoch and every
:data:`PROBE_EVERY` steps, and trains at the largest count whose trial time is within
:data:`MARGIN` of the fastest. A trial step is a forward and backward pass on the coming batch
whose gradients are dropped; the torch RNG and the model's buffers are put back, so trials
change no result. The thread count does change results by float rounding (PyTorch's parallel
reductions split their sums by thread), so the count chosen is part of the checkpoint: a
resumed run uses it until the next probe, and metrics.jsonl records each epoch's counts.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch
from torch import nn

#: Steps between two probes within an epoch (each epoch starts with one).
PROBE_EVERY = 1000

#: Epochs shorter than this are trained at the usable CPUs, without probes: a probe costs
#: about eight steps, too much for a short epoch to win back.
MIN_EPOCH_STEPS = 200

#: Timed trial steps per candidate (their median counts); a candidate other than the current
#: one runs one more, untimed, first (a changed thread count wakes the pool).
TRIALS = 3

#: Fewer threads are chosen only when they are this much faster than more: on a quiet machine
#: the counts are often within noise of each other, and results are reproducible only while
#: the choice stays the same.
MARGIN = 1.2

#: A candidate whose trial takes this many times the fastest median so far is not timed further.
ABANDON = 2 * MARGIN


def candidates(cpus: int) -> list[int]:
    """The thread counts a probe tries, largest first: ``cpus``, half of them, one."""
    return sorted({cpus, math.ceil(cpus / 2), 1}, reverse=True)


def pick(times: dict[int, float], margin: float = MARGIN) -> int:
    """The largest thread count whose time is within ``margin`` of the fastest of ``times``."""
    fastest = min(times.values())
    return max(count for count, seconds in times.items() if seconds <= margin * fastest)


class ThreadChooser:
    """Chooses the intra-op thread count from timed trial steps (see the module docstring).

    ``chooser.due(batch_in_epoch, steps_per_epoch)`` says whether a probe is due before this
    step; ``chooser.probe(trial)`` times ``trial()`` at each candidate count, sets the count
    chosen (``torch.set_num_threads``) and returns it.
    """

    def __init__(self, cpus: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.candidates = candidates(cpus)
        self.current = self.candidates[0]
        self._clock = clock

    def due(self, batch_in_epoch: int, steps_per_epoch: int) -> bool:
        """A probe is due at the epoch's start and every :data:`PROBE_EVERY` steps, in epochs of
        at least :data:`MIN_EPOCH_STEPS` steps."""
        return steps_per_epoch >= MIN_EPOCH_STEPS and batch_in_epoch % PROBE_EVERY == 0

    def use(self, count: int) -> None:
        """Train at ``count`` threads (a resumed run's recorded choice) until the next probe."""
        self.current = count
        torch.set_num_threads(count)

    def probe(self, trial: Callable[[], None]) -> int:
        """Time ``trial`` at each candidate count, the current one first, and use the pick.

        A candidate is dropped after one trial :data:`ABANDON` times slower than the fastest so
        far: on a busy machine the losing count costs a lot per trial."""
        times: dict[int, float] = {}
        for count in sorted(self.candidates, key=lambda c: c != self.current):
            torch.set_num_threads(count)
            if count != self.current:
                trial()
            samples = []
            for _ in range(TRIALS):
                start = self._clock()
                trial()
                samples.append(self._clock() - start)
                if times and samples[-1] > ABANDON * min(times.values()):
                    break
            times[count] = statistics.median(samples)
        self.use(pick(times))
        return self.current


def side_effect_free(model: nn.Module, trial: Callable[[], None]) -> Callable[[], None]:
    """``trial`` wrapped so that it leaves the torch CPU RNG and ``model``'s buffers as it found
    them (a sampling init draws from the RNG; a normalisation layer updates running statistics)."""
    def run() -> None:
        rng = torch.get_rng_state()
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        try:
            trial()
        finally:
            torch.set_rng_state(rng)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
    return run
