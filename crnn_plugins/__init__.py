"""crnn's built-in plugins (one per module, registered as entry points of the ``crnn`` distribution)
and the layers they are made of: ``FastWeights`` and the functional ``fastweights_unroll``.

``crnn_core`` re-exports the layers too (through the ``crnn.layers`` entry points), so
``from crnn_core import FastWeights`` and ``from crnn_plugins import FastWeights`` are the same class.
"""

from crnn_core._moved import install

from ._moved import MOVED
from .fast_weights.layer import FastWeights, fastweights_unroll

install(MOVED)  # the module paths of the previous release, with a DeprecationWarning

__all__ = ["FastWeights", "fastweights_unroll"]
