"""Experiments as files: ``crnn run --config FILE`` (TOML or JSON) and ``crnn run --print-config``.

A config file is a run's ``config.json`` document: a ``model`` table (one component name per
kind and its ``<scope>_options`` table) and a ``train`` table, in JSON, or the same tables in
TOML. A run's own ``config.json`` is therefore a config file that replays the run exactly.

No schema is written here: the ``model`` keys are ``ModelSpec``'s fields (``kinds.KINDS``), each
options table is the chosen component's ``Options`` dataclass and ``train`` is ``TrainConfig``,
so an option or a kind added anywhere is accepted, checked and printed without a change here.
Values must have the option's type (``train.epochs = "3"`` is refused, ``lr = 1`` is a float);
TOML has no null, so an option that is ``None`` is written ``"none"``, the word ``--set`` takes.

Every problem is a one-line ``ConfigError`` naming the file, the line and the key; the line of a
key is found by a small scan of the text (:func:`toml_key_lines`, :func:`json_key_lines`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, UnionType
from typing import Any, Literal, Union

from ..base.env import install_command
from ..base.errors import ConfigError, CrnnError, closest
from ..interfaces.kinds import KINDS, Kind
from ..interfaces.options import build_options, type_label
from ..plugin_manager.manager import PluginSystem
from ..rundirs.rundir import MAX_INT_DIGITS, parse_json

#: Config file formats, by file suffix.
FORMATS = {".toml": "toml", ".json": "json"}
#: Keys of a run's config.json that say where it came from; a replay reads and ignores them.
INFORMATIVE = ("crnn_version", "created")
#: How TOML (which has no null) spells ``None``: the word ``--set`` takes.
TOML_NONE = "none"

Key = tuple[str, ...]


@dataclass
class ConfigFile:
    """A parsed config file: its document and the line of each key (for messages)."""

    path: Path
    format: str  # "toml" or "json"
    data: dict[str, Any]
    lines: dict[Key, int] = field(default_factory=dict)

    def error(self, key: Key, message: str) -> ConfigError:
        """``FILE, line N: a.b.c: message`` (the line of the key, or of its nearest enclosing table)."""
        line = next((self.lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in self.lines), None)
        return ConfigError(f"{self.path}{f', line {line}' if line else ''}: {'.'.join(key) + ': ' if key else ''}{message}")


@dataclass
class FileLayer:
    """What a config file contributes to a run, below the flags and ``--set``."""

    names: dict[str, str | None] = field(default_factory=dict)  # scope -> component name
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # scope -> that component's options
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


# -- reading ------------------------------------------------------------------------------------
def _tomllib() -> ModuleType:
    """``tomllib`` (Python >= 3.11) or ``tomli``; a one-line error naming the extra otherwise."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading TOML config files needs Python >= 3.11 or tomli, an optional extra: "
                              f"{install_command('toml')}, or give the config as .json") from None
    return tomllib


