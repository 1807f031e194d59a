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
``CRNN_CPU_ARCH``        build the CPU kernel for this one ``-march`` (e.g. ``native``, or
                         ``none``) instead of the default: on x86-64, three paths (baseline,
                         AVX2, AVX-512) in one extension, chosen at load time from what the
                         CPU reports, so a wheel built here runs on any x86-64 CPU
                         (crnn_plugins/fast_weights/cpu_isa.py, docs/kernels.md)

Non-editable installs also copy ``csrc/`` into the package (``crnn_plugins/csrc``) so that
the JIT build can find the sources there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"
CPU_SOURCES = [f"{CSRC}/fastweights_op.cpp"]
CUDA_SOURCES = [f"{CSRC}/fastweights_cuda_glue.cpp", f"{CSRC}/fastweights_cuda.cu"]


def _cpu_isa_module():
    """crnn_plugins/fast_weights/cpu_isa.py, loaded by path (importing the package needs its dependencies)."""
    spec = importlib.util.spec_from_file_location("_crnn_cpu_isa", ROOT / "crnn_plugins" / "fast_weights" / "cpu_isa.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


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

    cpu_isa = _cpu_isa_module()
    paths, glue_defines = cpu_isa.planned_paths(os.environ.get("CRNN_CPU_ARCH"))
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-psabi"] + glue_defines  # the glue: no -march, runs anywhere
    with_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and not _truthy("CRNN_NO_CUDA")
    )
    name = "crnn_plugins._fastweights_C"
    # Rebuild when any kernel file changes (setuptools compares the library with these).
    depends = sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC).iterdir() if p.suffix in (".h", ".cpp"))
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            name,
            CPU_SOURCES + CUDA_SOURCES,
            extra_compile_args={"cxx": cxx + ["-DCRNN_WITH_CUDA"], "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
            depends=depends,
        )
        _say(f"building the fused kernel for CPU and CUDA (CUDA_HOME={cpp_extension.CUDA_HOME})")
    else:
        ext = cpp_extension.CppExtension(name, CPU_SOURCES, extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"], depends=depends)
        _say("building the fused kernel for CPU" + ("" if torch.version.cuda is None else " (no nvcc/CUDA_HOME)"))
    _say("CPU kernel paths: " + ", ".join(f"{p.name} (-march={p.march})" for p in paths))

    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class OptionalBuildExtension(base):
        """A failed compile leaves the package installable (the JIT build takes over) unless CRNN_REQUIRE_EXT."""

        def build_extension(self, extension) -> None:
            try:
                self._build_with_cpu_paths(extension)
            except Exception as exc:  # noqa: BLE001 - compiler missing, headers missing, ...
                if _truthy("CRNN_REQUIRE_EXT"):
                    raise
                _say(f"WARNING: the fused kernel did not compile ({type(exc).__name__}: {exc}); "
                     "installing without it: it will be compiled on first use, or the reference runs")

        def _build_with_cpu_paths(self, extension) -> None:
            """Build ``extension`` with the per-ISA kernel objects, each compiled with its own -march.

            setuptools compiles all of an extension's sources with one set of flags, so the
            per-ISA files are compiled by cpu_isa.compile_paths (in parallel with the glue)
            and appended to the glue's objects, which the link takes in that order.
            """
            glue_compile = self.compiler.compile
            out_dir = Path(self.build_temp) / "cpu_paths"

            def compile_with_paths(sources, *args, **kwargs):
                with ThreadPoolExecutor(max_workers=1) as pool:
                    pending = pool.submit(cpu_isa.compile_paths, paths, ROOT / CSRC, out_dir,
                                          cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI))
                    objects = glue_compile(sources, *args, **kwargs)
                    return list(objects) + [str(obj) for obj in pending.result()]

            self.compiler.compile = compile_with_paths
            try:
                super().build_extension(extension)
            finally:
                self.compiler.compile = glue_compile

    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = extension_modules()
cmdclass["build_py"] = build_py_with_csrc
setup(ext_modules=ext_modules, cmdclass=cmdclass)
