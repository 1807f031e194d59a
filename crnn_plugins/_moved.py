"""The module paths of crnn_plugins before its subpackages (old path -> new path), importable
for one more release with a DeprecationWarning (``crnn_core._moved``)."""

MOVED: dict[str, str] = {
    "crnn_plugins.lstm": "crnn_plugins.cells.lstm",
    "crnn_plugins.fastweights": "crnn_plugins.cells.fastweights",
    "crnn_plugins.zero_init": "crnn_plugins.inits.zero_init",
    "crnn_plugins.free_init": "crnn_plugins.inits.free_init",
    "crnn_plugins.learned_init": "crnn_plugins.inits.learned_init",
    "crnn_plugins.identity_context": "crnn_plugins.contexts.identity_context",
    "crnn_plugins.linear_context": "crnn_plugins.contexts.linear_context",
    "crnn_plugins.mlp_context": "crnn_plugins.contexts.mlp_context",
    "crnn_plugins.art": "crnn_plugins.tasks.art",
    "crnn_plugins.lcd": "crnn_plugins.tasks.lcd",
    "crnn_plugins.fastweights_layer": "crnn_plugins.fast_weights.layer",
    "crnn_plugins.fastweights_reference": "crnn_plugins.fast_weights.reference",
    "crnn_plugins.fastweights_fused": "crnn_plugins.fast_weights.fused",
    "crnn_plugins.cpu_isa": "crnn_plugins.fast_weights.cpu_isa",
    "crnn_plugins.fastweights_bench": "crnn_plugins.commands.fastweights_bench",
    "crnn_plugins.paper": "crnn_plugins.experiments.paper",
    "crnn_plugins.study": "crnn_plugins.experiments.study",
}
