"""Environment switches and how crnn reports warnings and progress.

* :func:`env_flag` reads every boolean environment variable (``CRNN_DEBUG``,
  ``CRNN_NO_PLUGINS``, ``CRNN_NO_FUSED`` ...) the same way: unset, empty, ``0``,
  ``false``, ``no`` and ``off`` mean off; anything else means on.
* Library code warns with :class:`CrnnWarning` through :mod:`warnings` (so users can
  filter it) and logs progress on the ``crnn`` :mod:`logging` logger. The CLI shows both
  on stderr as ``crnn: ...`` lines (:func:`cli_reporting`); a program that imports crnn
  sees the warnings as Python warnings and the INFO logs only if it configures logging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

OFF = ("", "0", "false", "no", "off")

logger = logging.getLogger("crnn")


def install_command(extra: str) -> str:
    """The pip command that installs crnn's optional ``extra``: its requirements, as the installed
    crnn's metadata lists them (``pip install 'crnn[extra]'`` would look crnn up on the package
    index, which does not have a clone's install), e.g. ``pip install 'tensorboard>=2.10'``."""
    try:
        from importlib.metadata import requires

        marker = f'extra == "{extra}"'
        wanted = [r.split(";")[0].strip() for r in requires("crnn") or [] if marker in r.replace("'", '"')]
    except Exception:  # noqa: BLE001 - not installed, or unreadable metadata: name the extra
        wanted = []
    if not wanted:
        return f"pip install 'crnn[{extra}]'"
    return "pip install " + " ".join(f"'{w}'" for w in wanted) + f" (crnn's [{extra}] extra)"


class CrnnWarning(UserWarning):
    """Something works, but not as asked (e.g. the fused kernel fell back to the reference)."""


#: Packages whose frames :func:`warn` skips to reach the caller's line (besides the warning package's own).
LIBRARY_PACKAGES = ("crnn_core", "torch")


def warn(message: str) -> None:
    """Warn with :class:`CrnnWarning` at the first frame outside crnn_core, PyTorch and the package
    that warns (a plugin's): the user's call site.

    A fixed ``stacklevel`` points into library code whenever the call goes through another
    layer (``nn.Module.__call__``, ``ContextualRNN``); this counts the frames instead.
    """
    def package(frame: Any) -> str:
        return str(frame.f_globals.get("__name__", "")).split(".")[0]

    level, frame = 2, sys._getframe(1)  # stacklevel 2 is warn's caller, frame 1 up from here
    skip = {*LIBRARY_PACKAGES, package(frame)}
    while frame is not None and package(frame) in skip:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, CrnnWarning, stacklevel=level)


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``"unknown"``."""
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def env_flag(name: str) -> bool:
    """Whether the boolean environment variable ``name`` is on (see the module docstring)."""
    return os.environ.get(name, "").strip().lower() not in OFF


def _to_stderr(line: str) -> None:
    """One line on the current ``sys.stderr`` (looked up per call: click's test runner swaps it per invocation)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class _StderrHandler(logging.Handler):
    """Writes records to the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        _to_stderr(self.format(record))


@contextlib.contextmanager
def cli_reporting() -> Iterator[None]:
    """While the CLI runs: ``crnn`` INFO logs and crnn's warnings as plain ``crnn: ...`` lines on stderr."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_propagate = logger.level, logger.propagate
    old_show = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, CrnnWarning):
            _to_stderr(f"crnn: warning: {message}")
        else:
            old_show(message, category, filename, lineno, file, line)

    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old_show
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
