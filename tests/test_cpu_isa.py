"""The CPU kernel gives the same numbers on every instruction set it compiles for.

The PyTorch parity tests exercise the build for this machine (``-march=native``); this
test compiles the kernel header alone (tests/kernel_check/isa_check.cpp, no PyTorch) for
AVX-512, AVX2 and baseline SSE2 (different vector widths and code paths: the AVX-512 build
skips ReLU zeros with vcompress) and checks that all agree with the native build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import crnn_process

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


LANES_CASES = [  # B, T, H, S, act, nonzero A0, float64, lanes: partial groups on every path
    (37, 11, 20, 2, 0, 0, 0, 1),
    (19, 6, 13, 3, 1, 0, 1, 1),
    (37, 11, 20, 1, 0, 1, 0, 1),
    (19, 6, 13, 2, 1, 1, 1, 1),
]


@pytest.mark.parametrize("case", LANES_CASES, ids=lambda c: "B{}-T{}-H{}-S{}-{}-{}-{}".format(
    *c[:4], "tanh" if c[4] else "relu", "A0" if c[5] else "noA0", "f64" if c[6] else "f32"))
def test_the_batch_in_lanes_forward_matches_the_per_example_forward(binaries, case):
    """forward_lanes (A_0 = 0 or per example, no A_T: the ART training step) saves what the per-example forward
    saves, for the shared backward: out, zs, xhat and rstd agree, on every instruction set."""
    tol = 1e-10 if case[6] else 2e-5
    outputs = {}
    for arch in ARCHS:
        got = run(binaries[arch], case)
        per_example, lanes = np.split(got, 2)
        assert np.isfinite(got).all() and np.abs(per_example).max() > 0
        np.testing.assert_allclose(lanes, per_example, rtol=tol, atol=tol * np.abs(per_example).max(), err_msg=arch)
        outputs[arch] = lanes
    for arch in ARCHS[1:]:
        np.testing.assert_allclose(outputs[arch], outputs["native"], rtol=tol, atol=tol * np.abs(outputs["native"]).max(),
                                   err_msg=arch)


# -- the dispatching build: one extension, a path per instruction set (crnn_plugins/fast_weights/cpu_isa.py)


def test_planned_paths_cover_the_x86_64_levels():
    from crnn_plugins.fast_weights import cpu_isa

    paths, defines = cpu_isa.planned_paths(None, "x86_64")
    assert [(p.name, p.march) for p in paths] == [("baseline", "x86-64"), ("avx2", "x86-64-v3"),
                                                  ("avx512", "x86-64-v4")]
    assert defines == ["-DCRNN_CPU_DISPATCH"]
    for p in paths:  # every listed source exists and is shipped with the other kernel files
        assert (SRC.parents[2] / "csrc" / p.source).is_file()
    native, defines = cpu_isa.planned_paths("native", "x86_64")
    assert [(p.name, p.march) for p in native] == [("native", "native")] and defines == []
    other, defines = cpu_isa.planned_paths(None, "aarch64")
    assert [(p.name, p.march) for p in other] == [("baseline", None)] and defines == []



def test_every_kernel_header_is_listed_for_the_build():
    """The JIT build hashes, and the staleness check compares, the headers in HEADERS: a header
    of csrc/ missing there would let a changed kernel load an old build."""
    from crnn_plugins.fast_weights import fused as ff

    csrc = SRC.parents[2] / "csrc"
    on_disk = {p.name for p in csrc.glob("*.h")}
    assert on_disk == set(ff.HEADERS)
    for name in ff.HEADERS:  # each kernel part says what it holds
        assert (csrc / name).read_text().startswith("//"), name

def _loaded_extension() -> Path:
    from crnn_plugins.fast_weights import fused as ff

    ok, reason = ff.load_status()
    if not ok:
        pytest.skip(f"the fused kernel is not loaded: {reason}")
    if len(ff.build_info()["cpu_paths"]) < 3:
        pytest.skip("a single-target build (CRNN_CPU_ARCH)")
    return Path(ff._get_state()["module"].__file__)


def test_wide_registers_only_in_their_own_paths():
    """The glue and the baseline path must run on any x86-64 CPU: no AVX/AVX-512 register
    may appear outside the avx2/avx512 paths' functions (e.g. a linker merging inline
    functions of different paths would put them there; csrc/fastweights_cpu_path.h)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not found")
    lib = _loaded_extension()
    listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", str(lib)], capture_output=True,
                             text=True, timeout=120, check=True).stdout
    function, wide = "", {}
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line
        elif "%ymm" in line or "%zmm" in line:  # registers only, not names such as "symmetric"
            wide.setdefault(function, set()).add("zmm" if "%zmm" in line else "ymm")
    assert any("cpu_avx512" in f for f in wide), "the avx512 path uses no 512-bit registers"
    assert any("cpu_avx2" in f for f in wide), "the avx2 path uses no 256-bit registers"
    # GCC's IPA clones of library functions ("[clone .isra.0]", ".constprop.0") are local symbols, one per
    # object file, that only their own object calls: no linker can hand them to another path.
    local = {line.split()[0].lstrip("0") for line in subprocess.run(
        ["nm", str(lib)], capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
        if len(line.split()) == 3 and line.split()[1] == "t"}
    wide = {f: regs for f, regs in wide.items() if not ("[clone ." in f and f.split()[0].lstrip("0") in local)}
    outside = [f for f, regs in wide.items() if "cpu_avx512" not in f and not ("cpu_avx2" in f and regs == {"ymm"})]
    assert outside == [], f"wide registers outside their paths: {outside[:5]}"


def _kernels_json(env_value: str) -> tuple[dict, str]:
    proc = crnn_process(dict(os.environ, CRNN_CPU_CAPABILITY=env_value), "kernels", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_capability_variable_forces_a_lower_path_and_ignores_others_with_a_warning():
    _loaded_extension()
    forced, err = _kernels_json("baseline")
    assert forced["build_info"]["cpu_isa"] == "baseline" and "cpu path baseline" in forced["reason"]
    assert err.strip() == ""
    best = forced["build_info"]["cpu_path_best"]
    bogus, err = _kernels_json("avx1024")
    assert bogus["build_info"]["cpu_isa"] == best
    assert "CRNN_CPU_CAPABILITY=avx1024 ignored: no CPU path 'avx1024' was compiled" in err
    assert "Traceback" not in err


def test_select_cpu_path_refuses_unknown_paths():
    from crnn_plugins.fast_weights import fused as ff

    _loaded_extension()
    with pytest.raises(ValueError, match="no CPU path 'sse9' was compiled"):
        ff.select_cpu_path("sse9")
    best = ff.build_info()["cpu_path_best"]
    assert ff.select_cpu_path("baseline") == "baseline" and ff.build_info()["cpu_isa"] == "baseline"
    assert "cpu path baseline" in ff.load_status()[1]
    assert ff.select_cpu_path(None) == best
