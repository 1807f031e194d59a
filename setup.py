"""Build script: the package metadata lives in pyproject.toml; this file adds the fused kernel.

The C++ (and, where nvcc and a CUDA build of PyTorch exist, CUDA) fast-weights
extension is built with torch.utils.cpp_extension when PyTorch can be imported at
build time, i.e. with ``pip install --no-build-isolation``. Otherwise the package
installs without it and the kernel is compiled on first use (see docs/kernels.md).
"""

from setuptools import setup

ext_modules = []
cmdclass = {}
try:
    from crnn_build import extension_modules  # noqa: E402  (local helper, see crnn_build.py)

    ext_modules, cmdclass = extension_modules()
except ImportError:
    pass

setup(ext_modules=ext_modules, cmdclass=cmdclass)
