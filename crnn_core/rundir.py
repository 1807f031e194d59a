"""A run on disk: its directory layout, atomic writes and checkpoint loading.

    <run>/config.json      every resolved option
    <run>/command.txt      the command line that started it
    <run>/plugins.json     package and version behind each component
    <run>/metrics.jsonl    one JSON object per evaluation
    <run>/checkpoints/last.pt, best.pt   (atomic; load with weights_only=True)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError

CHECKPOINT_FORMAT = "crnn-checkpoint-v1"
_UMASK = os.umask(0)
os.umask(_UMASK)


def default_run_dir(root: Path, cell: str, init: str, task: str, seed: int) -> Path:
    """``runs/<time>_<cell>-<init>-<task>_s<seed>``; a suffix keeps it unique."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{cell}-{init}-{task}")
    path = root / f"{stamp}_{safe}_s{seed}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}_{safe}_s{seed}-{n}"
    return path


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def prepare_new_run_dir(path: Path, force: bool) -> None:
    """Create ``path`` for a new run; refuse one that holds another run unless ``force``."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is not a directory")
    if is_run_dir(path) and not force:
        raise ConfigError(f"{path} already holds a run; use --resume {path} to continue it or --force to overwrite")
    if force and is_run_dir(path):
        for name in ("metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
            (path / name).unlink(missing_ok=True)
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    """Write via ``write(fileobj)`` to a temp file in the same directory, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from None


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save a checkpoint (a dict of tensors, numbers, strings, lists, dicts)."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    try:
        atomic_write_bytes(path, lambda f: torch.save(payload, f))
    except OSError as exc:  # disk full, permissions: the previous checkpoint is still there
        raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint as untrusted input (``weights_only=True``); one-line errors."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or hostile files raise anything
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a crnn checkpoint ({reason[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file")
    return payload


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (empty if the file does not exist)."""
    if not path.exists():
        return []
    return _parse_metrics(path.read_text(), path)


def _parse_metrics(text: str, path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise CheckpointError(f"{path}:{number} is not valid JSON") from None
    return records


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop records after ``last_epoch`` (written after the checkpoint a run resumes from).

    A last line without its newline (the process was killed while appending it) is dropped too.
    """
    text = path.read_text() if path.exists() else ""
    complete_lines = text[: text.rfind("\n") + 1]
    kept = [r for r in _parse_metrics(complete_lines, path) if r.get("epoch", 0) <= last_epoch]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
