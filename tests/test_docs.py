"""The code in the docs runs: the worked plugin example in docs/plugins.md."""

import re
import types
from pathlib import Path

from crnn_core.model import ModelSpec, build_model

from .conftest import TINY_ART, invoke

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def docs_plugin_module() -> types.ModuleType:
    """The worked example of docs/plugins.md (its first python block), executed as a module."""
    module = types.ModuleType("docs_scalar_plugin")
    code = compile(python_blocks(DOCS / "plugins.md")[0], "docs/plugins.md", "exec", dont_inherit=True)
    exec(code, module.__dict__)
    return module


def test_plugins_worked_example(fresh_plugins, runner, tmp_path):
    module = docs_plugin_module()
    fresh_plugins.register(module, name="docs-scalar")
    assert fresh_plugins.registry("inits").get("scalar").cls is module.ScalarInit
    built = build_model(ModelSpec("fastweights", "scalar", "art", init_options={"start": "0.1"},
                                  cell_options={"backend": "reference"}), fresh_plugins)
    assert set(built.model.init.values) == {"h", "A"}
    result = invoke(runner, ["run", "--cell", "fastweights", "--init", "scalar", "--task", "art", "--epochs", "1",
                             "--set", "init.start=0.1", "--out", str(tmp_path / "r"), "-q", *TINY_ART])
    assert result.exit_code == 0, result.stderr
    bad = invoke(runner, ["run", "--init", "scalar", "--set", "init.start=99", "--out", str(tmp_path / "s"), *TINY_ART])
    assert bad.exit_code == 2 and "start must be in [-10, 10]" in bad.stderr


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)


def test_cli_tour(tmp_path):
    """Every line of the tour in docs/cli.md runs, in order, and exits 0."""
    import os
    import shlex
    import subprocess
    import sys

    lines = [line for line in bash_blocks(DOCS / "cli.md")[0].splitlines() if line.strip()]
    assert len(lines) >= 10
    env = dict(os.environ, CRNN_NO_PLUGINS="1")
    for line in lines:
        args = shlex.split(line)
        assert args[0] == "crnn", line
        result = subprocess.run([sys.executable, "-m", "crnn_core", *args[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "runs" / "grid" / "results.md").is_file()
