"""Classes of failure found by benchmarks/cli_fuzz.py (docs/reliability.md, "CLI fuzzing"), each a
one-line exit-2 error now: a path the operating system refuses was exit 1 "internal error: OSError"."""

from __future__ import annotations

from .conftest import assert_one_line_error, invoke

LONG = "a" * 300  # longer than NAME_MAX (255): ENAMETOOLONG


def test_a_path_the_system_refuses_is_input_not_an_internal_error(runner):
    result = invoke(runner, ["plot", LONG, "--no-png"])
    assert_one_line_error(result, "Error: File name too long: aaaa")
    assert result.exit_code == 2 and "internal error" not in result.stderr


def test_a_reproduce_grid_directory_the_system_refuses_is_one_line(runner, tmp_path):
    result = invoke(runner, ["reproduce", "art", "--seeds", "1", "--epochs", "1", "--inits", "zero",
                             "--out", str(tmp_path / LONG)])
    assert_one_line_error(result, "File name too long")
    assert result.exit_code == 2
