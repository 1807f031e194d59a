"""Sharing weights as safetensors: the file format, reading a file and building its model (no pickle).

Training checkpoints (``checkpoints/*.pt``) keep torch's format: they also hold the optimizer
and RNG state that ``--resume`` needs. An export holds only the model's tensors (its
``state_dict``) and, as safetensors metadata (``str -> str``), JSON strings under these keys:

* ``crnn.format``: :data:`FORMAT`;
* ``crnn.config``: the run's ``config.json`` (every option resolved; validated on load exactly
  as a run directory's is);
* ``crnn.plugins``: per component kind, its name, class, and the package and version that
  provide it (a run's ``plugins.json``);
* ``crnn.checkpoint``: the checkpoint exported (``best``/``last``), its ``epoch`` and ``step``.

Loading reads the file with ``safetensors.safe_open`` (a JSON header and raw tensor bytes:
nothing is unpickled), rebuilds the model from ``crnn.config`` through the installed plugins
and loads the tensors strictly. ``safetensors`` is an optional extra, imported on first use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from ..base.env import install_command, logger
from ..base.errors import CheckpointError, ConfigError, first_line
from ..interfaces.kinds import kind_of
from ..layers.model import Built, build_model, check_state_dtypes, check_weights_fit, load_weights
from ..plugin_manager.manager import PluginSystem
from .run import RunConfig
from .rundir import no_duplicate_keys, read_json

#: The value of ``crnn.format`` in the files this version writes and reads.
FORMAT = "crnn-safetensors/1"
#: The file name suffix of an export.
SUFFIX = ".safetensors"
#: The metadata keys, each holding a JSON document.
METADATA_KEYS = ("crnn.config", "crnn.plugins", "crnn.checkpoint")


def _safetensors_torch() -> ModuleType:
    """``safetensors.torch``, or a one-line error naming the extra."""
    try:
        import safetensors.torch
    except ImportError:
        raise ConfigError(f"safetensors files need safetensors, an optional extra: "
                          f"{install_command('safetensors')}") from None
    return safetensors.torch


#: The most bytes of JSON header crnn reads from a safetensors file (the format's own reader allows 100 MB).
MAX_HEADER = 100_000_000
#: The torch dtype of each safetensors dtype name (``model.check_state_dtypes`` judges them).
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """A safetensors file's metadata and each tensor's dtype and shape, read from the JSON header
    at the file's start: no tensor is read or allocated. One-line errors for another kind of file."""
    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a safetensors file ({reason}); crnn loads a run directory "
                               f"or a file written by crnn export")

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < length <= min(MAX_HEADER, size - 8):
                raise refuse("no valid header length")
            header = json.loads(f.read(length), object_pairs_hook=no_duplicate_keys)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (ValueError, RecursionError) as exc:
        raise refuse(f"its header is not JSON: {str(exc)[:120]}") from None
    if not isinstance(header, dict):
        raise refuse("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise refuse("its __metadata__ is not an object of strings")
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if not (isinstance(dtype, str) and isinstance(shape, list)
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**62 for n in shape)):
            raise refuse(f"tensor {name[:60]!r} has no valid dtype and shape")
        shapes[name] = (dtype, tuple(shape))
    return metadata, shapes


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors of a file ``crnn export`` wrote and its crnn metadata (decoded), without
    unpickling anything; one-line errors for another kind of file."""
    documents, _ = read_safetensors_documents(path)
    return _read_tensors(path), documents


def read_safetensors_documents(path: Path) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]]]:
    """The crnn metadata of a ``crnn export`` file (each JSON document decoded) and its tensors'
    dtypes and shapes, from the header alone."""
    _safetensors_torch()
    metadata, shapes = safetensors_header(path)
    if metadata.get("crnn.format") != FORMAT:
        found = f"format {metadata['crnn.format']!r:.40}" if "crnn.format" in metadata else "no crnn metadata"
        raise CheckpointError(f"{path} is a safetensors file with {found} (crnn loads files written by "
                              f"crnn export, format {FORMAT})")
    documents: dict[str, Any] = {"crnn.format": FORMAT}
    for key in METADATA_KEYS:
        try:
            documents[key] = json.loads(metadata[key], object_pairs_hook=no_duplicate_keys)
        except (KeyError, ValueError, RecursionError):
            raise CheckpointError(f"{path}: its crnn metadata lacks a valid '{key}' (not written by crnn export?)") from None
    return documents, shapes


def _read_tensors(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file (``safe_open``: raw bytes, nothing unpickled)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad files
        reason = first_line(exc, 200)
        raise CheckpointError(f"{path} is not a safetensors file ({reason}); crnn loads a run directory "
                              f"or a file written by crnn export") from None


def load_safetensors(path: Path, plugins: PluginSystem) -> tuple[Built, dict[str, Any]]:
    """The model a ``crnn export`` file holds, built from its configuration and loaded with its
    weights, and what a run's checkpoint would tell (``epoch``, ``step``, ``checkpoint``, ``metadata``).

    The configuration is checked against the tensors' shapes in the file's header before
    the model or any tensor is allocated."""
    documents, header = read_safetensors_documents(path)
    config = RunConfig.from_json(documents["crnn.config"], f"{path} (crnn.config)")
    check_components(path, config.model, documents["crnn.plugins"], plugins)
    check_weights_fit(config.model, plugins, {name: shape for name, (_, shape) in header.items()}, str(path))
    import torch

    unknown = next((f"{name} is stored as {dtype!r:.20}" for name, (dtype, _) in header.items() if dtype not in DTYPES), None)
    if unknown:
        raise CheckpointError(f"{path}: tensor {unknown}, not a dtype crnn loads; crnn's weights are float32")
    check_state_dtypes({name: getattr(torch, DTYPES[dtype]) for name, (dtype, _) in header.items()}, str(path))
    built = build_model(config.model, plugins)
    load_weights(built.model, _read_tensors(path), str(path))
    info = documents["crnn.checkpoint"] if isinstance(documents["crnn.checkpoint"], dict) else {}
    return built, {"epoch": info.get("epoch"), "step": info.get("step"),
                   "checkpoint": info.get("checkpoint"), "metadata": documents}


def check_run_components(run_dir: Path, spec: Any, plugins: PluginSystem) -> None:
    """:func:`check_components` for a run directory, against its ``plugins.json`` (if it has one):
    before a run is loaded or resumed, so a component another package provides now is named."""
    path = run_dir / "plugins.json"
    if path.is_file():
        check_components(path, spec, read_json(path), plugins)


def check_components(path: Path, spec: Any, provenance: Any, plugins: PluginSystem) -> None:
    """Every component the file's model names is installed; else one line naming the package
    (and version) that provided it. A different version installed is only a warning."""
    provenance = provenance if isinstance(provenance, dict) else {}
    for scope, recorded in provenance.items():
        if not isinstance(recorded, dict):
            continue
        try:
            kind = kind_of(scope)
        except KeyError:
            raise CheckpointError(f"{path}: its crnn.plugins names an unknown component kind '{scope:.40}'") from None
        name = getattr(spec, kind.scope, None) or recorded.get("name")
        if recorded.get("name") not in (None, name):
            continue  # the record is of another component than the model names: the model's own check speaks
        package, version = recorded.get("package", "?"), recorded.get("version", "?")
        if name not in plugins.registry(kind.plural):
            raise ConfigError(f"{path} needs the {kind.noun} '{name}' from the package {package} {version}, "
                              f"which is not installed (crnn list {kind.plural})")
        now = plugins.provider_of(plugins.registry(kind.plural).get(name).cls)
        if now.get("package") == package and now.get("version") != version:
            logger.warning(f"crnn: {path} was exported with {package} {version}; {now.get('version')} is installed")
        elif now.get("package") != package:
            logger.warning(f"crnn: {path} was written with the {kind.noun} '{name}' from the package {package} "
                           f"{version}; here '{name}' comes from {now.get('package')} {now.get('version')}, "
                           f"which may compute something else")

