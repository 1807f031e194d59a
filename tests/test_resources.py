"""Every size option has a range its code can honour, and sizes are checked
against memory before anything is allocated or written (one line, exit 2, never exit 1 or a crash)."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

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
    with pytest.raises(ConfigError, match=r"a thing needs about 2 GB of memory, more than the 0.8 GB crnn may use "
                                          r"\(80% of the 1 GB available on this machine\): lower x$"):
        resources.check_memory(2 * 10**9, "a thing", "x")


def test_check_memory_leaves_a_margin_for_what_estimates_leave_out(monkeypatch):
    """An estimate just under all the available memory passed and the process was then killed
    for memory (the estimates leave out construction temporaries): only MEMORY_FRACTION may be asked for."""
    monkeypatch.setattr(resources, "available_memory", lambda: 10**9)
    assert 0.5 < resources.MEMORY_FRACTION < 1
    resources.check_memory(resources.MEMORY_FRACTION * 10**9, "a thing", "x")  # the fraction itself: accepted
    for nbytes in (resources.MEMORY_FRACTION * 10**9 + 1, 0.95 * 10**9, 10**9):  # 10**9: exactly what is there
        with pytest.raises(ConfigError, match="a thing needs about"):
            resources.check_memory(nbytes, "a thing", "x")


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
    """Each of these ends in one line and exit 2, not an internal error or a run that never ends."""
    out = tmp_path / "run"
    base = BASE if "lcd" not in extra else ["run", "-q"]
    result = invoke(runner, [*base, "--out", str(out), *extra])
    assert_one_line_error(result, fragment)
    assert result.exit_code == 2
    assert not out.exists()


def test_an_unroll_that_cannot_fit_is_refused_at_the_first_batch(runner, tmp_path, monkeypatch):
    """A batch whose backward would need more memory than there is: one line, exit 2 (not an allocator error)."""
    monkeypatch.setattr(resources, "available_memory", lambda: 2**31)
    zero_init = [*BASE[:4], "zero", *BASE[5:]]  # the learned init's A head (1.4 million outputs per example) is refused before
    result = invoke(runner, [*zero_init, "--out", str(tmp_path / "run"), "--set", "cell.hidden_size=1200"])
    assert_one_line_error(result, "a FastWeights unroll of 64 x 11 steps needs about")
    assert result.exit_code == 2


@pytest.mark.parametrize("hidden", [10**6, 10**20])
def test_bench_refuses_a_grid_point_that_cannot_fit(runner, hidden):
    result = invoke(runner, ["bench", "--hidden", str(hidden), "--batch", "1", "--length", "2", "--repeats", "1",
                             "--warmup", "0", "-q"])
    assert_one_line_error(result, f"the bench point B=1 T=2 H={hidden} S=1 needs about")
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--cell", "lstm", "--set", f"cell.hidden_size={10**6}"], "the LSTM weights needs about"),
        (["--cell", "lstm", "--task", "lcd", "--set", f"cell.hidden_size={10**6}"], "the LSTM weights needs about"),
        (["--set", f"task.head_hidden={10**8}"], "lower task.head_hidden / task.embedding_size"),
        # the cell (14 GB with its gradients and moments) fits alone; the learned init's heads (734 GB) do not:
        # refused before the cell is allocated (the whole model is first built on the meta device)
        (["--set", "cell.hidden_size=30000"], "the learned init's heads needs about"),
        (["--set", f"context.out_features={10**9}"], "lower context.out_features"),
        (["--task", "lcd", "--cell", "lstm", "--set", f"context.hidden={10**6}", "--set", "context.layers=2"],
         "lower context.hidden / context.layers"),
    ],
)
def test_every_built_in_components_size_is_checked_before_it_is_allocated(runner, tmp_path, extra, fragment):
    """The LSTM, the ART head and the context networks refuse sizes that cannot fit before they
    allocate (unchecked, an LSTM of 10^6 units fails in PyTorch's allocator, exit 1)."""
    out = tmp_path / "run"
    base = BASE if "--cell" not in extra else ["run", "-q", "--epochs", "1", *(TINY_ART if "lcd" not in extra else [])]
    result = invoke(runner, [*base, "--out", str(out), *extra])
    assert_one_line_error(result, fragment)
    assert result.exit_code == 2
    assert not out.exists()


def test_components_that_fit_one_by_one_but_not_together_are_refused(runner, tmp_path, monkeypatch):
    """An ART embedding of 10^7 makes the cell's input weights and the linear context network each
    8 GB to train (each under the 10 GB crnn may use), 18 GB together: refused before anything is
    allocated, naming the largest part (unchecked, training grew past 17 GB)."""
    monkeypatch.setattr(resources, "available_memory", lambda: 10**10 / resources.MEMORY_FRACTION)
    out = tmp_path / "run"
    result = invoke(runner, [*BASE, "--out", str(out), "--set", f"task.embedding_size={10**7}"])
    assert_one_line_error(result, "the model's weights (all components together) needs about 21.9 GB")
    assert "the largest weight: " in result.stderr
    assert result.exit_code == 2
    assert not out.exists()


def test_a_batchs_activations_through_the_widest_layers_are_checked(runner, tmp_path, monkeypatch):
    """An ART head of 10^7 units has 2 GB of weights (8 GB to train, under what crnn may use), but
    one validation batch of 2048 through it is 82 GB of activations: refused before anything is
    allocated (unchecked, the run grew to 22.6 GB and was killed by the OOM killer). A smaller
    train.eval_batch_size with the same head is still refused, for its training batches."""
    from crnn_core.layers.model import check_activations

    monkeypatch.setattr(resources, "available_memory", lambda: 2 * 10**10)
    out = tmp_path / "run"
    result = invoke(runner, [*BASE, "--out", str(out), "--set", f"task.head_hidden={10**7}"])
    assert_one_line_error(result, "one batch of 2048 examples (train.eval_batch_size) through the model's layers")
    assert "task_module.out.0.weight: 1e+07 outputs per example" in result.stderr
    assert result.exit_code == 2 and not out.exists()
    result = invoke(runner, [*BASE, "--out", str(out), "--set", f"task.head_hidden={10**7}",
                             "--set", "train.eval_batch_size=16", "--batch-size", "1024"])
    assert_one_line_error(result, "one batch of 1024 examples (train.batch_size)")
    layer = nn.Linear(4, 1000)
    check_activations(layer, 10**6, "train.batch_size")  # 12 GB: fits the 16 GB crnn may use here
    with pytest.raises(ConfigError, match=r"lower train.batch_size or the widest layer \(weight: 1e\+03"):
        check_activations(layer, 2 * 10**6, "train.batch_size")


def test_the_learned_inits_heads_are_checked(monkeypatch):
    """One head row per state element: a 5000-unit FastWeights state (25 million elements) from a
    50-wide context is 1.3 billion parameters."""
    from crnn_plugins.inits.learned_init import LearnedInit, LearnedOptions

    monkeypatch.setattr(resources, "available_memory", lambda: 10**9)
    with pytest.raises(ConfigError, match="the learned init's heads needs about 20.4 GB"):
        LearnedInit({"h": (5000,), "A": (5000, 5000)}, 50, LearnedOptions())
    assert LearnedInit({"h": (50,)}, 50, LearnedOptions()).heads["h"].weight.shape == (50, 50)  # small: built


def fake_root(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"proc/self/cgroup": "0::/job\n", "sys/fs/cgroup/job/cpu.max": "150000 100000\n"}, 1.5),
        ({"proc/self/cgroup": "0::/job\n", "sys/fs/cgroup/job/cpu.max": "max 100000\n"}, None),
        ({"proc/self/cgroup": "0::/docker/abc\n", "sys/fs/cgroup/cpu.max": "100000 100000\n"}, 1.0),  # a container's root
        ({"proc/self/cgroup": "4:cpu,cpuacct:/slurm/job1\n",
          "sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "300000\n",
          "sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"proc/self/cgroup": "4:cpu:/\n", "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
          "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"proc/self/cgroup": "0::/job\n", "sys/fs/cgroup/job/cpu.max": "garbage\n"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read_from_v1_and_v2_files(tmp_path, files, quota):
    assert resources.cgroup_cpu_quota(fake_root(tmp_path, files)) == quota


def test_usable_cpus_is_the_affinity_lowered_to_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert resources.usable_cpus(tmp_path) == 6  # no cgroup files: the affinity mask
    root = fake_root(tmp_path, {"proc/self/cgroup": "0::/job\n", "sys/fs/cgroup/job/cpu.max": "250000 100000\n"})
    assert resources.usable_cpus(root) == 3  # 2.5 CPUs of quota, rounded up
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: {7})
    assert resources.usable_cpus(root) == 1
    (root / "sys/fs/cgroup/job/cpu.max").write_text("1000 100000\n")
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: {0, 1})
    assert resources.usable_cpus(root) == 1  # never 0


