"""Training: the loop and its step, distributed data parallelism, the TensorBoard logger."""
