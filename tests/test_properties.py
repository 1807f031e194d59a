"""Property tests (hypothesis): the data generators, the scalers, and the CLI on random input.

Example counts are kept modest so the whole suite stays fast on two cores.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from crnn_core.commandline.main import cli
from crnn_core.interfaces.options import build_options
from crnn_plugins.tasks.art import ARTOptions, ARTTask, QUERY_MARK, generate_art
from crnn_plugins.tasks.lcd import LCDOptions, LCDTask, MinMaxScaler, generate_lcd, lcd_curve

from .conftest import keep_thread_count

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- ART ----------------------------------------------------------------------------------------------
@FAST
@given(size=st.integers(1, 64), pairs=st.integers(1, 26), seed=st.integers(0, 2**40))
def test_art_sequences_are_well_formed(size, pairs, seed):
    data = generate_art(size, pairs, seed)
    tokens, target = data["tokens"], data["target"]
    assert tokens.shape == (size, 2 * pairs + 3) and target.shape == (size,)
    keys, digits = tokens[:, 0 : 2 * pairs : 2], tokens[:, 1 : 2 * pairs : 2]
    assert ((keys >= 0) & (keys < 26)).all(), "keys are letters"
    assert ((digits >= 26) & (digits < 36)).all(), "values are digits"
    assert (tokens[:, 2 * pairs : 2 * pairs + 2] == QUERY_MARK).all(), "then ??"
    for row in range(size):
        row_keys = keys[row].tolist()
        assert len(set(row_keys)) == pairs, "keys are distinct"
        query = tokens[row, -1].item()
        assert query in row_keys, "the query is one of the keys"
        assert target[row].item() == digits[row, row_keys.index(query)].item(), "the target is the query's digit"
    assert torch.equal(generate_art(size, pairs, seed)["tokens"], tokens), "deterministic per seed"


@settings(max_examples=15, deadline=None)
@given(train=st.integers(1, 40), val=st.integers(1, 40), pairs=st.integers(1, 8), data_seed=st.integers(0, 10**6))
def test_art_task_splits_are_independent_and_well_formed(train, val, pairs, data_seed):
    task = ARTTask(build_options(ARTOptions, {"train_size": train, "val_size": val, "pairs": pairs, "data_seed": data_seed}, "task"))
    for split, size in (("train", train), ("val", val)):
        data = task.dataset(split)
        assert data["tokens"].shape == (size, 2 * pairs + 3)
        queries, body = data["tokens"][:, -1], data["tokens"][:, : 2 * pairs]
        assert ((body[:, 0::2] == queries[:, None]).sum(dim=1) == 1).all()
    assert task.dataset("train") is task.dataset("train")


# -- LCD ----------------------------------------------------------------------------------------------
def formula(x0: float, period: float, t: float, tf: float, alpha: float, beta: float) -> float:
    t = min(t, tf)  # TensorFlow clamps the step at decay_steps
    return x0 * ((alpha + (tf - t) / tf) * 0.5 * (1 + math.cos(2 * math.pi * period * t / tf)) + beta)


finite = dict(allow_nan=False, allow_infinity=False)


@FAST
@given(
    x0=st.floats(0.01, 10, **finite), period=st.floats(0.05, 10, **finite), tf=st.floats(1, 60, **finite),
    alpha=st.floats(0, 1, **finite), beta=st.floats(0, 0.1, **finite), steps=st.integers(1, 80),
)
def test_lcd_curve_is_the_formula(x0, period, tf, alpha, beta, steps):
    t = torch.arange(steps, dtype=torch.float64)
    curve = lcd_curve(torch.tensor([x0], dtype=torch.float64), torch.tensor([period], dtype=torch.float64), t, tf, alpha, beta)[0]
    expected = torch.tensor([formula(x0, period, float(s), tf, alpha, beta) for s in range(steps)], dtype=torch.float64)
    assert torch.allclose(curve, expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    periods=st.lists(st.floats(0.1, 6, **finite), min_size=1, max_size=4),
    per_period=st.integers(1, 6), length=st.integers(1, 40), seed=st.integers(0, 2**31),
    x0=st.tuples(st.floats(0.5, 3, **finite), st.floats(0.1, 3, **finite)),
)
def test_lcd_sequences_follow_the_formula(periods, per_period, length, seed, x0):
    lo, width = x0
    o = LCDOptions(length=length, x0_min=lo, x0_max=lo + width)
    raw = generate_lcd(tuple(periods), per_period, o, seed)
    assert raw["trajectory"].shape == (len(periods) * per_period, length + 1)
    assert ((raw["x0"] >= o.x0_min) & (raw["x0"] <= o.x0_max)).all()
    for i in range(raw["x0"].shape[0]):
        x0_i, p_i = raw["x0"][i].item(), raw["period"][i].item()
        assert p_i == periods[i // per_period]
        expected = [formula(x0_i, p_i, float(t), o.tf, o.alpha, o.beta) for t in range(length + 1)]
        assert raw["trajectory"][i].tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@FAST
@given(
    lo=st.floats(-100, 100, **finite), width=st.floats(1e-3, 100, **finite),
    values=st.lists(st.floats(0, 1, **finite), min_size=1, max_size=20),
    outside=st.lists(st.floats(-1e6, 1e6, **finite), min_size=1, max_size=5),
)
def test_scalers_invert(lo, width, values, outside):
    scaler = MinMaxScaler(lo, lo + width)
    x = torch.tensor([lo + v * width for v in values], dtype=torch.float64)
    y = scaler.transform(x)
    assert ((y >= -1 - 1e-9) & (y <= 1 + 1e-9)).all(), "the fitted range maps into [-1, 1]"
    assert torch.allclose(scaler.inverse(y, clip=False), x, rtol=1e-9, atol=1e-9 * (abs(lo) + width))
    assert scaler.transform(torch.tensor([lo, lo + width], dtype=torch.float64)).tolist() == pytest.approx([-1, 1])
    clipped = scaler.inverse(torch.tensor(outside, dtype=torch.float64))
    assert ((clipped >= lo) & (clipped <= lo + width)).all(), "the clipped inverse stays in the range"
    fitted = MinMaxScaler.fit(x) if x.max() > x.min() else None
    if fitted is not None:
        assert torch.allclose(fitted.inverse(fitted.transform(x)), x, rtol=1e-9, atol=1e-9 * (abs(lo) + width))


@settings(max_examples=10, deadline=None)
@given(train=st.integers(2, 8), val=st.integers(1, 4), data_seed=st.integers(0, 10**6))
def test_lcd_task_scaling_inverts(train, val, data_seed):
    task = LCDTask(build_options(LCDOptions, {"train_per_period": train, "val_per_period": val, "data_seed": data_seed}, "task"))
    for split in ("train", "val"):
        raw, data = task.raw(split), task.dataset(split)
        trajectory = raw["trajectory"]
        assert torch.allclose(task.state_scaler.inverse(data["inputs"].double(), clip=False), trajectory[:, :-1], atol=1e-5)
        assert torch.allclose(task.delta_scaler.inverse(data["targets"].double(), clip=False), trajectory.diff(dim=1), atol=1e-5)
        assert torch.allclose(task.period_scaler.inverse(data["context"][:, 1].double(), clip=False), raw["period"], atol=1e-5)
        assert torch.allclose(task.state_scaler.inverse(data["context"][:, 0].double(), clip=False), raw["x0"], atol=1e-5)
    targets = task.dataset("train")["targets"]
    assert targets.min().item() >= -1 - 1e-6 and targets.max().item() <= 1 + 1e-6  # fit on these deltas


# -- the CLI on random input ----------------------------------------------------------------------------
#: Values that never parse as a large number (so a valid run stays tiny), plus tricky literals.
JUNK = st.text(alphabet="abcxyzé?-_ .,=/", max_size=6)
SPECIAL = st.sampled_from(["", "nan", "inf", "-inf", "1e30", "-1e30", "1e-300", "none", "null", "true", "false",
                           "1.5", "-0", "0.0", "relu", "tanh", "normal", "stop", "skip", "linear", "cpu", "cuda"])
VALUE = st.one_of(st.integers(-3, 3).map(str), st.floats(-1e3, 1e3).map(repr), JUNK, SPECIAL)
OPTION_KEYS = [
    "cell.hidden_size", "cell.lam", "cell.eta", "cell.inner_steps", "cell.activation", "cell.layer_norm",
    "cell.forget_bias", "context.activation", "context.layers", "init.init_std", "init.value", "init.noise", "init.distribution", "init.sigma_init", "init.components",
    "context.hidden", "context.out_features", "task.pairs", "task.train_size", "task.val_size", "task.data_seed",
    "task.embedding_size", "task.head_hidden", "train.epochs", "train.batch_size", "train.lr", "train.seed",
    "train.grad_clip", "train.early_stop", "train.eval_batch_size", "train.on_nonfinite", "train.threads",
    "train.device", "train.precision", "train.adam_impl", "task.bogus", "cell", "x.y", "cell.", ".z", "=", "train.epochs.x",
]
SET_PAIR = st.one_of(
    st.tuples(st.sampled_from(OPTION_KEYS), VALUE).map(lambda kv: f"{kv[0]}={kv[1]}"),
    JUNK,  # not even key=value
)


def optional(flag: str, values) -> st.SearchStrategy:
    return st.one_of(st.just([]), values.map(lambda v: [flag, v]))


#: Overrides that are valid for some combinations (an invalid combination is a clean error too).
GOOD_PAIRS = ["cell.lam=0.9", "cell.eta=0.3", "cell.inner_steps=2", "cell.activation=tanh", "cell.forget_bias=0",
              "init.noise=0.1", "init.value=0.5", "init.distribution=normal", "init.components=h", "context.hidden=4",
              "task.pairs=3", "task.data_seed=5", "train.grad_clip=1", "train.on_nonfinite=skip", "train.early_stop=true",
              "train.eval_batch_size=7", "train.seed=2", "train.threads=1", "train.precision=bf16-mixed",
              "train.adam_impl=foreach", "train.adam_impl=for-loop"]


@st.composite
def run_arguments(draw) -> list[str]:
    """Mostly valid arguments with a few random faults (half the time none), so both outcomes are exercised."""
    faults = draw(st.sampled_from([0, 0, 1, 2, 4]))
    cell = draw(st.sampled_from([None, "fastweights", "lstm"]))
    args = ["run", "-q", "--set", "task.train_size=48", "--set", "task.val_size=16", "--set", "task.embedding_size=8",
            "--set", "task.head_hidden=8", "--set", "cell.hidden_size=8", "--set", "train.threads=1"]
    if cell is not None:
        args += ["--cell", cell]
    if cell in (None, "fastweights"):
        args += ["--set", "cell.backend=reference"]
    init = draw(st.sampled_from([None, "zero", "free", "learned"]))
    args += ["--init", init] if init else []
    if init in (None, "learned"):
        args += draw(optional("--context", st.sampled_from(["linear", "mlp", "identity"])))
    args += draw(optional("--task", st.just("art")))
    args += ["--epochs", draw(st.sampled_from(["1", "2"]))]
    args += draw(optional("--batch-size", st.integers(1, 60).map(str)))
    args += draw(optional("--lr", st.floats(1e-4, 0.1).map(repr)))
    args += draw(optional("--seed", st.integers(0, 2**31).map(str)))
    args += draw(optional("--device", st.just("cpu")))
    for pair in draw(st.lists(st.sampled_from(GOOD_PAIRS), max_size=2)):
        args += ["--set", pair]
    faulty = [
        optional("--cell", st.sampled_from(["fastweight", "", "-1"])),
        optional("--init", st.sampled_from(["lerned", "", "--force"])),
        optional("--task", st.sampled_from(["lcd", "ar", "nan"])),
        optional("--context", st.sampled_from(["mpl", "", "linear"])),
        optional("--epochs", st.one_of(st.integers(-1, 0).map(str), JUNK, SPECIAL)),
        optional("--batch-size", st.one_of(st.integers(-2, 0).map(str), JUNK, SPECIAL)),
        optional("--lr", st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), JUNK, SPECIAL)),
        optional("--seed", st.one_of(st.integers(-(2**70), 2**70).map(str), JUNK)),
        optional("--device", st.sampled_from(["cuda", "cuda:7", "tpu", ""])),
        SET_PAIR.map(lambda pair: ["--set", pair]),
        st.sampled_from([["--early-stop"], ["--no-early-stop"], ["--force"], ["--bogus"], ["-x"], ["extra"], ["--resume"]]),
    ]
    for _ in range(faults):
        args += draw(st.one_of(*faulty))
    return args


def check_clean_outcome(result) -> None:
    """Exit 0 with a JSON summary, or 2/3 with exactly one `Error:` line; never a traceback (exit 1 = a bug)."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2, 3), output
    event(f"exit {result.exit_code}")
    if result.exit_code == 0:
        json.loads(result.stdout)
    else:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr


