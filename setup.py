"""Build script: the package metadata lives in pyproject.toml; this file adds the fused kernel.

When PyTorch can be imported at build time (``pip install --no-build-isolation -e .``),
the fast-weights extension ``crnn_plugins._fastweights_C`` is built from ``csrc/`` with
``torch.utils.cpp_extension``: a ``CUDAExtension`` when this PyTorch has CUDA and nvcc
is found, else a ``CppExtension``. When PyTorch is not importable, or the compiler
fails, the package installs without it and the kernel is compiled on first use into a
cache instead (docs/kernels.md). Environment:

``CRNN_NO_BUILD_EXT=1``  do not build the extension here (use the JIT build)
``CRNN_REQUIRE_EXT=1``   fail the install if the extension does not compile
``CRNN_NO_CUDA=1``       build the CPU kernel only, even with a CUDA PyTorch
``CRNN_CPU_ARCH``        ``-march`` value (default ``native``: fastest on this machine, not
                         portable; use e.g. ``x86-64-v3`` or ``none`` for wheels built elsewhere)

Non-editable installs also copy ``csrc/`` into the package (``crnn_plugins/csrc``) so that
the JIT build can find the sources there.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"
CPU_SOURCES = [f"{CSRC}/fastweights_op.cpp"]
CUDA_SOURCES = [f"{CSRC}/fastweights_cuda_glue.cpp", f"{CSRC}/fastweights_cuda.cu"]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _say(message: str) -> None:
    print(f"crnn setup: {message}", file=sys.stderr)


class build_py_with_csrc(build_py):
    """Also ship the kernel sources inside the package, for JIT builds of installed copies."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install finds the repository's csrc/
        target = Path(self.build_lib) / "crnn_plugins" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        for path in (ROOT / CSRC).iterdir():
            if path.suffix in (".h", ".cpp", ".cu"):
                shutil.copy2(path, target / path.name)


def extension_modules():
    """(ext_modules, cmdclass) for the fused kernel, or ([], {}) when it cannot be built here."""
    if _truthy("CRNN_NO_BUILD_EXT"):
        _say("CRNN_NO_BUILD_EXT is set: not building the fused kernel (it is compiled on first use)")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _say("PyTorch is not importable at build time: the fused kernel will be compiled on first use "
             "(install with --no-build-isolation to build it now)")
        return [], {}

    arch = os.environ.get("CRNN_CPU_ARCH", "native").strip()
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-psabi"] + ([f"-march={arch}"] if arch and arch.lower() != "none" else [])
    with_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and not _truthy("CRNN_NO_CUDA")
    )
    name = "crnn_plugins._fastweights_C"
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            name,
            CPU_SOURCES + CUDA_SOURCES,
            extra_compile_args={"cxx": cxx + ["-DCRNN_WITH_CUDA"], "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
        _say(f"building the fused kernel for CPU and CUDA (CUDA_HOME={cpp_extension.CUDA_HOME})")
    else:
        ext = cpp_extension.CppExtension(name, CPU_SOURCES, extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"])
        _say("building the fused kernel for CPU" + ("" if torch.version.cuda is None else " (no nvcc/CUDA_HOME)"))

    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class OptionalBuildExtension(base):
        """A failed compile leaves the package installable (the JIT build takes over) unless CRNN_REQUIRE_EXT."""

        def build_extension(self, extension) -> None:
            try:
                super().build_extension(extension)
            except Exception as exc:  # noqa: BLE001 - compiler missing, headers missing, ...
                if _truthy("CRNN_REQUIRE_EXT"):
                    raise
                _say(f"WARNING: the fused kernel did not compile ({type(exc).__name__}: {exc}); "
                     "installing without it: it will be compiled on first use, or the reference runs")

    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = extension_modules()
cmdclass["build_py"] = build_py_with_csrc
setup(ext_modules=ext_modules, cmdclass=cmdclass)