def read_config_file(path: Path) -> ConfigFile:
    """Parse ``path`` (``.toml`` or ``.json``); syntax errors name the file, line and key."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--config {path}: unknown file type '{path.suffix}' (use {' or '.join(FORMATS)})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc})") from None
    if fmt == "toml":
        tomllib = _tomllib()
        try:
            data = tomllib.loads(text)
        except RecursionError:  # tomllib parses nested arrays and inline tables recursively
            raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
        except tomllib.TOMLDecodeError as exc:
            found = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
            line = int(found[1]) if found else None
            message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
            raise _syntax_error(path, "TOML", line, found[2] if found else None, message,
                                toml_key_lines(text)) from None
        except ValueError as exc:  # Python's limit on the digits of an integer (4300 by default)
            digits = re.search(r"has (\d+) digits", str(exc))
            raise ConfigError(f"{path}: invalid TOML: an integer of {digits[1] if digits else 'too many'} digits "
                              f"(Python reads at most {sys.get_int_max_str_digits()})") from None
        lines = toml_key_lines(text)
    else:
        try:
            data = parse_json(text)
        except json.JSONDecodeError as exc:
            raise _syntax_error(path, "JSON", exc.lineno, str(exc.colno), exc.msg,
                                json_key_lines(text[:exc.pos])) from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None
        except ValueError as exc:  # a key given twice, an integer of thousands of digits
            at = _value_error_position(text, str(exc))
            line = text.count("\n", 0, at) + 1 if at is not None else None
            raise _syntax_error(path, "JSON", line, None, str(exc),
                                json_key_lines(text[:at]) if at is not None else {}) from None
        lines = json_key_lines(text)
    config = ConfigFile(path, fmt, data, lines)
    if not isinstance(data, dict):
        raise config.error((), f"a config file is an object with the tables 'model' and 'train', got {type(data).__name__}")
    return config


def _value_error_position(text: str, message: str) -> int | None:
    """Where in ``text`` the value ``parse_json`` refused is: just after the second ``"key":`` of a
    duplicate key, or at the first over-long integer (None if not found)."""
    duplicate = re.match(r"duplicate key '(.*)'$", message)
    if duplicate:
        found = list(re.finditer(re.escape(json.dumps(duplicate[1])) + r"\s*:", text))
        return found[1].end() if len(found) > 1 else None
    found = re.search(r"-?\d{%d,}" % (MAX_INT_DIGITS + 1), text)
    return found.start() if found else None


def _syntax_error(path: Path, fmt: str, line: int | None, column: str | None, message: str,
                  lines: dict[Key, int]) -> ConfigError:
    """``FILE, line N (key): invalid TOML: message (column C)``; the key where one is on that line."""
    keys = [".".join(key) for key, at in lines.items() if at == line and key]
    where = (f", line {line}" if line else "") + (f" ({keys[-1]})" if keys else "")
    return ConfigError(f"{path}{where}: invalid {fmt}: {message}{f' (column {column})' if column else ''}")


def _split_key(text: str) -> Key:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def toml_key_lines(text: str) -> dict[Key, int]:
    """The line of each key of a TOML text (``[table]`` headers, dotted keys, one-line inline tables).

    A small scan, not a parser: it also works on invalid text (to name the key of a syntax error).
    """
    lines: dict[Key, int] = {}
    table: Key = ()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        header = re.match(r"\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if header:
            table = _split_key(header[1])
            lines.setdefault(table, number)
            continue
        assignment = re.match(r"([\w\-.\"' ]+?)\s*=(.*)", line)
        if assignment and not line.startswith("#"):
            key = table + _split_key(assignment[1])
            lines.setdefault(key, number)
            inline = assignment[2].strip()
            if inline.startswith("{"):
                for name in re.findall(r"[{,]\s*([\w\-\"']+)\s*=", inline):
                    lines.setdefault(key + _split_key(name), number)
    return lines


def json_key_lines(text: str) -> dict[Key, int]:
    """The line of each object key of a JSON text, by path (works on a truncated text too)."""
    lines: dict[Key, int] = {}
    path: list[str] = []
    pushed: list[bool] = []  # per open bracket: whether it put its key on ``path``
    last_key: str | None = None
    line, i, colon = 1, 0, re.compile(r"\s*:")
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
        elif char == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if colon.match(text, end + 1):
                try:
                    last_key = json.loads(text[i:end + 1])
                except ValueError:
                    last_key = text[i + 1:end]
                lines[(*path, str(last_key))] = line  # a key given twice: its last line (the refused one)
            line += text.count("\n", i, end)
            i = end
        elif char in "{[":
            push = last_key is not None  # the value of a key: what it holds is under that key
            if push:
                path.append(str(last_key))
            pushed.append(push)
            last_key = None
        elif char in "]},":
            if char != "," and pushed and pushed.pop():
                path.pop()
            last_key = None
        i += 1
    return lines


# -- checking -----------------------------------------------------------------------------------
def type_problem(value: Any, hint: Any) -> str | None:
    """Why a file's ``value`` is not of the option type ``hint`` (None if it is). Strict: no
    strings for numbers; an int is a float; ``None`` (or ``"none"``) only for optional options."""
    origin = typing.get_origin(hint)
    if origin in (Union, UnionType):
        if value is None or (isinstance(value, str) and value.lower() == TOML_NONE):
            return None
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        problems = [type_problem(value, a) for a in rest]
        return None if None in problems else f"expected {type_label(hint)}, got {_shown(value)}"
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in typing.get_args(hint)):
            return None
        return f"expected {type_label(hint)}, got {_shown(value)}"
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        return f"unsupported option type {hint!r}"
    return None if ok else f"expected {type_label(hint)}, got {_shown(value)}"


def _shown(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null",
            dict: "a table", list: "an array"}.get(type(value), type(value).__name__)
    return f"{json.dumps(value, default=str)[:60]} ({kind})" if value is not None else "null"


def _check_table(config: ConfigFile, key: Key, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise config.error(key, f"must be a table, got {_shown(value)}")
    return value


def _check_keys(config: ConfigFile, key: Key, table: dict[str, Any], valid: typing.Iterable[str], what: str) -> None:
    valid = list(valid)
    for name in table:
        if name not in valid:
            close = closest(name, valid)
            hint = f"did you mean '{close}'? " if close else ""
            raise config.error((*key, name), f"unknown key ({hint}valid {what}: {', '.join(valid) or 'none'})")


def checked_options(config: ConfigFile, key: Key, table: dict[str, Any], options_cls: type, scope: str,
                    what: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``table`` checked against ``options_cls``: known keys, strict types, then the class's own
    range checks (on ``base`` updated with the table); each error names its key and line."""
    _check_keys(config, key, table, (f.name for f in dataclasses.fields(options_cls)), what)
    hints = typing.get_type_hints(options_cls)
    for name, value in table.items():
        problem = type_problem(value, hints[name])
        if problem:
            raise config.error((*key, name), problem)
    try:
        build_options(options_cls, {**(base or {}), **table}, scope)
    except ConfigError as exc:  # a range check of the dataclass: "scope: name must be ..."
        message = str(exc).removeprefix(f"{scope}: ")
        first = re.match(rf"({re.escape(scope)}\.)?(\w+)", message)  # "lr must ..." or "train.epochs must ..."
        culprit = first[2] if first and first[2] in table else None
        if culprit and first[1]:
            message = message.removeprefix(f"{scope}.{culprit} ")
        raise config.error((*key, culprit) if culprit else key, message) from None
    return table


