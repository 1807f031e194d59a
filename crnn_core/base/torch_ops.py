"""``torch.ops.crnn.*`` resolvable in any process that imported ``crnn_core``.

The custom ops (``torch.ops.crnn.fastweights_fwd`` / ``_bwd``) are registered when the
module that defines them is imported: the ``FastWeights`` layer's, through the
``crnn.layers`` entry points (``crnn_core.FastWeights``). A program saved with
``torch.export`` names the ops, and ``torch.export.load`` looks them up by those names
before any layer may have been imported. So ``import crnn_core`` calls :func:`install`,
which puts a placeholder namespace at ``torch.ops.crnn``: its first lookup of an op imports
the layers the installed distributions declare under ``crnn.layers`` (which registers the
ops), hands ``torch.ops.crnn`` back to PyTorch and returns the op.

``import crnn_core`` must not import PyTorch (the command line installs its signal handlers
first, ``crnn_core/commandline/entry.py``): if torch is not imported yet, :func:`install` waits for it
with a one-shot import hook that runs right after ``import torch`` finishes.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

#: Entry-point group of the layers ``crnn_core`` re-exports (``from crnn_core import FastWeights``);
#: importing them registers their ops.
LAYERS_GROUP = "crnn.layers"

#: The namespace of the ops under ``torch.ops``.
NAMESPACE = "crnn"


def install() -> None:
    """Put the placeholder at ``torch.ops.crnn`` now if torch is imported, else right after it is."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "ops"):
        _install_into(torch)
    elif not any(isinstance(finder, _AfterTorchImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTorchImport())


def uninstall() -> None:
    """Give ``torch.ops.crnn`` back to PyTorch (the module registering the ops calls this first)."""
    torch = sys.modules.get("torch")
    ops = getattr(torch, "ops", None)
    if ops is not None and getattr(ops.__dict__.get(NAMESPACE), "_crnn_placeholder", False):
        delattr(ops, NAMESPACE)


def _load_layers() -> None:
    """Import every layer declared under the ``crnn.layers`` entry points (registering their ops)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=LAYERS_GROUP):
        ep.load()


def _install_into(torch: Any) -> None:
    if NAMESPACE in torch.ops.__dict__:  # a namespace (or the placeholder) exists: the ops resolve through it
        return

    class Placeholder(torch._ops._OpNamespace):
        """``torch.ops.crnn`` until the ops are registered: a lookup registers them first."""

        _crnn_placeholder = True

        def __getattr__(self, op_name: str) -> Any:
            if op_name.startswith("__"):
                return super().__getattr__(op_name)
            uninstall()
            _load_layers()
            return getattr(torch.ops.crnn, op_name)

    setattr(torch.ops, NAMESPACE, Placeholder(NAMESPACE))


class _AfterTorchImport:
    """A one-shot ``sys.meta_path`` finder: lets torch import as usual, then runs :func:`install`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(fullname)  # by the finders after this one
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module

            def exec_then_install(module: ModuleType) -> None:
                exec_module(module)
                _install_into(module)

            spec.loader.exec_module = exec_then_install  # type: ignore[method-assign]
        return spec
