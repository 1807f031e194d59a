"""Using the library imports only the library: no command line, experiments, plotting, click, Ray
or matplotlib after building and running its layers (in a fresh interpreter), and the module
paths of the previous release still import, with a DeprecationWarning."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

USE_THE_LIBRARY = """
import json, sys, torch
from crnn_core import ContextualRNN, FastWeights, fit
x = torch.randn(2, 5, 3)
FastWeights(3, 4)(x)
ContextualRNN(torch.nn.LSTM(3, 4, batch_first=True), init="learned", context_size=2)(x, context=torch.randn(2, 2))
ContextualRNN(FastWeights(3, 4), init="free")(x)
print(json.dumps(sorted(sys.modules)))
"""

#: Top-level packages a library user must not pay for.
FORBIDDEN_PACKAGES = ("click", "ray", "matplotlib")
#: Modules of the command line, the experiments and their plots, and the paper's study.
FORBIDDEN_PREFIXES = ("crnn_core.commandline", "crnn_core.experiments", "crnn_plugins.experiments",
                      "crnn_plugins.commands")


def loaded_after(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in FORBIDDEN_PACKAGES
            or any(m == p or m.startswith(p + ".") for p in FORBIDDEN_PREFIXES)]


def test_the_layers_and_fit_import_no_cli_experiment_or_plotting_module():
    modules = loaded_after(USE_THE_LIBRARY)
    assert "crnn_plugins.inits.learned_init" in modules  # the learned init was looked up through the registry
    assert forbidden(modules) == []


def test_the_check_sees_a_cli_import():
    """The same check fails once the command line is imported (so the test above could fail)."""
    modules = loaded_after(USE_THE_LIBRARY.replace("print(", "import crnn_core.commandline.main\nprint("))
    assert "click" in forbidden(modules) and "crnn_core.commandline.main" in forbidden(modules)


def modules_after_cli(*args: str) -> tuple[str, list[str]]:
    """What ``crnn ARGS`` prints (less the last line) and the modules it imported, in a fresh interpreter."""
    code = (f"import json, sys\nsys.argv = ['crnn', *{list(args)!r}]\nfrom crnn_core.commandline.entry import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    output, _, last = done.stdout.strip().rpartition("\n")
    return output, json.loads(last)


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_crnn_version_and_help_import_neither_torch_nor_a_plugin(args):
    output, modules = modules_after_cli(*args)
    assert output.startswith("crnn, version ") if args == ["--version"] else "Commands:" in output
    assert "torch" not in modules and not [m for m in modules if m.startswith("crnn_plugins")]


def test_crnn_help_lists_every_command_without_importing_it():
    output, modules = modules_after_cli("--help")
    from crnn_core.commandline.main import CORE_COMMANDS

    listed = [line.split()[0] for line in output.split("Commands:")[1].splitlines() if line.startswith("  ")
              and not line.startswith("   ")]  # (a short help's continuation lines are indented further)
    assert listed == [*CORE_COMMANDS, "bench", "kernels"]
    assert not {core.module for core in CORE_COMMANDS.values()} & set(modules)


def test_the_help_check_sees_torch():
    """The check above fails where a command's module is imported (so it could fail)."""
    _output, modules = modules_after_cli("list", "--help")
    assert "torch" in modules and "crnn_core.commandline.listing" in modules


@pytest.mark.parametrize("old, new", [
    ("crnn_core.rundir", "crnn_core.rundirs.rundir"),
    ("crnn_core.plugins", "crnn_core.plugin_manager.manager"),
    ("crnn_core.cli", "crnn_core.commandline.main"),
    ("crnn_plugins.art", "crnn_plugins.tasks.art"),
    ("crnn_plugins.fastweights_layer", "crnn_plugins.fast_weights.layer"),
])
def test_an_old_module_path_warns_and_gives_the_moved_module(old, new):
    import importlib

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        __import__(old)  # as an import statement does
    assert sys.modules[old] is importlib.import_module(new)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(f"{old} has moved to {new}" in m for m in messages), messages
    assert caught[0].filename == __file__  # points at the importing line, not at the import machinery


def test_the_plugin_docs_imports_still_work_with_a_warning():
    code = ("import warnings\nwarnings.simplefilter('error', DeprecationWarning)\n"
            "from crnn_core.plugins import get_plugins\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "DeprecationWarning: crnn_core.plugins has moved to crnn_core.plugin_manager.manager" in done.stderr
