"""A real third-party package (examples/crnn-gru-plugin) is discovered through its entry point.

The package is pip-installed into a temporary directory put on PYTHONPATH of a `crnn`
subprocess, so the test environment itself is left untouched.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import crnn_process, env_with_site

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "crnn-gru-plugin"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-compile", "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True,
    )
    return env_with_site(target, "CRNN_NO_PLUGINS")


def test_list_finds_the_plugin(plugin_env):
    result = crnn_process(plugin_env, "list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"name": "gru", "package": "crnn-gru-plugin"}.items() <= next(e for e in data["cells"] if e["name"] == "gru").items()
    assert any(e["name"] == "parity" and e["package"] == "crnn-gru-plugin" for e in data["tasks"])
    plugins = {row["name"]: row for row in json.loads(crnn_process(plugin_env, "plugins", "--json").stdout)}
    assert plugins["gru"]["status"] == "ok" and plugins["gru"]["version"] == "0.1.0"
    assert plugins["gru"]["hooks"] == ["register_cells", "register_tasks"]


def test_run_trains_with_the_plugin(plugin_env, tmp_path):
    out = tmp_path / "run"
    result = crnn_process(plugin_env, "run", "--cell", "gru", "--init", "free", "--task", "parity", "--epochs", "2",
                  "--set", "task.train_size=512", "--set", "task.val_size=256", "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 2
    provenance = json.loads((out / "plugins.json").read_text())
    assert provenance["cell"]["package"] == "crnn-gru-plugin" and provenance["task"]["package"] == "crnn-gru-plugin"
    # the plugin's cell also runs on a built-in task, and a built-in cell on the plugin's task
    assert crnn_process(plugin_env, "run", "--cell", "gru", "--init", "learned", "--task", "art", "--epochs", "1", "-q",
                "--set", "task.train_size=128", "--set", "task.val_size=64", "--out", str(tmp_path / "b")).returncode == 0


def test_learned_on_a_task_without_context(plugin_env, tmp_path):
    result = crnn_process(plugin_env, "run", "--cell", "gru", "--init", "learned", "--task", "parity", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip() == "Error: init 'learned' needs context, but task 'parity' provides none"


def test_disabling_third_party_plugins(plugin_env):
    result = crnn_process({**plugin_env, "CRNN_NO_PLUGINS": "1"}, "run", "--cell", "gru")
    assert result.returncode == 2 and "Unknown cell 'gru'" in result.stderr
