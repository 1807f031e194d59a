"""The intra-op thread count of CPU training on a machine other processes may share.

With every CPU in use by PyTorch's threads, each parallel region ends in a barrier that waits
for its slowest thread. On a quiet machine that costs little; beside busy processes one of
the threads is often descheduled, and every region of every step then waits a scheduler time
slice for it. On the project's 2-core machine an ART epoch with 2 threads took 4.9x its quiet
time beside two busy processes, with 1 thread 1.8x the quiet 2-thread time
(benchmarks/results/threads_2026-12-07/NOTES.md).

So, when ``train.threads`` is not set, :class:`ThreadChooser` times a few *trial steps* at each
candidate count (all usable CPUs, half of them, one) and keeps the current count unless
another is clearly faster (:func:`pick`). It probes at the first step; training at all the
CPUs, again :data:`FIRST_INTERVAL` steps after a probe, then at doubling intervals while the
choice holds (up to :data:`LAST_INTERVAL`); at any count, it probes at once when the
training steps' own times drift by :data:`DRIFT` from what they were after the latest probe,
in a direction another count could help (another process started or ended). At fewer threads
there are no other probes: on a busy machine a trial at more threads costs most.
A trial step is a forward and backward pass on the coming batch whose gradients are dropped;
the torch RNG and the model's buffers are put back, so trials change no result. The thread
count does change results by float rounding (PyTorch's parallel reductions split their sums
by thread), so the count chosen is part of the checkpoint: a resumed run starts at it and
probes at its first step; metrics.jsonl records the latest choice of each epoch.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from typing import Callable

import torch
from torch import nn

#: Steps from a probe to the next while the choice holds: the first interval, doubled after
#: each probe that keeps the count, up to the last; a probe that changes it starts again.
FIRST_INTERVAL = 400
LAST_INTERVAL = 3200

#: Training steps whose median time is this factor slower or faster than the median of the
#: first :data:`WINDOW` steps after the latest probe call for a probe at once.
DRIFT = 1.5
WINDOW = 20

#: Epochs shorter than this are trained at the usable CPUs, without probes: a probe costs
#: about eight steps, too much for a short run to win back.
MIN_EPOCH_STEPS = 200

#: Timed trial steps per candidate (their median counts).
TRIALS = 3

#: Fewer threads are chosen only when they are this much faster than more: on a quiet machine
#: the counts are often within noise of each other, and results are reproducible only while
#: the choice stays the same.
MARGIN = 1.2

#: The current count is kept while its time is within this factor of the fastest: a busy
#: machine's trials are noisy (a step preempted for a time slice), and a switch to more threads
#: there costs far more than a switch to fewer on a quiet one.
STAY = 1.1

#: A candidate whose trial takes this many times the fastest median so far is not timed further.
ABANDON = 2 * MARGIN


def candidates(cpus: int) -> list[int]:
    """The thread counts a probe tries, largest first: ``cpus``, half of them, one."""
    return sorted({cpus, math.ceil(cpus / 2), 1}, reverse=True)


def pick(times: dict[int, float], current: int) -> int:
    """``current`` while its time is within :data:`STAY` of the fastest of ``times``; else the
    largest thread count within :data:`MARGIN` of the fastest."""
    fastest = min(times.values())
    if times.get(current, math.inf) <= STAY * fastest:
        return current
    return max(count for count, seconds in times.items() if seconds <= MARGIN * fastest)


class ThreadChooser:
    """Chooses the intra-op thread count from timed trial steps (see the module docstring).

    Before each training step ``chooser.due(steps_per_epoch)`` says whether a
    probe is due; ``chooser.probe(trial)`` times ``trial()`` at each candidate count, sets the
    count chosen (``torch.set_num_threads``) and returns it; ``chooser.record(seconds)`` takes
    each training step's time.
    """

    def __init__(self, cpus: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.candidates = candidates(cpus)
        self.current = self.candidates[0]
        self._clock = clock
        self._interval = FIRST_INTERVAL
        self._steps_to_probe = 0
        self._baseline: float | None = None  # median step time of the first WINDOW steps after a probe
        self._recent: deque[float] = deque(maxlen=WINDOW)
        self._pending = False  # a probe at the next step (a resumed run's recorded count is checked)
        self._promised: float | None = None  # the trial time of the count the latest probe chose
        self._rechecked = False  # the latest probe was itself a recheck of a broken promise

    def due(self, steps_per_epoch: int) -> bool:
        """Whether to probe before this step: never in epochs shorter than :data:`MIN_EPOCH_STEPS`;
        at the first step, after a resume, and when step times drifted; and, training at all the
        CPUs, when the interval has passed (at fewer, a trial at more threads is what costs most
        on a busy machine, and a quieter machine shows as faster steps)."""
        if steps_per_epoch < MIN_EPOCH_STEPS:
            return False
        if self._pending or self._drifted():
            return True
        return self.current == self.candidates[0] and self._steps_to_probe <= 0

    def record(self, seconds: float) -> None:
        """One training step took ``seconds``."""
        self._steps_to_probe -= 1
        self._recent.append(seconds)
        if self._baseline is None and len(self._recent) == WINDOW:
            self._baseline = statistics.median(self._recent)
            # Steps far slower than the chosen count's trials: a busy machine's lucky trials
            # chose more threads than it can run. Probe again, once.
            broken = self._promised is not None and self._baseline > DRIFT * self._promised
            if broken and self.current > 1 and not self._rechecked:
                self._pending = True

    def _drifted(self) -> bool:
        """Steps slowed down while more than one thread trains (fewer may help now), or sped up
        while fewer than all do (more may): other processes started or ended."""
        if self._baseline is None or len(self._recent) < WINDOW:
            return False
        ratio = statistics.median(self._recent) / self._baseline
        return (ratio > DRIFT and self.current > 1) or (ratio < 1 / DRIFT and self.current < self.candidates[0])

    def use(self, count: int) -> None:
        """Train at ``count`` threads until the next probe."""
        self.current = count
        torch.set_num_threads(count)

    def resume(self, count: int) -> None:
        """Continue a run that recorded ``count``: train at it until a probe at the next step
        that is due (the machine may have changed since)."""
        self.use(count)
        self._pending = True

    def probe(self, trial: Callable[[], None]) -> int:
        """Time ``trial`` at each candidate count, the current one first, and use the pick.

        A candidate is dropped after one trial :data:`ABANDON` times slower than the fastest so
        far: on a busy machine the losing count costs a lot per trial (waking its threads
        included: there is no untimed warm-up)."""
        times: dict[int, float] = {}
        for count in sorted(self.candidates, key=lambda c: c != self.current):
            torch.set_num_threads(count)
            samples = []
            for _ in range(TRIALS):
                start = self._clock()
                trial()
                samples.append(self._clock() - start)
                if times and samples[-1] > ABANDON * min(times.values()):
                    break
            times[count] = statistics.median(samples)
        chosen = pick(times, self.current)
        self._rechecked = self._pending and self._promised is not None and not self._rechecked
        self._promised = times[chosen]
        if chosen != self.current:
            self._interval = FIRST_INTERVAL
        self._steps_to_probe = self._interval
        self._interval = min(2 * self._interval, LAST_INTERVAL)
        self._baseline = None
        self._recent.clear()
        self._pending = False
        self.use(chosen)
        return chosen


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
