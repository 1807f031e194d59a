"""Sharing weights as safetensors: ``crnn export`` and loading a model from the file, no pickle.

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

import click

from ..base.env import logger
from ..base.errors import CheckpointError, ConfigError
from ..interfaces.kinds import kind_of
from ..layers.model import Built, build_model
from ..plugin_manager.manager import PluginSystem, get_plugins
from .rundir import atomic_write_bytes, standard_json

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


def export_safetensors(run_dir: Path | str, out: Path | str, checkpoint: str = "best",
                       plugins: PluginSystem | None = None) -> dict[str, Any]:
    """Write the weights of ``run_dir``'s ``checkpoint`` (best or last) to ``out`` as safetensors,
    with the resolved configuration and plugin versions as metadata (atomically).

    Returns the metadata, each JSON string decoded.
    """
    from .run import RunConfig, component_provenance, load_run

    st = _safetensors_torch()
    plugins = plugins or get_plugins()
    run_dir, out = Path(run_dir), Path(out)
    if run_dir.is_file():
        raise ConfigError(f"{run_dir} is a file: crnn export takes a run directory")
    if out.suffix != SUFFIX:  # never overwrite a config.json or a checkpoint by a slip of the arguments
        raise ConfigError(f"{out}: the output file's name must end in {SUFFIX}")
    built, ckpt = load_run(run_dir, checkpoint, "cpu", plugins)
    documents = {
        "crnn.config": RunConfig.load(run_dir).to_json(),
        "crnn.plugins": component_provenance(built, plugins),
        "crnn.checkpoint": {"checkpoint": checkpoint, "epoch": ckpt.get("epoch"), "step": ckpt.get("step")},
    }
    metadata = {"crnn.format": FORMAT, **{key: json.dumps(value, sort_keys=True) for key, value in documents.items()}}
    # clones: safetensors refuses tensors that share memory, and a state_dict may hold views
    tensors = {name: value.detach().clone().contiguous() for name, value in built.model.state_dict().items()}
    data = st.save(tensors, metadata=metadata)
    try:
        atomic_write_bytes(out, lambda f: f.write(data))
    except OSError as exc:
        raise CheckpointError(f"cannot write {out}: {exc.strerror or exc}") from None
    return {"crnn.format": FORMAT, **documents}


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
    from ..layers.model import load_weights
    from .run import RunConfig

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


EXPORT_EXAMPLES = """
\b
Examples:
  crnn export runs/lcd-learned lcd-learned.safetensors
  crnn export runs/art-learned art.safetensors --checkpoint last
  crnn sample lcd-learned.safetensors --period 2.0 --x0 3.0 -n 5
"""


@click.command(epilog=EXPORT_EXAMPLES)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="which checkpoint's weights")
def export_command(run_dir: Path, out: Path, checkpoint: str) -> None:
    """Write a run's model weights to OUT as safetensors, with its configuration and plugin
    versions as metadata; `crnn sample OUT` and `load_run(OUT)` load it without unpickling.

    Prints a JSON summary on stdout.
    """
    documents = export_safetensors(run_dir, out, checkpoint)
    click.echo(json.dumps(standard_json({"out": str(out), "run_dir": str(run_dir), **documents["crnn.checkpoint"],
                                         "bytes": out.stat().st_size, "plugins": documents["crnn.plugins"]})))
