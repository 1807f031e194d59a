"""Loading a run (its directory or a ``crnn export`` safetensors file) and exporting its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..base.errors import CheckpointError, ConfigError
from ..layers.model import Built, build_model, check_state_dtypes, check_weights_fit, load_weights
from ..plugin_manager.manager import PluginSystem, get_plugins
from .run import RunConfig, _check_counters, component_provenance
from .rundir import atomic_write_bytes, load_checkpoint
from .weights import FORMAT, SUFFIX, _safetensors_torch, check_run_components, load_safetensors


def load_run(run_dir: Path | str, checkpoint: str = "best", device: str = "cpu",
             plugins: PluginSystem | None = None) -> tuple[Built, dict[str, Any]]:
    """Rebuild a finished (or stopped) run's task and model from ``config.json`` and
    ``checkpoints/<checkpoint>.pt``, in eval mode on ``device``; or, when ``run_dir`` is a file
    that ``crnn export`` wrote, from that safetensors file (nothing is unpickled; ``checkpoint``
    is the one the file was exported from).

    Returns the built task and model (``built.task``, ``built.model``, ``built.spec``) and the
    checkpoint (for its ``epoch`` and ``step``; for a safetensors file, those from its metadata).
    """
    from ..training.distributed import resolve_device

    run_dir = Path(run_dir)
    if run_dir.is_file():
        built, ckpt = load_safetensors(run_dir, plugins or get_plugins())
        _check_counters(ckpt, f"{run_dir} (crnn.checkpoint)")
    else:
        config = RunConfig.load(run_dir)
        plugins = plugins or get_plugins()
        check_run_components(run_dir, config.model, plugins)
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        ckpt = load_checkpoint(path)
        _check_counters(ckpt, str(path))
        check_weights_fit(config.model, plugins, ckpt.get("model"), str(path))  # before the model is allocated
        check_state_dtypes(ckpt.get("model"), str(path))
        built = build_model(config.model, plugins)
        load_weights(built.model, ckpt.get("model"), str(path))
    built.model.to(resolve_device(device)).eval()
    return built, ckpt


def export_safetensors(run_dir: Path | str, out: Path | str, checkpoint: str = "best",
                       plugins: PluginSystem | None = None) -> dict[str, Any]:
    """Write the weights of ``run_dir``'s ``checkpoint`` (best or last) to ``out`` as safetensors,
    with the resolved configuration and plugin versions as metadata (atomically).

    Returns the metadata, each JSON string decoded.
    """
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
