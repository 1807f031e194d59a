"""A run on disk: its directory layout, atomic writes and checkpoint loading.

    <run>/config.json      every resolved option
    <run>/command.txt      the command line that started it
    <run>/plugins.json     package and version behind each component
    <run>/env.json         crnn, PyTorch and Python versions, the cell's backend (kernel path)
    <run>/metrics.jsonl    one JSON object per evaluation
    <run>/checkpoints/last.pt, best.pt   (atomic; load with weights_only=True)

One process writes a run directory at a time: ``lock_run_dir`` takes an OS file lock
(``flock`` on the directory itself, so nothing is created) that lives as long as the
process or the command, and refuses a second writer naming the holder's pid. While
the lock is held, every write first checks that the directory is still the one that
was locked (not deleted or replaced) and that metrics.jsonl is still the file this run
appended to. Failures of the disk (full, read-only, gone) are one-line
``CheckpointError``s (exit 2); the previous checkpoint stays as it was.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..base.env import logger
from ..base.errors import CheckpointError, ConfigError, CrnnError, first_line

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


def never_checkpointed(path: Path) -> bool:
    """A run directory whose run stopped before its first checkpoint (nothing to resume, nothing to lose)."""
    return is_run_dir(path) and not (path / "checkpoints" / "last.pt").exists() and not read_metrics_safe(path)


def prepare_new_run_dir(path: Path, force: bool) -> None:
    """Create ``path`` for a new run and lock it; refuse one that holds another run unless ``force``.

    A run that was stopped before its first checkpoint is started again without ``--force``
    (there is nothing in it to keep), so re-running the same command is the way to restart it.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is not a directory")
    def refuse_a_run_to_keep() -> None:
        if is_run_dir(path) and not force and not never_checkpointed(path):
            raise ConfigError(f"{path} already holds a run; use --resume {path} to continue it or --force to overwrite")

    refuse_a_run_to_keep()
    from ..base import signals

    signals.check()  # a start-up signal that something swallowed: stop before the first byte
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create run directory {path}: {_reason(exc)}") from None
    lock = lock_run_dir(path)  # before anything in it is removed or written: a second writer is refused here
    try:
        refuse_a_run_to_keep()  # again, under the lock: a writer may have checkpointed and ended meanwhile
    except ConfigError:
        lock.release()
        raise
    if is_run_dir(path):
        for name in ("metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
            _guard(lambda: (path / name).unlink(missing_ok=True), path / name)
    _guard(lambda: (path / "checkpoints").mkdir(parents=True, exist_ok=True), path / "checkpoints")


def read_metrics_safe(path: Path) -> list[dict[str, Any]]:
    """The complete records of ``path``/metrics.jsonl, ignoring a file that cannot be read or parsed."""
    try:
        return read_metrics(path / "metrics.jsonl")
    except (CrnnError, OSError):
        return [{}]  # something is there: treat the run as started


# -- one writer per run directory ---------------------------------------------------------------------
class RunDirBusy(CheckpointError):
    """Another process holds the run directory's lock (exit status 2)."""


class RunLock:
    """The ``flock`` on a run directory, and what this run knows about the files it writes there."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        stat = os.fstat(fd)
        self.identity = (stat.st_dev, stat.st_ino)
        self.metrics: tuple[int, int, int] | None = None  # (inode, size, records) after this run's last write
        self.pending: list[Callable[[], Any]] = []  # writes that wait until a resume is known to go ahead

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1
        if _HELD.get(_key(self.path)) is self:
            del _HELD[_key(self.path)]

    def check(self) -> None:
        """Refuse to write into a run directory that was deleted or replaced since it was locked."""
        try:
            stat = os.stat(self.path)
        except OSError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != self.identity:
            raise CheckpointError(
                f"run directory {self.path} was deleted or replaced while this run was writing to it; "
                "nothing more was written (the run stopped)"
            )

    def note_metrics(self, path: Path) -> None:
        stat = os.stat(path)
        self.metrics = (stat.st_ino, stat.st_size, 0 if self.metrics is None else self.metrics[2])


_HELD: dict[str, RunLock] = {}


def _key(path: Path) -> str:
    return os.path.abspath(path)


def lock_run_dir(path: Path) -> RunLock:
    """Take the run directory's writer lock for this process (released when it exits or the command ends).

    A second process (a concurrent ``--resume``, or two ``--force`` runs into one ``--out``)
    gets ``RunDirBusy`` naming the holder's pid. Within one process (tests, notebooks) a
    lock left by an earlier command on the same directory is released and taken again.
    """
    from ..base import signals

    signals.check()  # a signal received (and swallowed) during start-up stops the run before it writes
    old = _HELD.pop(_key(path), None)
    if old is not None:
        old.release()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise CheckpointError(f"cannot open run directory {path}: {_reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _lock_holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CheckpointError(f"cannot lock run directory {path}: {_reason(exc)}") from None
        who = f"pid {holder}" if holder else "another process"
        raise RunDirBusy(
            f"{path} is in use by another crnn process ({who}); a run directory has one writer at a time: "
            "wait for it to finish or stop it, then try again"
        ) from None
    lock = RunLock(path, fd)
    _HELD[_key(path)] = lock
    signals.note_run_dir(path, restart_command)
    return lock


def release_locks() -> None:
    """Release every run-directory lock this process holds (the command line does when a command ends;
    the OS does it when the process exits)."""
    for lock in list(_HELD.values()):
        lock.release()


def wait_until_unlocked(path: Path, timeout: float) -> bool:
    """Wait until no process holds ``path``'s writer lock (at most ``timeout`` s); True once it is free.

    A grid run retried after its worker died starts while the dying ``crnn run`` may
    still be saving ``last.pt`` (it got SIGTERM); the retry waits for it instead of
    failing as a second writer. A directory that does not exist is free.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
        finally:
            os.close(fd)  # releases a lock taken here at once
        time.sleep(0.2)


def held_lock(path: Path) -> RunLock | None:
    """The lock this process holds on the run directory that contains ``path`` (file or directory)."""
    for candidate in (path, path.parent, path.parent.parent):
        lock = _HELD.get(_key(candidate))
        if lock is not None and lock.fd >= 0:
            return lock
    return None


def _lock_holder(fd: int) -> int | None:
    """The pid holding the flock on ``fd``'s file, from /proc/locks (Linux); None if unknown."""
    stat = os.fstat(fd)
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            if int(inode) == stat.st_ino and (int(major, 16), int(minor, 16)) == (os.major(stat.st_dev), os.minor(stat.st_dev)):
                return int(parts[4])
        except ValueError:
            continue
    return None


def _reason(exc: BaseException) -> str:
    """A short reason for a failed write: the OS's words, or torch's for a failed torch.save."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    cause = exc.__cause__ or exc.__context__  # torch.save wraps the OSError of the file write in a RuntimeError
    if isinstance(cause, OSError):
        return _reason(cause)
    text = first_line(exc, limit=10_000)
    if "inline_container" in text or "PytorchStreamWriter" in text or "file write failed" in text:
        return f"the file could not be written (disk full or file too large?): {text[:160]}"
    return text[:200]


def _guard(action: Callable[[], Any], path: Path) -> Any:
    """Run a filesystem ``action`` on ``path``; an OSError becomes a one-line CheckpointError."""
    lock = held_lock(path)
    if lock is not None:
        lock.check()
    try:
        return action()
    except OSError as exc:
        if lock is not None:
            lock.check()  # the run directory vanished: say that, not "No such file"
        raise CheckpointError(f"cannot write {path}: {_reason(exc)}") from None


def atomic_write_bytes(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    """Write via ``write(fileobj)`` to a temp file in the same directory, fsync, then rename."""
    lock = held_lock(path)
    if lock is not None:
        lock.check()  # never recreate a run directory that was deleted under a running run
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
    _guard(lambda: atomic_write_bytes(path, lambda f: f.write(text.encode())), path)


def write_text(path: Path, text: str, append: bool = False) -> None:
    """Write (or append) a small text file such as command.txt; disk errors are one-line errors."""

    def write() -> None:
        with open(path, "a" if append else "w") as f:
            f.write(text)

    _guard(write, path)


#: The most digits of an integer crnn reads from a JSON file (every count crnn takes fits in 64 bits:
#: 19 digits); Python's own limit is 4300, refused with an error that names no file.
MAX_INT_DIGITS = 40


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict (``object_pairs_hook``), refusing a key given twice
    (Python's json keeps the last silently; TOML refuses it too)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key '{key[:60]}'")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    """A JSON integer, refused (``ValueError``) beyond :data:`MAX_INT_DIGITS` digits."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def parse_json(text: str) -> Any:
    """``json.loads`` for untrusted files: duplicate keys and integers of more than
    :data:`MAX_INT_DIGITS` digits raise ``ValueError``; deep nesting raises ``RecursionError``."""
    return json.loads(text, object_pairs_hook=no_duplicate_keys, parse_int=_bounded_int)


def dumps_json(record: Any, **kw: Any) -> str:
    """Standard JSON text of ``record`` (:func:`standard_json`: a NaN or infinity is ``null``,
    listed under ``"nonfinite"``): what metrics.jsonl and every command's stdout summary write."""
    return json.dumps(standard_json(record) if isinstance(record, dict) else record, allow_nan=False, **kw)


def read_json(path: Path) -> Any:
    try:
        return parse_json(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from None
    except RecursionError:  # e.g. 100,000 nested brackets
        raise CheckpointError(f"{path} is unreadable: nested too deeply") from None


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save a checkpoint (a dict of tensors, numbers, strings, lists, dicts)."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    try:
        atomic_write_bytes(path, lambda f: torch.save(payload, f))
    except CheckpointError:
        raise
    except (OSError, RuntimeError) as exc:  # disk full, read-only, gone: the previous checkpoint is still there
        interrupt = _interrupted_inside(exc)
        if interrupt is not None:  # Ctrl-C twice while torch.save ran: an interruption, not a disk error
            raise interrupt from None
        lock = held_lock(path)
        if lock is not None:
            lock.check()
        raise CheckpointError(f"cannot write checkpoint {path}: {_reason(exc)}") from None


def _interrupted_inside(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt raised inside torch.save's writer that became ``exc``, if that is what happened."""
    from ..base import signals

    for _ in range(10):
        if exc is None:
            return None
        if isinstance(exc, KeyboardInterrupt):
            return exc
        if "KeyboardInterrupt" in str(exc):
            return signals.pending(KeyboardInterrupt())
        exc = exc.__cause__ or exc.__context__
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint as untrusted input (``weights_only=True``); one-line errors."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing" + _restart_hint(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or hostile files raise anything
        text = str(exc).strip()
        if text.startswith("Weights only load failed") and _asks_for_code(text):  # never loaded
            raise CheckpointError(f"checkpoint {path} was refused: loading it could run code, since it holds "
                                  f"Python objects beyond tensors and plain data ({_pickle_detail(text)}); "
                                  f"crnn never loads such files (tampered, or not a crnn checkpoint)") from None
        reason = first_line(exc, limit=len(text))
        if text.startswith("Weights only load failed"):  # bytes that are no pickle: say what broke, not torch's advice
            reason = _pickle_detail(text)
        raise CheckpointError(f"checkpoint {path} is corrupt or not a crnn checkpoint ({reason[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file")
    return payload


#: Pickle opcodes that import or call something (GLOBAL, INST, OBJ, BUILD, REDUCE, NEWOBJ, NEWOBJ_EX,
#: STACK_GLOBAL): torch's restricted unpickler refuses them by number ("Unsupported operand 99").
CODE_OPCODES = frozenset({ord(c) for c in "ciobR"} | {0x81, 0x92, 0x93})


def _asks_for_code(text: str) -> bool:
    """Whether torch's weights_only refusal is of an import or a call (a pickle that could run code),
    rather than of bytes that are no pickle at all."""
    if "GLOBAL" in text or "Unsupported global" in text:
        return True
    found = re.search(r"Unsupported operand (\d+)", text)
    return found is not None and int(found.group(1)) in CODE_OPCODES


def _pickle_detail(text: str) -> str:
    """What torch's restricted unpickler refused (``GLOBAL posix.system ...``), from its multi-line message."""
    lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    found = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (found or lines or ["unsupported pickle content"])[0].rstrip(".")[:160]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (empty if the file does not exist)."""
    if not path.exists():
        return []
    return _parse_metrics(path.read_text(), path)


def _complete_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``path``'s complete lines: a last line without its newline (the process was
    killed while appending it) is left out."""
    text = path.read_text() if path.exists() else ""
    return _parse_metrics(text[: text.rfind("\n") + 1], path)


def _parse_metrics(text: str, path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = parse_json(line)
            except (ValueError, RecursionError):
                raise CheckpointError(f"{path}:{number} is not valid JSON") from None
            problem = _metrics_record_problem(record)
            if problem:
                raise CheckpointError(f"{path}:{number} is not a metrics record: {problem}")
            records.append(record)
    return records


def _metrics_record_problem(record: Any) -> str | None:
    """What is wrong with one metrics.jsonl record, or None: an object whose ``epoch`` (and
    ``step``, where present) are ints >= 0 and whose ``loss``, ``train_loss`` and ``metrics``
    values are numbers or null (null: not finite, see ``standard_json``)."""
    if not isinstance(record, dict):
        return f"expected an object, got {type(record).__name__}"
    for key in ("epoch", "step"):
        value = record.get(key)
        if key == "step" and "step" not in record:
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return f"'{key}' must be an integer >= 0, got {value!r:.40}"
    metrics = record.get("metrics", {})
    if not isinstance(metrics, dict):
        return f"'metrics' must be an object, got {type(metrics).__name__}"
    for key, value in [("loss", record.get("loss")), ("train_loss", record.get("train_loss")),
                       *((f"metrics.{k}", v) for k, v in metrics.items())]:
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return f"'{key}' must be a number or null, got {value!r:.40}"
    return None


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop records after ``last_epoch`` (written after the checkpoint a run resumes from).

    A last line without its newline (the process was killed while appending it) is dropped too.
    """
    kept = [r for r in _complete_records(path) if r.get("epoch", 0) <= last_epoch]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    _guard(lambda: atomic_write_bytes(path, lambda f: f.write(text.encode())), path)
    lock = held_lock(path)
    if lock is not None:
        lock.note_metrics(path)
        lock.metrics = (*lock.metrics[:2], len(kept))  # type: ignore[index]


#: How many non-finite fields ``standard_json`` names in ``"nonfinite"``.
NONFINITE_NAMES = 20


def standard_json(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every NaN/inf float replaced by None and, if any was, ``"nonfinite"``:
    the dotted names of those fields. Python's json would write NaN/Infinity, which is not
    JSON and which other tools (jq, JavaScript, most JSON libraries) refuse."""
    flagged: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            flagged.append(where)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    cleaned = clean(record, "")
    if flagged:  # the first NONFINITE_NAMES names (a NaN model's samples would list every value)
        more = [f"... ({len(flagged)} in all)"] if len(flagged) > NONFINITE_NAMES else []
        cleaned["nonfinite"] = flagged[:NONFINITE_NAMES] + more
    return cleaned


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one record; refuse to recreate a metrics.jsonl that was deleted or replaced during the run."""
    lock = held_lock(path)
    if lock is not None:
        lock.check()
        _check_metrics_unchanged(lock, path)

    def append() -> None:
        with open(path, "a") as f:
            f.write(dumps_json(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    _guard(append, path)
    if lock is not None:
        records = 1 + (lock.metrics[2] if lock.metrics is not None else 0)
        lock.note_metrics(path)
        lock.metrics = (*lock.metrics[:2], records)  # type: ignore[index]


def _check_metrics_unchanged(lock: RunLock, path: Path) -> None:
    if lock.metrics is None:
        return
    inode, size, records = lock.metrics
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        stat = None
    if stat is None or stat.st_ino != inode or stat.st_size < size:
        what = "deleted" if stat is None else "replaced or truncated"
        raise CheckpointError(
            f"{path} was {what} while this run was writing it (it had {records} records); the run stopped rather "
            "than start it again with epochs missing: put the file back, then crnn run --resume "
            f"{lock.path}"
        )


# -- resuming ---------------------------------------------------------------------------------------
def defer_until_resumed(run_dir: Path, write: Callable[[], Any]) -> None:
    """Lock ``run_dir`` and keep ``write`` (e.g. config.json, command.txt) until the resume is known to go ahead.

    ``resume_checked`` runs it once the checkpoint has been validated and there is training
    left to do, so a refused or empty ``--resume`` changes nothing in the run directory.
    """
    lock = held_lock(run_dir)
    if lock is None or _key(lock.path) != _key(run_dir):
        lock = lock_run_dir(run_dir)
    lock.pending.append(write)


def resume_checked(run_dir: Path, checkpoint: dict[str, Any], epochs: int, is_main: bool = True) -> bool:
    """Called by the trainer once ``checkpoint`` (last.pt) was accepted for ``--resume``, before it writes.

    First, on the writing process, it repairs what a kill left: temp files of cut-short
    writes are removed, and best.pt is brought up to date if the kill came between the
    writes of last.pt and best.pt. Then, with nothing left to train (a finished run, or
    ``--epochs`` not above the epochs done) it says so on stderr, writes nothing else and
    returns False (the run's summary follows, exit 0). Otherwise it checks that
    metrics.jsonl still holds the run's epochs and performs the writes
    ``defer_until_resumed`` kept back; returns True.
    """
    done, batch = int(checkpoint["epoch"]), int(checkpoint["batch_in_epoch"])
    lock = held_lock(run_dir) if is_main else None
    if is_main:  # repairs of what a kill left, needed even when there is nothing left to train
        remove_orphan_temp_files(run_dir)
        repair_best(run_dir, checkpoint)
    if done >= epochs and batch == 0:
        if lock is not None:
            lock.pending.clear()
        if is_main:
            logger.warning(f"crnn: nothing to do: {run_dir} has already trained {done} of --epochs {epochs}; nothing was "
                           f"changed; to train further: crnn run --resume {run_dir} --epochs {max(done, epochs) + 1}")
        return False
    if not is_main:
        return True
    _check_metrics_history(run_dir, done)
    if lock is not None:
        pending, lock.pending = lock.pending, []
        for write in pending:
            write()
    return True


def restart_unbacked(run_dir: Path, is_main: bool = True) -> bool:
    """For ``--resume`` of a run that has metrics.jsonl records but no ``last.pt`` (killed between
    its first epoch's record and its first checkpoint, or its checkpoints/ removed): no checkpoint
    backs those records, so they are dropped and the run starts again from its first step.
    Says so on stderr, repairs what a kill left and performs the deferred writes; returns True.
    A run without a checkpoint or records (False here) is refused by ``load_checkpoint``,
    naming the command that restarts it; any other run returns False.
    """
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() or never_checkpointed(run_dir):
        return False
    if is_main:
        records = len(read_metrics_safe(run_dir))
        logger.warning(f"crnn: {run_dir} has no checkpoints/last.pt, so no checkpoint backs its {records} metrics "
                       f"record(s): they are dropped and the run starts again from its first step")
        remove_orphan_temp_files(run_dir)
        _guard(lambda: (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True), run_dir / "checkpoints")
        _guard(lambda: (run_dir / "checkpoints" / "best.pt").unlink(missing_ok=True), run_dir / "checkpoints" / "best.pt")
        truncate_metrics(run_dir / "metrics.jsonl", 0)
        lock = held_lock(run_dir)
        if lock is not None:
            pending, lock.pending = lock.pending, []
            for write in pending:
                write()
    return True


def remove_orphan_temp_files(run_dir: Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files of atomic writes cut short by a kill (only while this process holds the lock)."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            _guard(lambda: tmp.unlink(missing_ok=True), tmp)
            removed.append(tmp)
    return removed


def _same_best(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return a == b or (math.isnan(a) and math.isnan(b))


def repair_best(run_dir: Path, last: dict[str, Any]) -> bool:
    """Make best.pt what the uninterrupted run wrote, if a kill came between last.pt's and best.pt's writes.

    At the end of an epoch the trainer writes last.pt, then best.pt if the epoch improved,
    both from the same state, so afterwards both carry the same ``best`` value. If last.pt
    (written at an epoch's end) records a best that best.pt does not have, the kill came
    in between, and the best checkpoint is that very state: last.pt itself.
    """
    best_path = run_dir / "checkpoints" / "best.pt"
    if last.get("best") is None or int(last.get("batch_in_epoch", 1)) != 0:
        return False
    if best_path.is_file():
        try:
            current = torch.load(best_path, map_location="cpu", weights_only=True)
            if isinstance(current, dict) and _same_best(current.get("best"), last["best"]):
                return False
        except Exception:  # noqa: BLE001 - an unreadable best.pt is replaced too
            pass
    data = (run_dir / "checkpoints" / "last.pt").read_bytes()
    _guard(lambda: atomic_write_bytes(best_path, lambda f: f.write(data)), best_path)
    return True


def _check_metrics_history(run_dir: Path, done: int) -> None:
    """A resumed run at epoch ``done`` > 0 whose metrics.jsonl is gone lost its history: say so, do
    not recreate it. A file that lacks the records of some of those epochs (lines deleted or edited
    out) is resumed with one warning naming them: a record cannot be recomputed, so refusing would
    only stop the run for good."""
    path = run_dir / "metrics.jsonl"
    if done > 0 and not path.exists():
        raise CheckpointError(
            f"{path} is missing but {run_dir}/checkpoints/last.pt is at epoch {done}: the records of epochs "
            f"1-{done} were deleted; put the file back (or create an empty one to continue without them: "
            f"touch {path})"
        )
    missing = missing_epochs({record.get("epoch") for record in _complete_records(path)}, done)
    if missing:
        count = sum(b - a + 1 for a, b in missing)
        logger.warning(f"crnn: {path} has no record of epoch{'s' if count > 1 else ''} {epoch_ranges(missing)} "
                       f"of the {done} that checkpoints/last.pt has trained: the run continues; its history stays "
                       f"without them")


#: How many runs of consecutive epochs ``epoch_ranges`` names before it counts the rest.
EPOCH_RANGES_SHOWN = 10


def missing_epochs(recorded: set[Any], done: int) -> list[tuple[int, int]]:
    """The epochs 1..``done`` not in ``recorded``, as (first, last) runs; in the time of the records,
    not of ``done`` (a tampered checkpoint may claim any epoch)."""
    missing, expected = [], 1
    for epoch in sorted(e for e in recorded if isinstance(e, int) and 1 <= e <= done):
        if epoch > expected:
            missing.append((expected, epoch - 1))
        expected = epoch + 1
    if expected <= done:
        missing.append((expected, done))
    return missing


def epoch_ranges(runs: list[tuple[int, int]]) -> str:
    """(first, last) runs of epochs for a message: ``1-3, 7, 9-10`` (the first
    :data:`EPOCH_RANGES_SHOWN`, then ``... (N epochs in all)``)."""
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:EPOCH_RANGES_SHOWN]]
    more = [f"... ({sum(b - a + 1 for a, b in runs)} epochs in all)"] if len(runs) > EPOCH_RANGES_SHOWN else []
    return ", ".join(shown + more)


def restart_command(run_dir: Path) -> str | None:
    """The command that starts again a run stopped before its first checkpoint (None for any other run)."""
    if not never_checkpointed(run_dir):
        return None
    try:
        command = (run_dir / "command.txt").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        command = ""
    if not command:
        return f"crnn run ... --out {run_dir}"
    if not any(word == "--out" or word.startswith("--out=") for word in command.split()):
        command += f" --out {run_dir}"
    return command


def _restart_hint(path: Path) -> str:
    """For a missing last.pt of a run stopped before its first checkpoint: the one command that restarts it."""
    command = restart_command(path.parent.parent) if path.name == "last.pt" else None
    return f": the run was stopped before its first checkpoint; start it again with: {command}" if command else ""