@pytest.mark.usefixtures("thread_count_kept")
def test_training_uses_no_more_threads_than_the_process_may_use(runner, tmp_path, monkeypatch):
    """train.threads left unset: PyTorch's default, lowered to the usable CPUs (here a quota of 1)."""
    import torch

    from crnn_core import train

    seen = []
    real = train._train_epoch
    monkeypatch.setattr(train, "usable_cpus", lambda: 1)
    monkeypatch.setattr(train, "_train_epoch", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1])
    torch.set_num_threads(2)
    assert invoke(runner, [*BASE, "--out", str(tmp_path / "run")]).exit_code == 0
    assert seen == [1]


def test_openmp_spinning_is_limited_unless_the_user_chose_a_policy():
    from crnn_core import entry

    environ: dict[str, str] = {}
    entry.limit_openmp_spinning(environ)
    assert environ == {"GOMP_SPINCOUNT": entry.OPENMP_SPINCOUNT}
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        environ = dict(chosen)
        entry.limit_openmp_spinning(environ)
        assert environ == chosen


def test_art_epoch_competitors_run_beside_the_block_and_are_killed_after():
    """benchmarks/art_epoch.py --competitors: N busy processes while the loaded epoch runs, none after."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("art_epoch", Path(__file__).parent.parent / "benchmarks" / "art_epoch.py")
    art_epoch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(art_epoch)
    with art_epoch.competitors(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.returncode is not None for p in procs)
    records = [{"init": "zero", "backend": "fused", "load": load, "epoch_train_s": t}
               for load, t in (("quiet", 1.0), ("loaded", 2.5), ("quiet", 1.2), ("loaded", 2.1))]
    assert art_epoch.loaded_ratios(records) == [{"init": "zero", "backend": "fused", "quiet_s": 1.1, "loaded_s": 2.3,
                                                 "ratio": 2.09}]
