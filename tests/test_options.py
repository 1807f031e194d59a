"""Option parsing: --set syntax, type conversion, validation, one-line errors."""

import dataclasses
from typing import Literal, Optional

import pytest

from crnn_core import ConfigError, option, require
from crnn_core.interfaces.kinds import parse_overrides
from crnn_core.interfaces.options import build_options, describe

from .conftest import assert_one_line_error, invoke


@dataclasses.dataclass
class Opts:
    size: int = option(3, "a size")
    rate: float = option(0.5, "a rate")
    flag: bool = option(False, "a flag")
    mode: Literal["a", "b"] = option("a", "a mode")
    clip: Optional[float] = option(None, "optional")

    def __post_init__(self):
        require(self.size > 0, f"size must be positive, got {self.size}")


def test_parse_overrides():
    scoped = parse_overrides(["cell.inner_steps=2", "task.pairs = 5", "train.grad_clip=none"])
    assert scoped["cell"] == {"inner_steps": "2"}
    assert scoped["task"] == {"pairs": "5"}
    assert scoped["train"] == {"grad_clip": "none"}


@pytest.mark.parametrize("bad", ["foo", "cell=2", "cell.=2", "nope.x=1"])
def test_parse_overrides_rejects(bad):
    with pytest.raises(ConfigError):
        parse_overrides([bad])


def test_conversion():
    o = build_options(Opts, {"size": "7", "rate": "1e-3", "flag": "true", "mode": "b", "clip": "2"}, "cell")
    assert (o.size, o.rate, o.flag, o.mode, o.clip) == (7, 1e-3, True, "b", 2.0)
    assert build_options(Opts, {"clip": "none"}, "cell").clip is None
    assert build_options(Opts, {"size": 4}, "cell").size == 4  # JSON values pass through


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"size": "x"}, "cell.size: expected an integer"),
        ({"size": "1.5"}, "cell.size: expected an integer"),
        ({"rate": "abc"}, "cell.rate: expected a number"),
        ({"rate": "nan"}, "finite"),
        ({"flag": "maybe"}, "true or false"),
        ({"mode": "c"}, "not one of a, b"),
        ({"size": "0"}, "size must be positive"),
        ({"other": "1"}, "unknown option cell.other (valid cell options: clip, flag, mode, rate, size)"),
    ],
)
def test_errors(raw, fragment):
    with pytest.raises(ConfigError) as info:
        build_options(Opts, raw, "cell")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_describe_has_help_for_every_field():
    rows = describe(Opts)
    assert [r["name"] for r in rows] == ["size", "rate", "flag", "mode", "clip"]
    assert all(r["help"] for r in rows)


def test_describe_names_the_allowed_values_and_optional_types():
    types = {row["name"]: row["type"] for row in describe(Opts)}
    assert types == {"size": "int", "rate": "float", "flag": "bool", "mode": "one of 'a', 'b'", "clip": "float or None"}


def test_list_options_shows_every_scope_of_set(runner):
    """README says `crnn list --options` shows every option: the train scope too, Literal types as their values."""
    from tests.conftest import invoke
    from crnn_core.interfaces.kinds import SCOPES

    result = invoke(runner, ["list", "--options"])
    assert result.exit_code == 0, result.output
    shown = {line.strip().split(":")[0] for line in result.stdout.splitlines() if line.startswith("      ")}
    assert shown == set(SCOPES), shown  # cell, init, context, task and train
    assert "train: grad_clip=None  (float or None)" in result.stdout
    assert "activation='relu'  (one of 'relu', 'tanh')" in result.stdout


def test_a_misspelt_option_key_gets_a_did_you_mean(runner):
    """`--set cell.hiden_size=...` listed the valid keys but suggested none; config files the same."""
    result = invoke(runner, ["run", "--cell", "lstm", "--set", "cell.hiden_size=8", "--print-config"])
    assert_one_line_error(result, "unknown option cell.hiden_size; did you mean cell.hidden_size? (valid cell options: ")
    assert_one_line_error(invoke(runner, ["run", "--set", "train.epoch=3", "--print-config"]),
                          "unknown option train.epoch; did you mean train.epochs?")
    assert "did you mean" not in invoke(runner, ["run", "--set", "cell.zzz=1", "--print-config"]).stderr
