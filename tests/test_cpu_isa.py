"""The CPU kernel gives the same numbers on every instruction set it compiles for.

The PyTorch parity tests exercise the build for this machine (``-march=native``); this
test compiles the kernel header alone (tests/kernel_check/isa_check.cpp, no PyTorch) for
AVX-512, AVX2 and baseline SSE2 (different vector widths and code paths: the AVX-512 build
skips ReLU zeros with vcompress) and checks that all agree with the native build.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parent / "kernel_check" / "isa_check.cpp"
CXX = shutil.which("g++") or shutil.which("c++")
ARCHS = ["native", "x86-64-v3", "x86-64"]  # x86-64-v3: AVX2+FMA; x86-64: SSE2
CASES = [  # B, T, H, S, act (0 relu, 1 tanh), nonzero A0, float64
    (3, 5, 37, 2, 0, 1, 1),
    (2, 4, 50, 1, 1, 1, 1),
    (2, 11, 50, 1, 0, 0, 0),
    (2, 3, 130, 3, 0, 1, 0),
    (2, 150, 9, 2, 1, 1, 1),  # three chunks (chunk length 64)
]


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler")
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the -march list is for x86-64")
    out = {}
    tmp = tmp_path_factory.mktemp("isa")
    procs = {}
    for arch in ARCHS:
        exe = tmp / f"isa_{arch}"
        procs[arch] = subprocess.Popen([CXX, "-O2", f"-march={arch}", "-std=c++17", "-Wno-psabi", str(SRC), "-o", str(exe)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out[arch] = exe
    for arch, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{arch}: {err}"
    return out


def run(exe: Path, case) -> np.ndarray:
    proc = subprocess.run([str(exe), *map(str, case)], capture_output=True, text=True, timeout=120)
    if proc.returncode == -4:  # SIGILL: this CPU lacks the instruction set
        pytest.skip(f"{exe.name} does not run on this CPU")
    assert proc.returncode == 0, proc.stderr
    return np.array([float(x) for x in proc.stdout.split()])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-T{}-H{}-S{}-{}-{}-{}".format(
    *c[:4], "tanh" if c[4] else "relu", "A0" if c[5] else "zeroA0", "f64" if c[6] else "f32"))
def test_all_instruction_sets_agree(binaries, case):
    ref = run(binaries["native"], case)
    assert ref.size > 0 and np.isfinite(ref).all()
    tol = 1e-10 if case[6] else 2e-4
    for arch in ARCHS[1:]:
        got = run(binaries[arch], case)
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max(), err_msg=arch)