def file_layer(config: ConfigFile, plugins: PluginSystem, flag_names: dict[str, str | None],
               defaults: dict[str, str | None]) -> FileLayer:
    """What ``config`` sets, checked against the components it ends up configuring.

    A component whose name a flag changes (``--init zero`` over a file's ``init = "learned"``)
    takes none of the file's options for it (they were for the other component); a changed
    init that uses no context also drops the file's context network.
    """
    from ..layers.model import ModelSpec
    from ..rundirs.run import _fit_threads  # a recorded run's threads, lowered to this machine's CPUs as on --resume
    from ..training.train import TrainConfig

    data = config.data
    _check_keys(config, (), data, ("model", "train", *INFORMATIVE), "top-level keys")
    model = _check_table(config, ("model",), data.get("model", {}))
    train = _check_table(config, ("train",), data.get("train", {}))
    _check_keys(config, ("model",), model, (f.name for f in dataclasses.fields(ModelSpec)), "model keys")
    layer = FileLayer(names={kind.scope: name for kind in KINDS
                             if (name := _component_name(config, kind, model.get(kind.scope))) is not None})
    final = {k.scope: flag_names.get(k.scope) or layer.names.get(k.scope) or defaults.get(k.scope) for k in KINDS}

    def component(scope: str, name: str | None) -> Any:
        """The registered class; an unknown name that the file gave is reported at its line."""
        try:
            return plugins.registry(scope).get(str(name)).cls
        except CrnnError as exc:
            if flag_names.get(scope) or scope not in layer.names:
                raise
            raise config.error(("model", scope), str(exc)) from None

    for scope in layer.names:  # an unknown name in the file: its line
        component(scope, final[scope])
    init_cls, task_cls = component("init", final["init"]), component("task", final["task"])
    unnamed = {**defaults, "context": task_cls.default_context}  # what the file configures where it names nothing
    changed = {scope for scope, name in flag_names.items()
               if name is not None and name != (layer.names.get(scope) or unnamed.get(scope))}
    if not init_cls.uses_context:
        if "init" in changed:  # the file's context network was the other init's
            changed.add("context")
            layer.names.pop("context", None)
        elif layer.names.get("context") or model.get("context_options"):
            key = ("model", "context" if layer.names.get("context") else "context_options")
            raise config.error(key, f"init '{final['init']}' uses no context network")
    for kind in KINDS:
        key = ("model", f"{kind.scope}_options")
        table = _check_table(config, key, model.get(key[1], {}))
        if table and kind.scope not in changed:
            name = final[kind.scope] or unnamed[kind.scope]
            layer.options[kind.scope] = checked_options(config, key, table, component(kind.scope, name).Options,
                                                        kind.scope, f"options of {kind.noun} '{name}'")
    layer.train = checked_options(config, ("train",), _fit_threads(train, config.path), TrainConfig, "train",
                                  "train options", base=dict(task_cls.training_defaults))
    return layer


def _component_name(config: ConfigFile, kind: Kind, value: Any) -> str | None:
    if value is None or (not kind.required and isinstance(value, str) and value.lower() == TOML_NONE):
        return None
    if not isinstance(value, str) or not value.strip():
        raise config.error(("model", kind.scope), f"must be the name of a {kind.noun} (crnn list {kind.plural}), "
                                                  f"got {_shown(value)}")
    return value


# -- writing ------------------------------------------------------------------------------------
def resolved_document(model: Any, train: Any) -> dict[str, Any]:
    """The resolved configuration a run records and ``--print-config`` prints: ``model`` and ``train``."""
    return {"model": dataclasses.asdict(model), "train": dataclasses.asdict(train)}


def dumps(document: dict[str, Any], fmt: str) -> str:
    """``document`` as a config file in ``fmt`` (``toml`` or ``json``, the latter as config.json writes it)."""
    if fmt == "json":
        return json.dumps(document, indent=2, sort_keys=True) + "\n"
    blocks: list[str] = []

    def table(name: Key, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars or not any(isinstance(v, dict) for v in values.values()):
            lines = [f"[{'.'.join(map(_toml_key, name))}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items()]
            blocks.append("\n".join(lines))
        for k, v in values.items():
            if isinstance(v, dict) and v:
                table((*name, k), v)

    for name, values in document.items():
        table((name,), values)
    return "\n\n".join(blocks) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if value is None:
        return json.dumps(TOML_NONE)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    raise ConfigError(f"cannot write {value!r:.60} in a TOML config file")
