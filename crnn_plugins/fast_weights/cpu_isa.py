"""The instruction sets the CPU kernel is compiled for, and how its per-ISA objects are built.

One extension serves every x86-64 CPU: the kernel (``csrc/fastweights_cpu_kernel.h``) is
compiled three times, by ``csrc/fastweights_cpu_{baseline,avx2,avx512}.cpp``, each with
its own ``-march`` (:data:`X86_PATHS`), and the glue picks one at load time from what the
CPU reports (``csrc/fastweights_cpu_dispatch.h``). ``CRNN_CPU_ARCH=ARCH`` (an ``-march``
value, or ``none``) builds one path for that target instead, named ``native`` for
``CRNN_CPU_ARCH=native``. Other machines build the baseline file without ``-march``.

This module imports nothing from crnn or PyTorch: ``setup.py`` loads it by path, and the
JIT build (``fastweights_fused.py``) imports it. Objects are compiled in parallel, each
by one compiler process, and linked after the glue's objects, lowest instruction set
first (see ``csrc/fastweights_cpu_path.h`` for why the order matters).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CAPABILITY_ENV",
    "KERNEL_HEADERS",
    "PATH_HEADERS",
    "PATH_SOURCES",
    "X86_PATHS",
    "CpuPathBuild",
    "compile_paths",
    "planned_paths",
]

CAPABILITY_ENV = "CRNN_CPU_CAPABILITY"
"""Environment variable that forces a lower compiled path (like ATen's ATEN_CPU_CAPABILITY)."""

KERNEL_HEADERS = ("fastweights_cpu_kernel.h", "fastweights_cpu_simd.h", "fastweights_cpu_call.h",
                  "fastweights_cpu_example.h", "fastweights_cpu_lanes.h")
"""The CPU kernel's headers: fastweights_cpu_kernel.h and the four parts it includes."""

PATH_HEADERS = ("fastweights_cpu_dispatch.h", "fastweights_cpu_path.h", *KERNEL_HEADERS)
"""Headers every per-ISA file includes besides fastweights_params.h: the dispatch table, the path body and the kernel."""


@dataclass(frozen=True)
class CpuPathBuild:
    """One compiled path of the CPU kernel: its name, its source file in csrc/ and its ``-march``."""

    name: str
    source: str
    march: str | None


X86_PATHS = (
    CpuPathBuild("baseline", "fastweights_cpu_baseline.cpp", "x86-64"),  # SSE2: every x86-64 CPU
    CpuPathBuild("avx2", "fastweights_cpu_avx2.cpp", "x86-64-v3"),  # AVX2, FMA (Haswell, Zen 1 and later)
    CpuPathBuild("avx512", "fastweights_cpu_avx512.cpp", "x86-64-v4"),  # AVX-512 F/BW/CD/DQ/VL (Skylake-X, Zen 4)
)
"""The paths of a dispatching build, lowest first (the link order)."""

PATH_SOURCES = tuple(p.source for p in X86_PATHS)
"""Every per-ISA source file in csrc/."""

_log = logging.getLogger("crnn")  # the crnn logger (crnn_core.base.env), by name: nothing from crnn is imported here

_FLAGS = ["-O3", "-g0", "-fPIC", "-std=c++17", "-Wno-psabi", "-fvisibility=hidden"]


def planned_paths(arch: str | None = None, machine: str | None = None) -> tuple[list[CpuPathBuild], list[str]]:
    """The paths to compile and the defines the glue needs, for ``CRNN_CPU_ARCH`` ``arch`` on ``machine``.

    ``arch`` None (the default: the variable unset) builds :data:`X86_PATHS` on x86-64 and
    the glue gets ``-DCRNN_CPU_DISPATCH``; any other value builds one path with that
    ``-march`` (``none``: no ``-march``).
    """
    machine = (machine or platform.machine()).lower()
    if arch is None or not arch.strip():
        if machine in ("x86_64", "amd64"):
            return list(X86_PATHS), ["-DCRNN_CPU_DISPATCH"]
        return [CpuPathBuild("baseline", X86_PATHS[0].source, None)], []
    arch = arch.strip()
    march = None if arch.lower() == "none" else arch
    return [CpuPathBuild("native" if arch == "native" else (march or "default"), X86_PATHS[0].source, march)], []


def _object_flags(build: CpuPathBuild, cxx11_abi: bool | None) -> list[str]:
    flags = list(_FLAGS)
    if build.march:
        flags.append(f"-march={build.march}")
    if cxx11_abi is not None:  # as the glue is compiled (PyTorch's ABI), so shared library code matches
        flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(cxx11_abi)}")
    default = next((p.name for p in X86_PATHS if p.source == build.source), None)
    if build.name != default:
        flags.append(f'-DCRNN_CPU_PATH_NAME="{build.name}"')
    return flags


def compile_paths(builds: list[CpuPathBuild], src: Path, out_dir: Path, *, cxx: str | None = None,
                  cxx11_abi: bool | None = None, verbose: bool = False) -> list[Path]:
    """Compile ``builds`` from ``src`` into ``out_dir`` (in parallel) and return the objects, in order.

    An object is reused when it is newer than its inputs and was compiled with the same
    command. ``cxx`` defaults to ``$CXX`` or ``c++`` (what PyTorch's extension builds use).
    ``verbose`` logs the commands and the compiler output (``crnn`` logger, INFO). Raises
    RuntimeError with the compiler's first error lines if a compile fails.
    """
    cxx = cxx or os.environ.get("CXX", "c++")
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = [src / h for h in (*PATH_HEADERS, "fastweights_cpu_kernel.h", "fastweights_params.h")]
    newest_header = max((p.stat().st_mtime for p in inputs if p.exists()), default=0.0)
    objects, running = [], []
    for build in builds:
        obj = out_dir / f"fastweights_cpu_{build.name}.o"
        cmd = [cxx, *_object_flags(build, cxx11_abi), "-c", str(src / build.source), "-o", str(obj)]
        stamp = obj.with_suffix(".cmd")
        objects.append(obj)
        fresh = (obj.exists() and stamp.exists() and stamp.read_text() == " ".join(cmd)
                 and obj.stat().st_mtime >= max(newest_header, (src / build.source).stat().st_mtime))
        if fresh:
            continue
        if verbose:
            _log.info(" ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        running.append((build, proc, stamp, cmd))
    failures = []
    for build, proc, stamp, cmd in running:
        output, _ = proc.communicate()
        if proc.returncode != 0:
            errors = [ln for ln in output.splitlines() if "error" in ln.lower()] or output.splitlines()[-3:]
            failures.append(f"the {build.name} path ({build.source}, -march={build.march}) failed to compile: "
                            + " | ".join(errors[:3]))
        else:
            stamp.write_text(" ".join(cmd))
            if verbose and output:
                _log.info(output)
    if failures:
        raise RuntimeError("; ".join(failures))
    return objects
