"""A wheel built from this checkout installs into a fresh environment and runs from anywhere.

Builds the wheel as the README says (``pip wheel --no-build-isolation --no-deps .``, from a
copy of the checkout), installs it into a new virtual environment that reuses this
environment's PyTorch (a ``.pth`` file, no download), and from a directory outside the
checkout checks that ``crnn kernels`` loads the prebuilt kernel with a named CPU path and
that a tiny ``crnn run`` trains. Slow (one extension build, ~1-2 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from .conftest import TINY_ART

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "build", "dist", "runs", "__pycache__", ".pytest_cache", ".hypothesis"}

pytestmark = pytest.mark.slow


def _copy_checkout(dest: Path) -> None:
    """The files a build needs: the checkout less environments, build outputs and built libraries."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP_DIRS or n.endswith((".egg-info", ".so", ".whl"))
                or (Path(directory) == ROOT and n.startswith(".") and n not in (".ci",))}

    shutil.copytree(ROOT, dest, ignore=ignore)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    torch_site = Path(__import__("torch").__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRNN_", "PYTHONPATH"))}
    env["CRNN_REQUIRE_EXT"] = "1"  # a wheel without the prebuilt kernel is a failure here
    src, wheels, venv, elsewhere = (tmp_path / n for n in ("src", "wheels", "venv", "elsewhere"))
    _copy_checkout(src)
    started = time.monotonic()
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(wheels), "."],
         src, env, timeout=600)
    built_s = time.monotonic() - started
    (wheel,) = wheels.glob("crnn-*.whl")

    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env, timeout=120)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp_path, env, timeout=60).stdout.strip())
    # This environment's packages (torch, numpy, click, ...) after the venv's own: no download.
    (site / "_crnn_test_reuse.pth").write_text(f"{torch_site}\n{sysconfig.get_paths()['purelib']}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], tmp_path, env, timeout=300)

    elsewhere.mkdir()
    env_out = dict(env, CRNN_KERNEL_CACHE=str(tmp_path / "cache"), CRNN_NO_JIT="1")
    crnn = str(venv / "bin" / "crnn")
    report = json.loads(_run([crnn, "kernels", "--json"], elsewhere, env_out, timeout=120).stdout)
    assert report["fused_loaded"], report["reason"]
    assert report["reason"].startswith("prebuilt crnn_plugins._fastweights_C")
    assert Path(report["kernel_sources"]).is_relative_to(venv), report["kernel_sources"]  # not the checkout
    info = report["build_info"]
    assert info["cpu_isa"] in info["cpu_paths"] and info["cpu_isa"] == info["cpu_path_best"]
    assert set(info["cpu_paths"]) == {"baseline", "avx2", "avx512"} or len(info["cpu_paths"]) == 1
    text = _run([crnn, "kernels"], elsewhere, env_out, timeout=120).stdout
    assert f"CPU path: {info['cpu_isa']}" in text

    _run([crnn, "run", "--cell", "fastweights", "--init", "learned", "--task", "art", "--epochs", "1",
          *TINY_ART, "--out", "run"], elsewhere, env_out, timeout=300)
    run_dir = elsewhere / "run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and all("epoch" in r for r in records)
    print(f"wheel built in {built_s:.0f} s")