@CLI
@given(args=run_arguments())
def test_run_never_shows_a_traceback(args):
    with tempfile.TemporaryDirectory() as tmp, keep_thread_count():
        result = CliRunner().invoke(cli, [*args, "--out", str(Path(tmp) / "run")])
    check_clean_outcome(result)


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 64), st.floats(-64, 64), JUNK, SPECIAL),  # sizes stay small
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(JUNK, inner, max_size=3)),
    max_leaves=4,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    with keep_thread_count():
        result = CliRunner().invoke(cli, ["run", "-q", "--epochs", "1", "--out", str(out), "--set", "task.train_size=48",
                                          "--set", "task.val_size=16", "--set", "cell.hidden_size=8", "--set", "cell.backend=reference"])
    assert result.exit_code == 0, result.output
    return out


@settings(CLI, max_examples=25)
@given(data=st.data())
def test_resume_with_a_randomly_edited_config_never_shows_a_traceback(finished_run, data):
    config = json.loads((finished_run / "config.json").read_text())
    path = data.draw(st.sampled_from(list(_paths(config))[1:]))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if action == "replace":
        parent[path[-1]] = data.draw(JSON)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent[path[-1]], dict):
        parent[path[-1]][data.draw(JUNK)] = data.draw(JSON)
    with tempfile.TemporaryDirectory() as tmp, keep_thread_count():
        run = Path(tmp) / "run"
        shutil.copytree(finished_run, run)
        (run / "config.json").write_text(json.dumps(config))
        result = CliRunner().invoke(cli, ["run", "--resume", str(run), "--epochs", "1", "-q"])
    check_clean_outcome(result)
