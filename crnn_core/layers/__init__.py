"""The layers: ContextualRNN and the model assembled from a task, a cell, an init strategy and a context network."""
