"""The code in the docs runs: the worked plugin example in docs/plugins.md."""

import importlib.util
import re
import types
from pathlib import Path

import pytest
import torch

from crnn_core.layers.model import ModelSpec, build_model

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


#: docs/python-api.md at test size: (documented text, what the test runs instead); each must occur.
PYTHON_API_SHRINK = [
    ("for epoch in range(30):", "for epoch in range(2):"),
    ("for step in range(200):", "for step in range(5):"),
    ('"train_per_period": 200, "val_per_period": 50', '"train_per_period": 20, "val_per_period": 10'),
    ("TrainConfig(epochs=10,", "TrainConfig(epochs=2,"),
]


def test_python_api_examples_run(tmp_path, monkeypatch, thread_count_kept, fresh_plugins):
    """Every ```python block of docs/python-api.md runs, in order, in one namespace (shrunk to test size)."""
    blocks = python_blocks(DOCS / "python-api.md")
    assert len(blocks) == 8  # the import line, the six worked examples and the TensorBoard logger
    has_safetensors = importlib.util.find_spec("safetensors") is not None
    optional = {"TensorBoardLogger": importlib.util.find_spec("tensorboard") is not None,
                "export_safetensors": has_safetensors}  # examples of optional extras run where installed
    blocks = [block for block in blocks if all(ok or name not in block for name, ok in optional.items())]
    source = "\n".join(blocks)
    for documented, shrunk in PYTHON_API_SHRINK:
        assert documented in source, f"docs/python-api.md no longer says {documented!r}: update PYTHON_API_SHRINK"
        source = source.replace(documented, shrunk)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_python_api"}
    exec(compile(source, "docs/python-api.md", "exec", dont_inherit=True), namespace)
    # 1: the user's own model trains; 2: sampled initial states differ, the mean is deterministic
    assert namespace["accuracy"] > 0 and namespace["loss"].item() < 10
    assert not torch.equal(namespace["draws"][0], namespace["draws"][1])
    # 3: fit wrote a run directory crnn can read; 4: it was loaded and sampled from
    assert namespace["summary"]["epochs"] == 2
    assert (tmp_path / "runs" / "lcd-api" / "checkpoints" / "best.pt").is_file()
    assert len((tmp_path / "runs" / "lcd-api" / "metrics.jsonl").read_text().splitlines()) == 2
    assert tuple(namespace["rollout"].samples.shape) == (5, 26, 1)
    if "logger" in namespace:  # the TensorBoard example wrote its event file beside its run
        assert next((tmp_path / "runs" / "lcd-tb" / "tensorboard").iterdir()).name.startswith("events.out.tfevents")
    assert set(namespace["h0"]) == {"h", "c"} and namespace["h0"]["h"].shape == (4, 32)
    # 6: the setter took effect, the penalty reached the weights, bfloat16 ran, the program was saved
    assert namespace["layer"].a_update == "preliminary" and namespace["layer"].W.grad.abs().sum() > 0
    assert namespace["low_outputs"].dtype == torch.bfloat16 and (tmp_path / "fastweights.pt2").is_file()
    if not has_safetensors:
        pytest.skip("example 5 needs safetensors (pip install -e '.[safetensors]'; .ci/run installs it)")
    # 5: the export loads without pickle and samples what the run directory samples
    assert namespace["info"]["epoch"] == namespace["checkpoint"]["epoch"]
    assert torch.equal(namespace["again"].samples, namespace["rollout"].samples)
    assert namespace["metadata"]["crnn.plugins"]["cell"]["name"] == "lstm"


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
