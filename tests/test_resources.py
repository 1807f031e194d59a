"""Issue 11 item 6: every size option has a range its code can honour, and sizes are checked
against memory before anything is allocated or written (one line, exit 2, never exit 1 or a crash)."""

from __future__ import annotations

import dataclasses

import pytest

from crnn_core import ConfigError, option
from crnn_core.base import resources
from crnn_core.interfaces.options import build_options, check_bounds, describe

from .conftest import TINY_ART, assert_one_line_error, invoke

BASE = ["run", "--cell", "fastweights", "--init", "learned", "--task", "art", "-q", "--epochs", "1", *TINY_ART,
        "--set", "cell.backend=reference"]


@dataclasses.dataclass
class Sized:
    count: int = option(3, "how many", bounds=(1, 10))
    rate: float = option(0.5, "a rate", bounds=(0.0, None))
    maybe: int | None = option(None, "optional", bounds=(0, 5))

    def __post_init__(self) -> None:
        check_bounds(self)


@pytest.mark.parametrize("raw, fragment", [({"count": "11"}, "x.count must be between 1 and 10, got 11"),
                                           ({"count": "0"}, "x.count must be between 1 and 10, got 0"),
                                           ({"rate": "-1"}, "x.rate must be >= 0.0, got -1.0"),
                                           ({"maybe": "6"}, "x.maybe must be between 0 and 5")])
def test_declared_bounds_refuse_values_outside_them(raw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_options(Sized, raw, "x")


def test_bounds_hold_for_direct_construction_and_are_listed():
    assert build_options(Sized, {"count": "10", "maybe": "none"}, "x").count == 10
    with pytest.raises(ValueError, match="count must be between 1 and 10"):
        Sized(count=99)
    rows = {row["name"]: row for row in describe(Sized)}
    assert rows["count"]["range"] == "between 1 and 10" and rows["rate"]["range"] == ">= 0.0"


def test_list_options_shows_the_ranges(runner):
    out = invoke(runner, ["list", "cells", "--options"]).stdout
    assert "inner_steps=1  (int, between 1 and 1000)" in out


def test_check_memory_refuses_more_than_is_available(monkeypatch):
    assert resources.available_memory() > 0
    monkeypatch.setattr(resources, "available_memory", lambda: 10**9)
    resources.check_memory(10**9, "a thing", "x")  # exactly what is there: accepted
    with pytest.raises(ConfigError, match=r"a thing needs about 2 GB of memory, more than the 1 GB available .*: lower x"):
        resources.check_memory(2 * 10**9, "a thing", "x")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--set", f"task.train_size={10**13}"], "the ART data needs about"),
        (["--set", f"task.val_size={10**13}"], "lower task.train_size / task.val_size"),
        (["--set", f"cell.inner_steps={10**9}"], "cell.inner_steps must be between 1 and 1000"),
        (["--set", f"cell.inner_steps={2**64}"], "cell.inner_steps must be between 1 and 1000"),
        (["--set", f"cell.hidden_size={10**6}"], "the FastWeights weights needs about"),
        (["--set", "task.pairs=27"], "task.pairs must be between 1 and 26"),
        (["--task", "lcd", "--cell", "lstm", "--set", f"task.train_per_period={10**13}"], "the LCD data needs about"),
    ],
)
def test_huge_sizes_are_refused_before_the_run_directory_is_written(runner, tmp_path, extra, fragment):
    """Each of these used to end in exit 1 "internal error" (or ran forever)."""
    out = tmp_path / "run"
    base = BASE if "lcd" not in extra else ["run", "-q"]
    result = invoke(runner, [*base, "--out", str(out), *extra])
    assert_one_line_error(result, fragment)
    assert result.exit_code == 2
    assert not out.exists()


def test_an_unroll_that_cannot_fit_is_refused_at_the_first_batch(runner, tmp_path, monkeypatch):
    """A batch whose backward would need more memory than there is: one line, exit 2 (was an allocator error)."""
    monkeypatch.setattr(resources, "available_memory", lambda: 2**31)
    result = invoke(runner, [*BASE, "--out", str(tmp_path / "run"), "--set", "cell.hidden_size=1200"])
    assert_one_line_error(result, "a FastWeights unroll of 64 x 11 steps needs about")
    assert result.exit_code == 2


@pytest.mark.parametrize("hidden", [10**6, 10**20])
def test_bench_refuses_a_grid_point_that_cannot_fit(runner, hidden):
    result = invoke(runner, ["bench", "--hidden", str(hidden), "--batch", "1", "--length", "2", "--repeats", "1",
                             "--warmup", "0", "-q"])
    assert_one_line_error(result, f"the bench point B=1 T=2 H={hidden} S=1 needs about")
    assert result.exit_code == 2
