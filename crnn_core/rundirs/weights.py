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
from pathlib import Path
from types import ModuleType
from typing import Any

from ..base.env import logger
from ..base.errors import CheckpointError, ConfigError
from ..interfaces.kinds import kind_of
from ..layers.model import Built, build_model, load_weights
from ..plugin_manager.manager import PluginSystem
from .run import RunConfig

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
        raise ConfigError("safetensors files need safetensors, an optional extra: "
                          "pip install 'crnn[safetensors]'") from None
    return safetensors.torch


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors of a file ``crnn export`` wrote and its crnn metadata (decoded), without
    unpickling anything; one-line errors for another kind of file."""
    _safetensors_torch()
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path} is not a safetensors file ({reason}); crnn loads a run directory "
                              f"or a file written by crnn export") from None
    if metadata.get("crnn.format") != FORMAT:
        found = f"format {metadata['crnn.format']!r:.40}" if "crnn.format" in metadata else "no crnn metadata"
        raise CheckpointError(f"{path} is a safetensors file with {found} (crnn loads files written by "
                              f"crnn export, format {FORMAT})")
    documents: dict[str, Any] = {"crnn.format": FORMAT}
    for key in METADATA_KEYS:
        try:
            documents[key] = json.loads(metadata[key])
        except (KeyError, ValueError, RecursionError):
            raise CheckpointError(f"{path}: its crnn metadata lacks a valid '{key}' (not written by crnn export?)") from None
    return tensors, documents


def load_safetensors(path: Path, plugins: PluginSystem) -> tuple[Built, dict[str, Any]]:
    """The model a ``crnn export`` file holds, built from its configuration and loaded with its
    weights, and what a run's checkpoint would tell (``epoch``, ``step``, ``checkpoint``, ``metadata``)."""
    tensors, documents = read_safetensors(path)
    config = RunConfig.from_json(documents["crnn.config"], f"{path} (crnn.config)")
    check_components(path, config.model, documents["crnn.plugins"], plugins)
    built = build_model(config.model, plugins)
    load_weights(built.model, tensors, str(path))
    info = documents["crnn.checkpoint"] if isinstance(documents["crnn.checkpoint"], dict) else {}
    return built, {"epoch": info.get("epoch"), "step": info.get("step"),
                   "checkpoint": info.get("checkpoint"), "metadata": documents}


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
        package, version = recorded.get("package", "?"), recorded.get("version", "?")
        if name not in plugins.registry(kind.plural):
            raise ConfigError(f"{path} needs the {kind.noun} '{name}' from the package {package} {version}, "
                              f"which is not installed (crnn list {kind.plural})")
        now = plugins.provider_of(plugins.registry(kind.plural).get(name).cls)
        if now.get("package") == package and now.get("version") != version:
            logger.warning(f"crnn: {path} was exported with {package} {version}; {now.get('version')} is installed")
