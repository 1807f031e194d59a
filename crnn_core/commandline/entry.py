"""The ``crnn`` console script and ``python -m crnn_core``: signal handling first, then the command line.

Importing the command line imports PyTorch, which takes a second or two; this module
installs the SIGINT/SIGTERM handlers before that (``crnn_core/__init__.py`` imports
nothing heavy), so an interruption at any moment ends with one line and 130 / 143.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def _import_cli() -> ModuleType:
    return importlib.import_module("crnn_core.commandline.main")


def main() -> None:
    if sys.argv[1:] == ["--version"]:  # answered before PyTorch and the plugins are imported
        from ..base.env import package_version

        print(f"crnn, version {package_version('crnn')}")
        return
    from ..base import signals

    signals.install()
    try:
        try:
            cli = _import_cli()
            signals.check()  # a signal whose exception a library's bare `except:` swallowed while importing
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM while PyTorch imports
            sys.exit(signals.report(exc))
        cli.main()
    finally:
        signals.finish()
